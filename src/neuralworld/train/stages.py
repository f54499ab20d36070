"""A world's training stages, and ``train``: the stages in turn, then the bundle.

A stage is a function ``(world, cfg, data, d, run, *, networks it builds on) -> network``:
it builds its network (or starts it from ``--init-world``), says how a micro-batch's
loss is computed and how the EMA network is validated on held-out data, and hands
both to ``loop.run_stage``, which trains, checkpoints and resumes it. Run for 0 steps
a stage only loads its network from the run's checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import numpy as np
import torch

from neuralworld.bundle import World, build_networks
from neuralworld.model.autoencoder import Autoencoder, autoencoder_loss, frames_to_tensor, tensor_to_frames
from neuralworld.model.config import WorldConfig, preset
from neuralworld.model.dynamics import Dynamics
from neuralworld.model.memory import last_frame_denoiser
from neuralworld.model.objective import LatentClip, distill_loss, dynamics_loss, rollout_loss
from neuralworld.model.sampler import SAMPLERS, SamplerPreset, sample_euler
from neuralworld.session import WorldSession
from neuralworld.train.baseline import train_baseline
from neuralworld.train.config import MODELS, STAGES, TrainConfig, TrainingError
from neuralworld.train.data import HELD_OUT_SEED, FrameSource, LatentClips, TrainData, encoded
from neuralworld.train.loop import Dist, RunFolder, mean_psnr, run_stage, start_from, world_to_start_from
from neuralworld.train.run import TrainingRun, training_run
from neuralworld.train.warp import train_warp

def _decoded(ae: Autoencoder, latents: torch.Tensor) -> np.ndarray:
    """Normalised latents (B, C, h, w) -> uint8 frames (B, H, W, 3)."""
    return tensor_to_frames(ae.decode(ae.denormalize_latents(latents)))


def _init_world_networks(cfg: TrainConfig, world: WorldConfig) -> World:
    """The world named by ``init_world``, checked to hold this preset's dynamics for these controls."""
    other = world_to_start_from(cfg.init_world, "--init-world")
    if other.model != "world" or other.config.to_dict() != world.to_dict():
        raise TrainingError(f"--init-world: {other.path} is not a {cfg.preset!r} world of this dataset's controls "
                            "and resolution (another --preset or dataset?)")
    return other


# ---------------------------------------------------------------------------
# the stages
# ---------------------------------------------------------------------------
def train_autoencoder(world: WorldConfig, cfg: TrainConfig, data: TrainData, d: Dist, run: RunFolder) -> Autoencoder:
    torch.manual_seed(cfg.seed)
    ae, _ = build_networks(world)
    source = cfg.init_autoencoder or cfg.init_world
    if source:
        flag = "--init-autoencoder" if cfg.init_autoencoder else "--init-world"

        def given() -> Autoencoder:
            other = world_to_start_from(source, flag)
            if not isinstance(other.autoencoder, Autoencoder) or other.config.autoencoder != ae.config:
                raise TrainingError(f"{flag}: {other.path}'s autoencoder is not this preset's (another --preset?)")
            return other.autoencoder

        start_from(run.path, "autoencoder", ae, given, source, cfg.autoencoder, d)
    frames = FrameSource(data.ds, data.train_episodes)
    held = FrameSource(data.ds, data.check_episodes).batch(np.random.default_rng(12345), 64)
    held_t = frames_to_tensor(held).to(d.device)

    def loss_fn(net: torch.nn.Module, rng: np.random.Generator, n: int) -> tuple[torch.Tensor, dict[str, float]]:
        return autoencoder_loss(net, frames_to_tensor(frames.batch(rng, n)).to(d.device))

    def validate(m: torch.nn.Module, step: int) -> None:
        with torch.no_grad():
            rec = tensor_to_frames(m(held_t))
        run.logger.scalars("autoencoder", step, {"psnr": mean_psnr(rec, held)}, kind="held_out")
        run.logger.images("autoencoder/real_vs_reconstruction", step, [held[:8], rec[:8]])

    ae = run_stage(stage="autoencoder", module=ae, cfg=cfg, stage_cfg=cfg.autoencoder, d=d, run=run,
                   loss_fn=loss_fn, validate=validate)
    # latent normalisation from a fixed sample of training frames (deterministic: the same on every rank)
    with torch.no_grad():
        sample = frames_to_tensor(frames.batch(np.random.default_rng(777), 512)).to(d.device)
        ae.calibrate_latents(torch.cat([ae.encode(sample[i : i + 64]) for i in range(0, len(sample), 64)]))
    return ae


def train_dynamics(world: WorldConfig, cfg: TrainConfig, data: TrainData, d: Dist, run: RunFolder, *,
                   ae: Autoencoder) -> Dynamics:
    """Validation: on held-out clips, the flow loss and the teacher-forced next frame (clean
    context, the last frame generated in 8 Euler steps) beside copy-last, and what the
    clip's own actions gain over another clip's from the same memory and noise."""
    torch.manual_seed(cfg.seed + 1)
    _, dyn = build_networks(world)
    if cfg.init_world:
        start_from(run.path, "dynamics", dyn, lambda: _init_world_networks(cfg, world).dynamics, cfg.init_world,
                   cfg.dynamics, d)
    T = cfg.clip_frames
    clips = LatentClips(data, data.train_episodes, T)
    held = LatentClips(data, data.check_episodes, T).batch(np.random.default_rng(HELD_OUT_SEED), 8)

    def loss_fn(net: torch.nn.Module, rng: np.random.Generator, n: int) -> tuple[torch.Tensor, dict[str, float]]:
        return dynamics_loss(net, clips.batch(rng, n).to(d.device))

    def validate(m: torch.nn.Module, step: int) -> None:
        clip = held.to(d.device)
        memory, B = clip.latents[:, :-1], clip.latents.shape[0]
        levels = torch.zeros(B, T - 1, device=d.device)  # clean context
        with torch.no_grad():
            torch.manual_seed(99)
            _, metrics = dynamics_loss(m, clip)
            noise = torch.randn_like(clip.latents[:, -1])
            gen = sample_euler(last_frame_denoiser(m, memory, levels, clip.actions), noise, 8)
            # the same noise and memory under another clip's actions: does the model read its controls?
            gen_wrong = sample_euler(last_frame_denoiser(m, memory, levels, clip.actions.roll(1, dims=0)), noise, 8)
            fake, wrong, real, prev = (_decoded(ae, z) for z in (gen, gen_wrong, clip.latents[:, -1], clip.latents[:, -2]))
        psnr = mean_psnr(fake, real)
        run.logger.scalars("dynamics", step, {"loss": metrics["loss"], "flow": metrics["flow"], "next_frame_psnr": psnr,
                                              "copy_last_psnr": mean_psnr(prev, real),
                                              "action_gain_db": psnr - mean_psnr(wrong, real)}, kind="held_out")
        run.logger.images("dynamics/real_vs_generated", step, [real, fake])

    return run_stage(stage="dynamics", module=dyn, cfg=cfg, stage_cfg=cfg.dynamics, d=d, run=run,
                     loss_fn=loss_fn, validate=validate)


def train_distill(world: WorldConfig, cfg: TrainConfig, data: TrainData, d: Dist, run: RunFolder, *,
                  ae: Autoencoder, teacher: Dynamics) -> Dynamics | None:
    """The ``fast`` sampler's network: a copy of the trained dynamics (EMA weights) taught by
    ``objective.distill_loss`` to reach the teacher preset's frame in ``distill_student_steps``
    Euler steps, or from ``init_world``'s student. Validation: on held-out clips, the student's
    frame vs the teacher's (PSNR of decoded frames) and both vs the real frame, beside the
    undistilled network at the same steps. None when there are 0 steps and no student to keep."""
    teacher_sampler = SAMPLERS[cfg.distill_teacher]
    if teacher_sampler.network != "dynamics":
        raise TrainingError(f"the distillation teacher must sample the dynamics itself, not {cfg.distill_teacher!r}")
    if cfg.distill_student_steps < 1:
        raise TrainingError(f"distill_student_steps must be >= 1, got {cfg.distill_student_steps}")
    teacher = teacher.to(d.device).eval().requires_grad_(False)
    student = Dynamics.from_world(world)
    student.load_state_dict(teacher.state_dict())
    if cfg.init_world:
        def given() -> Dynamics | None:  # a student distilled for these steps, if the world has one
            other = _init_world_networks(cfg, world)
            return other.distilled if other.distilled_steps == cfg.distill_student_steps else None

        start_from(run.path, "distill", student, given, cfg.init_world, cfg.distill, d)
    if cfg.distill.steps == 0 and not (run.path / "distill.safetensors").exists():
        return None  # nothing trained and nothing given: no student
    student.requires_grad_(True)
    T = cfg.clip_frames
    clips = LatentClips(data, data.train_episodes, T)
    held = LatentClips(data, data.check_episodes, T).batch(np.random.default_rng(HELD_OUT_SEED), 8)
    steps = cfg.distill_student_steps

    def loss_fn(net: torch.nn.Module, rng: np.random.Generator, n: int) -> tuple[torch.Tensor, dict[str, float]]:
        return distill_loss(net, teacher, clips.batch(rng, n).to(d.device), teacher_sampler=teacher_sampler, student_steps=steps)

    def validate(m: torch.nn.Module, step: int) -> None:
        clip = held.to(d.device)
        memory, actions, B = clip.latents[:, :-1], clip.actions, clip.latents.shape[0]
        levels = torch.zeros(B, T - 1, device=d.device)  # clean context
        with torch.no_grad():
            torch.manual_seed(99)
            x1 = torch.randn_like(clip.latents[:, -1])
            real = _decoded(ae, clip.latents[:, -1])
            by_teacher = _decoded(ae, teacher_sampler(last_frame_denoiser(teacher, memory, levels, actions), x1))
            by_student = _decoded(ae, sample_euler(last_frame_denoiser(m, memory, levels, actions), x1, steps))
            undistilled = _decoded(ae, sample_euler(last_frame_denoiser(teacher, memory, levels, actions), x1, steps))
        run.logger.scalars("distill", step, {
            "student_vs_teacher_psnr": mean_psnr(by_student, by_teacher),
            "undistilled_vs_teacher_psnr": mean_psnr(undistilled, by_teacher),
            "student_psnr": mean_psnr(by_student, real), "teacher_psnr": mean_psnr(by_teacher, real),
            "undistilled_psnr": mean_psnr(undistilled, real),
        }, kind="held_out")
        run.logger.images("distill/real_teacher_student_undistilled", step, [real, by_teacher, by_student, undistilled])

    return run_stage(stage="distill", module=student, cfg=cfg, stage_cfg=cfg.distill, d=d, run=run,
                     loss_fn=loss_fn, validate=validate)


def play_open_loop(world: WorldConfig, ae: Autoencoder, net: Dynamics, clip: LatentClip, context: int, steps: int,
                   context_level: float, seed: int = 99) -> np.ndarray:
    """``net`` playing clips as the player does, through ``WorldSession`` (the one rollout loop):
    the first ``context`` frames (decoded) as memory, then every later frame generated in
    ``steps`` Euler calls under the recorded actions and remembered at ``context_level``.
    Returns the generated frames (B, T - context, H, W, 3) uint8."""
    B, T = clip.latents.shape[:2]
    with torch.no_grad():
        frames = _decoded(ae, clip.latents[:, :context].flatten(0, 1)).reshape(B, context, *world.resolution, 3)
    spec = world.spec
    assert spec is not None, "a training world is bound to its dataset's controls"
    actions = spec.denormalize(clip.actions.float().cpu().numpy())  # (B, T, A) in the controls' units
    session = WorldSession(World(config=world, autoencoder=ae, dynamics=net), frames, actions=actions[:, :context],
                           sampler=SamplerPreset("euler", steps, context_level=context_level), seed=seed)
    return session.rollout(actions[:, context:])  # (B, T - context, H, W, 3)


def train_rollout(world: WorldConfig, cfg: TrainConfig, data: TrainData, d: Dist, run: RunFolder, *,
                  ae: Autoencoder, teacher: Dynamics, student: Dynamics) -> Dynamics:
    """The distilled student fine-tuned on its own rollouts (``objective.rollout_loss``): the
    memory it learns from is what it makes when playing. Validation: held-out clips played
    open loop from ``clip_frames - 1`` recorded frames for ``rollout_frames`` frames; PSNR of
    the decoded frames to the recorded ones at the first and last step, beside the student
    this stage started from."""
    teacher_sampler = SAMPLERS[cfg.distill_teacher]
    teacher = teacher.to(d.device).eval().requires_grad_(False)
    start = Dynamics.from_world(world)
    start.load_state_dict(student.state_dict())
    start = start.to(d.device).eval().requires_grad_(False)
    student.requires_grad_(True)
    T = cfg.clip_frames + cfg.rollout_frames
    clips = LatentClips(data, data.train_episodes, T)
    held = LatentClips(data, data.check_episodes, T).batch(np.random.default_rng(HELD_OUT_SEED), 8)
    steps = cfg.distill_student_steps
    level = SAMPLERS["fast"].context_level
    use_teacher = cfg.rollout_teacher_weight > 0

    def loss_fn(net: torch.nn.Module, rng: np.random.Generator, n: int) -> tuple[torch.Tensor, dict[str, float]]:
        return rollout_loss(net, clips.batch(rng, n).to(d.device), rollout=cfg.rollout_frames,
                            student_steps=steps, context_level=level,
                            teacher=teacher if use_teacher else None, teacher_sampler=teacher_sampler,
                            real_weight=cfg.rollout_real_weight, teacher_weight=cfg.rollout_teacher_weight)

    clip = held.to(d.device)
    context = cfg.clip_frames - 1
    real = [_decoded(ae, clip.latents[:, k]) for k in (context, T - 1)]
    start_frames = play_open_loop(world, ae, start, clip, context, steps, level)
    baseline = [start_frames[:, k] for k in (0, -1)]

    def validate(m: torch.nn.Module, step: int) -> None:
        gen = play_open_loop(world, ae, m, clip, context, steps, level)
        mine = [gen[:, k] for k in (0, -1)]
        run.logger.scalars("rollout", step, {
            "open_loop_psnr_first": mean_psnr(mine[0], real[0]), "open_loop_psnr_last": mean_psnr(mine[1], real[1]),
            "start_psnr_first": mean_psnr(baseline[0], real[0]), "start_psnr_last": mean_psnr(baseline[1], real[1]),
        }, kind="held_out")
        run.logger.images("rollout/real_start_now_last", step, [real[1], baseline[1], mine[1]])

    return run_stage(stage="rollout", module=student, cfg=cfg, stage_cfg=cfg.rollout, d=d, run=run,
                     loss_fn=loss_fn, validate=validate)


# ---------------------------------------------------------------------------
# the entry point
# ---------------------------------------------------------------------------
def train(data: str | os.PathLike, out: str | os.PathLike, cfg: TrainConfig, *, resume: bool = False,
          progress: bool = True) -> dict[str, Any]:
    """Train a world on a dataset; returns a summary. The bundle lands in ``out/world``."""
    if cfg.model != "world":
        if cfg.model not in MODELS:
            raise TrainingError(f"unknown model {cfg.model!r}; choose from {list(MODELS)}")
        if cfg.model == "warp":
            return train_warp(data, out, cfg, resume=resume, progress=progress)
        if cfg.model == "field":
            from neuralworld.train.field import train_field

            return train_field(data, out, cfg, resume=resume, progress=progress)
        if cfg.model == "rnn":
            from neuralworld.train.rnn import train_rnn

            return train_rnn(data, out, cfg, resume=resume, progress=progress)
        return train_baseline(data, out, cfg, resume=resume, progress=progress)
    _check_stages(cfg)
    # 0 distill steps keep a student only where there is one: --init-world's
    distill = "distill" in cfg.stages and (cfg.distill.steps > 0 or bool(cfg.init_world))
    rollout = "rollout" in cfg.stages and cfg.rollout.steps > 0
    with training_run(data, out, cfg, resume=resume, progress=progress, network_config=preset) as r:
        ae = _trained(train_autoencoder, "autoencoder", cfg, r, given=bool(cfg.init_autoencoder or cfg.init_world),
                      how="train the autoencoder stage first (or give --init-autoencoder or --init-world)").eval()
        if "dynamics" in cfg.stages or distill or rollout:
            r.data.latents, seconds = encoded(ae, r.data.ds, r.path, r.d)
            if seconds is not None:
                r.summary["encode_seconds"] = seconds
            dyn = _trained(train_dynamics, "dynamics", cfg, r, given=bool(cfg.init_world), ae=ae,
                           how="train the dynamics stage before distilling it (or give --init-world)")
            student = train_distill(r.world, cfg, r.data, r.d, r.folder, ae=ae, teacher=dyn) if distill else None
            if rollout:
                if student is None:  # the distilled student from its checkpoint (or --init-world's)
                    student = _loaded(train_distill, "distill", cfg, r, ae=ae, teacher=dyn)
                if student is None:
                    raise TrainingError(f"no distilled student in {r.path}: train the distill stage before the rollout stage")
                student = train_rollout(r.world, cfg, r.data, r.d, r.folder, ae=ae, teacher=dyn, student=student)
            r.save_world(ae, dyn, distilled=student, distilled_steps=cfg.distill_student_steps if student is not None else 0,
                         training={"data": str(data), "preset": cfg.preset, "held_out": cfg.held_out,
                                   "steps": {s: getattr(cfg, s).steps for s in STAGES},
                                   "init_autoencoder": cfg.init_autoencoder, "init_world": cfg.init_world})
    return r.summary


def _check_stages(cfg: TrainConfig) -> None:
    if cfg.init_world and cfg.init_autoencoder:
        raise TrainingError("give --init-world (every network) or --init-autoencoder (the autoencoder alone), not both")
    unknown = set(cfg.stages) - set(STAGES)
    if unknown or not cfg.stages:
        raise TrainingError(f"stages must be among {STAGES}, got {list(cfg.stages)}")
    if "rollout" in cfg.stages and cfg.rollout.steps > 0 and cfg.rollout_frames < 1:
        raise TrainingError(f"rollout_frames must be >= 1, got {cfg.rollout_frames}")


def _trained(stage_fn: Callable[..., Any], stage: str, cfg: TrainConfig, r: TrainingRun, *, given: bool = True, how: str = "",
             **networks: Any) -> Any:
    """``stage_fn``'s network: trained for its steps when the run trains ``stage``; else as
    the run's checkpoint holds it, or what ``--init-*`` gives (``given``); with neither, a
    TrainingError says ``how`` to get one."""
    if stage in cfg.stages:
        return stage_fn(r.world, cfg, r.data, r.d, r.folder, **networks)
    if not given and not (r.path / f"{stage}.safetensors").exists():
        raise TrainingError(f"no trained {stage} in {r.path}: {how}")
    return _loaded(stage_fn, stage, cfg, r, **networks)


def _loaded(stage_fn: Callable[..., Any], stage: str, cfg: TrainConfig, r: TrainingRun, **networks: Any) -> Any:
    """The stage run for 0 steps, quietly: its network as the run's checkpoint (or ``--init-world``) holds it."""
    return stage_fn(r.world, cfg.without_steps(stage), r.data, r.d, dataclasses.replace(r.folder, progress=False), **networks)

"""The warp-and-paint world (model/warp.py): its one stage, a generator and its critic.

One stage trains both networks, alternating per step: the generator plays
``unroll`` frames from real memory (its own frames fed back, 8-bit-quantised) and
is scored by L1, the flow's pull to optical flow, the heads and the critic; then
the critic learns the recorded pairs from the generator's. The schedule is a
curriculum by step: L1 alone first (the warp learns where pixels go), the critic
ramps in from ``warp_adv_start``, and the unroll grows from 1 to ``warp_unroll``
after ``warp_unroll_start`` (a world first learns the next frame, then to go on
from its own).

The same promises as ``loop.run_stage``: exact resume (the step's data and noise
come from (seed, stage, step)), EMA of the generator (what the bundle holds),
atomic checkpoints with both optimizers, metrics and TensorBoard, torchrun (each
network's loss runs inside its own DDP forward).
"""

from __future__ import annotations

import os
import time
from contextlib import nullcontext
from typing import Any, Callable

import cv2
import numpy as np
import torch

from neuralworld.bundle import build_networks
from neuralworld.data.flow import pair_flow
from neuralworld.data.store import Dataset
from neuralworld.model.autoencoder import frames_to_tensor, tensor_to_frames
from neuralworld.model.unet import PixelCodec
from neuralworld.model.warp import (
    MODEL_KIND, PatchDiscriminator, WarpBatch, WarpConfig, WarpNet, camera_move, count_parameters, fit_action_flow,
    overlay_from_depth, quantize, warp_discriminator_loss, warp_generator_loss, warp_preset,
)  # fmt: skip
from neuralworld.train.config import WARP_OBJECTIVE, TrainConfig, TrainingError
from neuralworld.train.data import HELD_OUT_SEED, FrameSource, TrainData, draw, steps_into, windows
from neuralworld.train.loop import (
    EMA, Dist, RunFolder, _ema_copy, _rng, _stage_index, load_checkpoint, lr_at, mean_psnr, save_checkpoint,
)  # fmt: skip
from neuralworld.train.run import training_run

STAGE = "warp"


def train_warp(data: str | os.PathLike, out: str | os.PathLike, cfg: TrainConfig, *, resume: bool = False,
               progress: bool = True) -> dict[str, Any]:
    """Train the warp-and-paint world on the dataset; its bundle lands in ``out/world``."""
    def network_config(preset: str, **where: Any) -> WarpConfig:
        world = warp_preset(preset, **where)
        for name, value in cfg.warp_objective.items():
            if name not in WARP_OBJECTIVE:
                raise TrainingError(f"--warp-objective {name}: not a warp objective setting; choose from {', '.join(WARP_OBJECTIVE)}")
            setattr(world.dynamics, name, type(getattr(world.dynamics, name))(value))
        needs = [name for name in ("geometry_flow", "overlay") if getattr(world.dynamics, name)]
        if needs:  # both read the recording's depth; the geometry's flow is its camera's
            camera = Dataset(data).info.camera
            if camera is None:
                raise TrainingError(f"{' and '.join(needs)} need(s) a recording with depth and a camera; {data} has none "
                                    "(neuralworld record with ViZDoom stores both): train without it")
            world.dynamics.camera_hfov, world.dynamics.camera_aspect = camera.hfov_deg, camera.aspect
            world.dynamics.depth_unit, world.dynamics.depth_offset = camera.depth_unit, camera.depth_offset
        return world

    with training_run(data, out, cfg, resume=resume, progress=progress, network_config=network_config,
                      model=MODEL_KIND) as r:
        torch.manual_seed(cfg.seed + 1)
        _, net = build_networks(r.world)
        r.summary["parameters"] = count_parameters(net)
        record = {"data": str(data), "model": MODEL_KIND, "preset": cfg.preset, "held_out": cfg.held_out,
                  "batch_size": cfg.warp.batch_size, "unroll": cfg.warp_unroll}

        def save(generator: WarpNet, step: int, seconds: float) -> None:  # the world as it is at ``step``
            r.save_world(PixelCodec(), generator, training={**record, "steps": {STAGE: step}, "seconds": round(seconds, 1)})

        net = train_warp_stage(r.world, cfg, r.data, r.d, r.folder, net, save_world=save)
    return r.summary


ENDS_PER = 8
"""a micro-batch of n windows brings n // 8 (at least one) episode ends for the heads, when the data has any"""


class WarpWindows:
    """Windows of memory + the frames to predict, with the actions that led to each frame, the
    rewards and terminations of those steps, and the flow into the first predicted frame
    (``data.flow.pair_flow``: the engine's geometry where the data has depth, else Farneback)."""

    def __init__(self, ds: Any, episodes: list[int], memory: int, unroll: int, with_flow: bool, with_geometry: bool = False):
        self.memory, self.unroll, self.with_flow = memory, unroll, with_flow
        self.with_geometry = with_geometry and ds.info.camera is not None  # (train_warp refuses geometry without depth)
        self.windows = windows(ds, episodes, memory + unroll + 1, "a warp window")  # the step before leads in
        self.source = FrameSource(ds, self.windows.episodes)
        self.camera = ds.info.camera
        names = ("actions", "rewards", "terminated") + (("poses", "depth") if self.camera is not None else ())
        self.steps = {e: ds.episode(e).load(names) for e in self.windows.episodes}
        self.spec, self.resolution = ds.spec, ds.resolution
        # episodes that ended in a death (or another end the recording marks), with a memory before it
        self.ends = [e for e in self.windows.episodes if self.steps[e]["terminated"][-1] and len(self.steps[e]["terminated"]) > memory]

    def batch(self, rng: np.random.Generator, n: int, unroll: int) -> WarpBatch:
        return self.batch_at(draw(self.windows, rng, n), unroll)

    def end_batch(self, rng: np.random.Generator, n: int) -> WarpBatch | None:
        """``n`` episodes' ending steps (``WarpBatch.ends``), drawn with replacement; None when no
        episode ends: the memory is the last ``memory`` frames, the actions lead to them and
        then the last step's."""
        if not self.ends:
            return None
        M = self.memory
        frames, actions, rewards, terminated = [], [], [], []
        for e in rng.choice(self.ends, size=n):
            st, T = self.steps[int(e)], len(self.steps[int(e)]["terminated"])
            frames.append(np.stack([self.source.frame(int(e), t) for t in range(T - M, T)]))
            actions.append(self.spec.normalize(st["actions"][steps_into(T - M, M + 1)]))
            rewards.append(st["rewards"][T - 1 : T])
            terminated.append(st["terminated"][T - 1 : T])
        return WarpBatch(
            frames=frames_to_tensor(np.stack(frames)), actions=torch.from_numpy(np.stack(actions)).float(),
            rewards=torch.from_numpy(np.stack(rewards)).float(), terminated=torch.from_numpy(np.stack(terminated)).float(),
        )  # fmt: skip

    def fits(self, e: int, s: int) -> bool:
        """Whether the window (episode e, step s) still lies inside its episode."""
        return s + self.windows.length <= self.windows.dataset.lengths[e]

    def batch_at(self, where: list[tuple[int, int]], unroll: int, with_flow: bool | None = None) -> WarpBatch:
        """The windows (episode, step) in ``where``: frames s+1 .. s+memory+unroll."""
        with_flow = self.with_flow if with_flow is None else with_flow
        k, M = self.memory + unroll, self.memory
        frames, actions, rewards, terminated, flows, depths, moves = [], [], [], [], [], [], []
        for e, s in where:
            f = np.stack([self.source.frame(e, t) for t in range(s + 1, s + 1 + k)])  # (k, H, W, 3)
            led = steps_into(s + 1, k)
            st = self.steps[e]
            frames.append(f)
            actions.append(self.spec.normalize(st["actions"][led]))
            rewards.append(st["rewards"][led][M:])
            terminated.append(st["terminated"][led][M:])
            if with_flow:
                geo = {} if self.camera is None else dict(
                    depth_new=st["depth"][s + M], pose_new=st["poses"][s + M], pose_old=st["poses"][s + M - 1], camera=self.camera)
                flows.append(pair_flow(f[M], f[M - 1], **geo))
            if self.with_geometry:  # the predicted frames' (s+M+1 ..) depth, and the camera's move into each
                t = np.arange(s + M, s + M + unroll)  # their steps' indices
                depths.append(st["depth"][t][:, None])  # (unroll, 1, H, W) uint8
                moves.append(np.stack([st["poses"][t], st["poses"][t - 1]]))  # (2, unroll, 4)
        geometry = {}
        if depths:
            poses = torch.from_numpy(np.stack(moves)).double()  # (n, 2, unroll, 4)
            geometry = dict(depth=torch.from_numpy(np.stack(depths)).float() / 255.0,  # (n, unroll, 1, H, W)
                            move=camera_move(poses[:, 0], poses[:, 1]).float())  # (n, unroll, 4)
        return WarpBatch(
            frames=frames_to_tensor(np.stack(frames)),  # (n, k, 3, H, W)
            actions=torch.from_numpy(np.stack(actions)).float(),  # (n, k, A)
            rewards=torch.from_numpy(np.stack(rewards)).float(),  # (n, unroll)
            terminated=torch.from_numpy(np.stack(terminated)).float(),
            flow=torch.from_numpy(np.stack(flows)).permute(0, 3, 1, 2).contiguous() if flows else None,  # (n, 2, H, W)
            **geometry,
        )


class RolloutStreams:
    """Training samples that go on from the generator's own play, step after step.

    Teacher forcing and a 6-frame unroll never show the generator what its 20th or 50th
    own frame looks like, and that is where a world melts. A stream is one training sample
    followed through its episode: each step it plays ``unroll`` more frames from the memory
    its last step ended with (8-bit frames, as play feeds back), scored against the recorded
    frames at the same place (low-pass L1 and the critic); after ``length`` played frames, a
    length drawn in [0, chain] for each stream, it starts again from recorded memory. Even
    slots never go on (every step a fresh window from the record: the next frame from real
    memory stays half of what is taught), odd slots do. So the batch mixes fresh windows with
    memories 1 .. chain frames deep into the world's own play, for the cost of the unroll
    alone (truncated backpropagation through time, with the gradient cut at each step as the
    unroll already cuts it at each frame).

    Slot j of the global batch belongs to micro-batch j // micro, whatever the processes:
    its restarts are drawn from (seed, step, slot), so 2 processes train what 1 process with
    2 accumulation steps trains; ``state`` / ``load`` carry every slot through a checkpoint."""

    def __init__(self, source: WarpWindows, slots: int, chain: int, seed: int):
        self.source, self.chain, self.seed = source, chain, seed
        M, (H, W) = source.memory, source.resolution
        self.memory = torch.zeros(slots, M, 3, H, W, dtype=torch.uint8)
        self.where = torch.zeros(slots, 2, dtype=torch.int64)  # (episode, step) of the slot's next window
        self.played = torch.zeros(slots, dtype=torch.int64)  # frames played since the last restart
        self.length = torch.zeros(slots, dtype=torch.int64)  # frames to play before restarting
        self.live = torch.zeros(slots, dtype=torch.bool)

    def batch(self, step: int, slots: range, unroll: int, chaining: bool) -> WarpBatch:
        """The samples of ``slots`` at ``step``: each stream goes on, or starts again."""
        where, played = [], []
        for j in slots:
            e, s = (int(x) for x in self.where[j])
            go_on = (chaining and j % 2 == 1 and bool(self.live[j]) and int(self.played[j]) + unroll <= int(self.length[j])
                     and self.source.fits(e, s))
            if not go_on:
                rng = np.random.default_rng([self.seed, _stage_index(STAGE), step, j])
                (e, s), = draw(self.source.windows, rng, 1)
                self.where[j] = torch.tensor([e, s])
                self.played[j] = 0
                self.length[j] = int(rng.integers(0, self.chain + 1)) if chaining and j % 2 == 1 else 0
            where.append((e, s))
            played.append(go_on)
        batch = self.source.batch_at(where, unroll)
        batch.played = torch.tensor(played)
        batch.memory = self.memory[list(slots)].float() / 127.5 - 1.0  # (n, M, 3, H, W), exactly what was stored
        return batch

    def went_on(self, slots: range, memory: torch.Tensor, unroll: int) -> None:
        """After the step: ``memory`` (len(slots), M, 3, H, W) in [-1, 1] is where each slot ends."""
        idx = list(slots)
        self.memory[idx] = torch.round((memory.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).to(torch.uint8)
        self.where[idx, 1] += unroll
        self.played[idx] += unroll
        self.live[idx] = True

    def state(self) -> dict[str, torch.Tensor]:
        return {"memory": self.memory, "where": self.where, "played": self.played, "length": self.length, "live": self.live}

    def gathered(self, d: Dist, per_rank: int) -> dict[str, torch.Tensor]:
        """Every slot's state, each rank's own slots (rank r holds r*per_rank ..) taken from it."""
        if d.world_size == 1:
            return self.state()
        mine = slice(d.rank * per_rank, (d.rank + 1) * per_rank)
        parts: list[Any] = [None] * d.world_size
        torch.distributed.all_gather_object(parts, {k: v[mine].clone() for k, v in self.state().items()})
        return {k: torch.cat([p[k] for p in parts]) for k in self.state()}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        for name, value in state.items():
            if getattr(self, name).shape != value.shape:
                raise TrainingError(f"the checkpoint's rollout streams hold {tuple(value.shape)} {name}, this run "
                                    f"{tuple(getattr(self, name).shape)}: resume with the same batch and memory")
            setattr(self, name, value.clone())


def fit_ego_flow(net: WarpNet, source: WarpWindows, rng: np.random.Generator, n: int = 4096) -> float:
    """The network's action flow (``WarpNetConfig.action_flow``) fitted to the flow of ``n``
    recorded pairs (``WarpWindows.batch_at``'s); returns the fraction of the flows' variance the actions explain."""
    M, k = source.memory, net.config.action_frames
    acts, flows = [], []
    where = draw(source.windows, rng, n)
    for i in range(0, n, 256):
        b = source.batch_at(where[i : i + 256], 1, with_flow=True)
        acts.append(b.actions[:, M - k + 1 : M + 1])  # (n, k, A): the actions up to the predicted frame's
        flows.append(b.flow)
    device = net.action_flow.device
    return fit_action_flow(net, torch.cat(acts).to(device), torch.cat(flows).to(device))


def unroll_at(step: int, cfg: TrainConfig) -> int:
    """Frames the generator plays itself at ``step``: 1, then growing to ``warp_unroll``."""
    start = cfg.warp_unroll_start * cfg.warp.steps
    if cfg.warp_unroll <= 1 or step < start:
        return 1
    return min(cfg.warp_unroll, 2 + int((step - start) / max(1.0, cfg.warp.steps - start) * (cfg.warp_unroll - 1)))


def adv_at(step: int, cfg: TrainConfig, weight: float) -> float:
    """The critic's weight at ``step``: 0, then a linear ramp over a tenth of the stage."""
    start, ramp = cfg.warp_adv_start * cfg.warp.steps, max(1.0, 0.1 * cfg.warp.steps)
    return weight * min(1.0, max(0.0, (step - start) / ramp))


class _GeneratorObjective(torch.nn.Module):
    """The generator's loss as its forward (DDP runs the whole unroll in one forward). The
    critic is held outside the module's parameters: the generator's loss never trains it."""

    def __init__(self, net: WarpNet, critic: PatchDiscriminator):
        super().__init__()
        self.net = net
        self._critic = (critic,)

    def forward(self, batch: WarpBatch, unroll: int, adv: float) -> tuple[torch.Tensor, list, dict[str, float], torch.Tensor]:
        critic = self._critic[0]
        critic.requires_grad_(False)
        try:
            return warp_generator_loss(self.net, critic if adv > 0 else None, batch, unroll=unroll, adv_weight=adv)
        finally:
            critic.requires_grad_(True)


class _CriticObjective(torch.nn.Module):
    def __init__(self, critic: PatchDiscriminator):
        super().__init__()
        self.critic = critic

    def forward(self, fakes: list) -> tuple[torch.Tensor, dict[str, float]]:
        return warp_discriminator_loss(self.critic, fakes)


def train_warp_stage(world: WarpConfig, cfg: TrainConfig, data: TrainData, d: Dist, run: RunFolder,
                     net: WarpNet, save_world: Callable[[WarpNet, int, float], None] | None = None) -> WarpNet:
    """Train generator and critic for ``cfg.warp.steps``; returns the generator holding its EMA weights.

    ``save_world(generator, step, seconds)`` is called with the EMA generator at every validation
    and at the end (rank 0), so the run's bundle can be played while it trains; ``seconds`` is
    the stage's training time so far, resumes included (kept in the checkpoint)."""
    sc, wcfg = cfg.warp, world.dynamics
    micro_total = d.world_size * cfg.grad_accum
    if sc.batch_size % micro_total:
        raise TrainingError(f"warp batch size {sc.batch_size} must divide into {d.world_size} processes x {cfg.grad_accum} accumulation steps")
    micro = sc.batch_size // micro_total
    M = wcfg.window
    train_windows = WarpWindows(data.ds, data.train_episodes, M, cfg.warp_unroll, wcfg.flow_weight > 0, wcfg.geometry_flow)
    held = WarpWindows(data.ds, data.check_episodes, M, 8, False).batch(np.random.default_rng(HELD_OUT_SEED), 16, 8)

    streams = RolloutStreams(train_windows, sc.batch_size, cfg.warp_chain, cfg.seed) if cfg.warp_chain > 0 else None
    critic = PatchDiscriminator(wcfg, world.action_size)
    net.to(d.device)
    critic.to(d.device)
    ckpt = run.path / f"{STAGE}.safetensors"
    if wcfg.overlay and not ckpt.exists():  # from the recording's depth, once (the checkpoint keeps the buffer)
        with torch.no_grad():
            net.overlay.copy_(overlay_from_depth([st["depth"] for st in train_windows.steps.values()]).to(net.overlay.device))
        if d.main:
            run.logger.scalars(STAGE, 0, {"overlay_share": float(net.overlay.mean())}, kind="fit")
    if wcfg.action_flow and not wcfg.geometry_flow and not ckpt.exists():
        explained = fit_ego_flow(net, train_windows, np.random.default_rng([cfg.seed, _stage_index(STAGE), 1]))
        if d.main:
            run.logger.scalars(STAGE, 0, {"action_flow_explained": explained}, kind="fit")
    ema = EMA(net, sc.ema_decay)
    opt_g = torch.optim.AdamW(net.parameters(), lr=sc.lr, betas=(0.5, 0.99), weight_decay=0.0)
    opt_d = torch.optim.AdamW(critic.parameters(), lr=sc.lr * cfg.warp_critic_lr, betas=(0.5, 0.99), weight_decay=0.0)
    step, seconds_before = 0, 0.0
    if ckpt.exists():
        meta = load_checkpoint(ckpt, net, ema, opt_g, {"critic": (critic, opt_d)})
        step, seconds_before = int(meta["step"]), float(meta.get("seconds", 0.0))
        if streams is not None:
            if meta["state"]:
                streams.load(meta["state"])
            elif d.main:
                print(f"[{STAGE}] the checkpoint holds no rollout streams (--warp-chain was 0): they start now", flush=True)
        if d.main:
            print(f"[{STAGE}] resuming at step {step}/{sc.steps}", flush=True)
    gen_obj: torch.nn.Module = _GeneratorObjective(net, critic)
    critic_obj: torch.nn.Module = _CriticObjective(critic)
    if d.world_size > 1:
        ids = [d.device.index] if d.device.type == "cuda" else None
        gen_obj = torch.nn.parallel.DistributedDataParallel(gen_obj, device_ids=ids)
        critic_obj = torch.nn.parallel.DistributedDataParallel(critic_obj, device_ids=ids)
    bar = None
    if run.progress and d.main and step < sc.steps:
        from tqdm import tqdm

        bar = tqdm(total=sc.steps, initial=step, desc=STAGE, unit="step", dynamic_ncols=True)
    t_last, samples_since = time.perf_counter(), 0
    t_start = time.perf_counter() - seconds_before
    while step < sc.steps:
        unroll, adv = unroll_at(step, cfg), adv_at(step, cfg, wcfg.adv_weight)
        lr = lr_at(step, sc)
        for g in opt_g.param_groups:
            g["lr"] = lr
        for g in opt_d.param_groups:
            g["lr"] = lr * cfg.warp_critic_lr
        seeds = _rng(cfg.seed, STAGE, step).integers(2**62, size=micro_total)
        logs: dict[str, float] = {}
        finite = True
        net.train()
        critic.train()
        for k in range(cfg.grad_accum):
            j = d.rank * cfg.grad_accum + k
            torch.manual_seed(int(np.random.default_rng([cfg.seed, _stage_index(STAGE), step, j]).integers(2**62)))
            slots = range(j * micro, (j + 1) * micro)
            if streams is not None:
                batch = streams.batch(step, slots, unroll, chaining=step >= cfg.warp_unroll_start * sc.steps)
            else:
                batch = train_windows.batch(np.random.default_rng(seeds[j]), micro, unroll)
            batch.ends = train_windows.end_batch(np.random.default_rng([int(seeds[j]), 1]), max(1, micro // ENDS_PER))
            batch = batch.to(d.device)
            last = k == cfg.grad_accum - 1 or d.world_size == 1
            sync_g = gen_obj.no_sync() if (d.world_size > 1 and not last) else nullcontext()
            with sync_g:
                loss, fakes, g_logs, memory_end = gen_obj(batch, unroll, adv)
                if streams is not None:
                    streams.went_on(slots, memory_end, unroll)
                finite &= bool(torch.isfinite(loss))
                (loss / cfg.grad_accum).backward()
            if adv > 0:
                sync_d = critic_obj.no_sync() if (d.world_size > 1 and not last) else nullcontext()
                with sync_d:
                    d_loss, d_logs = critic_obj(fakes)
                    finite &= bool(torch.isfinite(d_loss))
                    (d_loss / cfg.grad_accum).backward()
                g_logs.update(d_logs)
            g_logs["loss"] = float(loss.detach())
            for key, v in g_logs.items():
                logs[key] = logs.get(key, 0.0) + v / cfg.grad_accum
        if not d.all_true(finite):
            raise TrainingError(f"[{STAGE}] the loss became NaN/inf at step {step}; stopped. "
                                + ("The last good checkpoint is intact: lower the learning rate and --resume." if ckpt.exists() else "No checkpoint was written yet."))
        grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt_g.step()
        opt_g.zero_grad(set_to_none=True)
        if adv > 0:
            opt_d.step()
        opt_d.zero_grad(set_to_none=True)
        ema.update(net, step)
        step += 1
        samples_since += sc.batch_size * unroll
        if step % cfg.log_every == 0 or step == sc.steps:
            logs = d.mean(logs)
            if d.main:
                dt = time.perf_counter() - t_last
                logs.update(lr=lr, grad_norm=float(grad_norm), unroll=unroll, adv_weight=adv, frames_per_s=samples_since / max(dt, 1e-9))
                run.logger.scalars(STAGE, step, logs)
                t_last, samples_since = time.perf_counter(), 0
                if bar is not None:
                    bar.set_postfix(l1=f"{logs.get('l1_0', 0):.4f}", U=unroll, fps=f"{logs['frames_per_s']:.0f}")
        if bar is not None:
            bar.update(1)
        if step % cfg.checkpoint_every == 0 or step == sc.steps:
            state = streams.gathered(d, cfg.grad_accum * micro) if streams is not None else None
            if d.main:
                save_checkpoint(ckpt, net, ema, opt_g, step, {"stage": STAGE, "seconds": time.perf_counter() - t_start},
                                {"critic": (critic, opt_d)}, state)
            d.barrier()
        if d.main and (step % cfg.validate_every == 0 or step == sc.steps):
            _validate(net, ema, held, run, step, d)
            if save_world is not None and step < sc.steps:
                save_world(_ema_copy(net, ema), step, time.perf_counter() - t_start)
    if bar is not None:
        bar.close()
    ema.copy_to(net)
    net.eval()
    if save_world is not None and d.main:
        save_world(net, step, time.perf_counter() - t_start)
    return net


DRIVE = 64
"""frames the validation drives on past the 8 it plays from real memory"""


@torch.no_grad()
def _validate(net: WarpNet, ema: EMA, held: WarpBatch, run: RunFolder, step: int, d: Dist) -> None:
    """Held-out, the EMA generator: the next frame from real memory (PSNR beside copy-last,
    sharpness beside the real frame's), 8 frames played from its own (PSNR of the last), and a
    drive of ``DRIVE`` frames on from there (sharpness of its last frame beside the real
    frames'): the figures from real memory can rise while the world a player drives runs into
    noise (over 1) or fog (near 0); the drive shows it."""
    m = _ema_copy(net, ema)
    M, k = m.config.window, m.config.action_frames
    frames, actions = held.frames.to(d.device), held.actions.to(d.device)
    gen = torch.Generator(device=d.device).manual_seed(99)
    memory = quantize(frames[:, :M])
    played = []
    for u in range(frames.shape[1] - M):
        noise = torch.randn(frames[:, 0].shape, generator=gen, device=d.device)
        out = m(memory, actions[:, M + u - k + 1 : M + u + 1], noise)["frame"]
        played.append(out)
        memory = torch.cat([memory[:, 1:], quantize(out)[:, None]], 1)
    # the drive: on from the played memory, each window held to another window's recorded
    # actions (cycled, 8 frames each), so every control the data has is driven
    U = frames.shape[1] - M
    drive = actions[:, M - k + 1 :].roll(1, 0)  # (B, k - 1 + U, A)
    for u in range(DRIVE):
        noise = torch.randn(frames[:, 0].shape, generator=gen, device=d.device)
        j = (u // 8) % U
        out = m(memory, drive[:, j : j + k], noise)["frame"]
        memory = torch.cat([memory[:, 1:], quantize(out)[:, None]], 1)
    real = tensor_to_frames(frames[:, M])
    first, last = tensor_to_frames(played[0]), tensor_to_frames(played[-1])
    driven = tensor_to_frames(out)
    run.logger.scalars(STAGE, step, {
        "next_frame_psnr": mean_psnr(first, real),
        "copy_last_psnr": mean_psnr(tensor_to_frames(frames[:, M - 1]), real),
        "next_frame_sharpness_ratio": sharpness(first) / max(sharpness(real), 1e-9),
        "played_8_psnr": mean_psnr(last, tensor_to_frames(frames[:, -1])),
        "played_8_sharpness_ratio": sharpness(last) / max(sharpness(tensor_to_frames(frames[:, -1])), 1e-9),
        f"drive_{DRIVE}_sharpness_ratio": sharpness(driven) / max(sharpness(tensor_to_frames(frames[:, M:].flatten(0, 1))), 1e-9),
    }, kind="held_out")
    run.logger.images(f"{STAGE}/real_next_played8_drive", step, [real[:8], first[:8], last[:8], driven[:8]])


def sharpness(frames: np.ndarray) -> float:
    """Median variance of the Laplacian of (n, H, W, 3) uint8 frames (grey): how much fine detail."""
    return float(np.median([cv2.Laplacian(cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY), cv2.CV_64F).var() for f in frames]))

"""The recurrent world (model/rnn.py): World Models' two stages, one after the other.

1. ``vae``: the VAE on single frames of the training episodes (squared error + KL above its
   tolerance), Adam.
2. ``rnn``: every frame encoded once to its posterior (mean, log-variance); the MDN-LSTM then
   reads stretches of episodes (``rnn_sequence`` steps, the whole episode where it is shorter),
   a code drawn from each frame's posterior with the action that followed it, and learns the
   next frame's code (mixture likelihood), the step's reward (squared error), whether the
   step ended the episode (cross-entropy; the recorded death is the last step of an episode
   that ``terminated``, and has no frame after it) and, where the recording has it, the
   player's health (squared error: the memory learns to carry the damage taken).

One process; the same promises as the other stages: exact resume (each step's batch comes from
(seed, stage, step)), EMA weights in the bundle, atomic checkpoints, metrics and TensorBoard.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from neuralworld.bundle import build_networks, save_bundle
from neuralworld.model.autoencoder import tensor_to_frames
from neuralworld.model.rnn import MODEL_KIND, VAE, MemoryRNN, RNNConfig, count_parameters, mixture_nll, rnn_preset, vae_loss
from neuralworld.train.config import StageConfig, TrainConfig, TrainingError
from neuralworld.train.data import TrainData
from neuralworld.train.loop import EMA, _ema_copy, _rng, load_checkpoint, lr_at, mean_psnr, save_checkpoint, world_to_start_from
from neuralworld.train.run import training_run

HELD_FRAMES = 256
"""Held-out frames the VAE's validation reconstructs."""


def train_rnn(data: str | os.PathLike, out: str | os.PathLike, cfg: TrainConfig, *, resume: bool = False,
              progress: bool = True) -> dict[str, Any]:
    """Train the recurrent world on the dataset; its bundle lands in ``out/world``."""
    def network_config(preset: str, **where: Any) -> RNNConfig:
        world = rnn_preset(preset, **where)
        if cfg.rnn_death_horizon is not None:
            world.dynamics.death_horizon = int(cfg.rnn_death_horizon)
        if cfg.rnn_hidden is not None:
            world.dynamics.hidden = int(cfg.rnn_hidden)
        return world

    with training_run(data, out, cfg, resume=resume, progress=progress, network_config=network_config, model=MODEL_KIND) as r:
        if r.d.world_size > 1:
            raise TrainingError("the recurrent world trains in one process: run it without torchrun")
        if cfg.rnn_sequence < 2:
            raise TrainingError(f"rnn_sequence must be >= 2 steps, got {cfg.rnn_sequence}")
        torch.manual_seed(cfg.seed + 1)
        vae, net = build_networks(r.world)
        spec = r.data.ds.spec
        train, all_frames = _load(r.data, r.data.train_episodes)
        held, held_all = _load(r.data, r.data.held_episodes) if r.data.held_episodes else (None, None)
        frames = torch.from_numpy(all_frames)  # (N, H, W, 3) uint8, the same memory
        held_frames = _spread(held_all, HELD_FRAMES) if held else None
        r.summary["parameters"] = {"vae": count_parameters(vae), "rnn": count_parameters(net)}
        vae_from = cfg.init_autoencoder or cfg.init_world
        vae = _train_vae(vae, cfg, r, frames, held_frames,
                         init=(lambda: _start_from(vae_from, r.world, "vae")) if vae_from else None)
        codes = [_encode(vae, e["frames"]) for e in train]
        held_codes = [_encode(vae, e["frames"]) for e in held] if held else None
        actions = [torch.from_numpy(spec.normalize(e["actions"])).float() for e in train]
        net = _train_memory(net, cfg, r, _Episodes(codes, actions, train),
                            _Episodes(held_codes, [torch.from_numpy(spec.normalize(e["actions"])).float() for e in held], held)
                            if held else None,
                            init=(lambda: _start_from(cfg.init_world, r.world, "rnn")) if cfg.init_world else None)
        if held_frames is not None:
            r.summary["held_out_vae_psnr"] = _vae_psnr(vae, held_frames)
        record = {"data": str(data), "model": MODEL_KIND, "preset": cfg.preset, "held_out": cfg.held_out,
                  "steps": {"vae": cfg.vae.steps, "rnn": cfg.rnn.steps}, "rnn_sequence": cfg.rnn_sequence,
                  "init": {"vae": vae_from, "rnn": cfg.init_world}}
        save_bundle(r.path / "world", r.world, vae, net, name=r.path.name, training=record,
                    start_frames=train[0]["frames"][:1], start_actions=spec.noop()[None])
        r.summary["bundle"] = str(r.path / "world")
    return r.summary


HEALTH = "health"
"""The game variable the health head learns, where the recording has it (ViZDoom's), over ``FULL_HEALTH``."""
FULL_HEALTH = 100.0


def _load(data: TrainData, episodes: list[int]) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """The episodes' arrays, and all their frames (N, H, W, 3) in one array, each episode's
    ``frames`` a view of it: the frames are held once (5,000 Take Cover episodes are 10 GB)."""
    names = tuple(data.ds.info.game_variables)
    lengths = [data.ds.episode(e).length for e in episodes]
    H, W = data.ds.info.resolution
    frames = np.empty((sum(lengths), H, W, 3), np.uint8)
    out, at = [], 0
    for e, n in zip(episodes, lengths):
        ep = data.ds.episode(e)
        d = ep.load(("actions", "rewards", "terminated") + (("game_vars",) if HEALTH in names else ()))
        for i in range(0, n, 1024):  # chunk by chunk, straight into place
            frames[at + i : at + min(n, i + 1024)] = ep.load(("frames",), i, min(n, i + 1024))["frames"]
        d["frames"] = frames[at : at + n]
        at += n
        if HEALTH in names:
            d["health"] = d.pop("game_vars")[:, names.index(HEALTH)].astype(np.float32) / FULL_HEALTH
        out.append(d)
    return out, frames


def _spread(frames: np.ndarray, n: int) -> np.ndarray:
    return frames[np.linspace(0, len(frames) - 1, min(n, len(frames))).astype(np.int64)]


def _to_input(frames: torch.Tensor) -> torch.Tensor:
    return frames.permute(0, 3, 1, 2).float() / 127.5 - 1  # (B, 3, H, W) in [-1, 1]


@torch.no_grad()
def _encode(vae: VAE, frames: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """An episode's frames (T, H, W, 3) -> the posterior's mean and log-variance (T, latent) each."""
    vae.eval()
    out = [vae.posterior(_to_input(torch.from_numpy(frames[i : i + 256]))) for i in range(0, len(frames), 256)]
    return torch.cat([m for m, _ in out]), torch.cat([v for _, v in out])


@torch.no_grad()
def _vae_psnr(vae: VAE, frames: np.ndarray) -> float:
    vae.eval()
    return round(mean_psnr(tensor_to_frames(vae(_to_input(torch.from_numpy(frames)))), frames), 2)


class _Episodes:
    """The MDN-LSTM's episodes: per episode its codes' posteriors, normalised actions, rewards and ending."""

    def __init__(self, codes: list[tuple[torch.Tensor, torch.Tensor]], actions: list[torch.Tensor], raw: list[dict[str, np.ndarray]]):
        self.codes, self.actions = codes, actions
        self.rewards = [torch.from_numpy(e["rewards"].astype(np.float32)) for e in raw]
        self.health = [torch.from_numpy(e["health"]) if "health" in e else None for e in raw]
        self.died = [bool(e["terminated"][-1]) if len(e["terminated"]) else False for e in raw]
        self.lengths = np.array([len(a) for a in actions])

    def batch(self, rng: np.random.Generator, n: int, sequence: int, which: np.ndarray | None = None,
              horizon: int = 1) -> dict[str, torch.Tensor]:
        """``n`` stretches (or the episodes ``which``), padded to the longest: codes drawn from the
        posteriors (B, T, latent), actions (B, T, A), the next code's target and its mask (B, T),
        rewards (B, T), the termination target (B, T: 1 on the last ``horizon`` steps of an episode that
        ended by a death) and the mask of real steps (B, T)."""
        eps = which if which is not None else rng.integers(0, len(self.lengths), n)
        starts = [int(rng.integers(0, max(1, self.lengths[e] - sequence + 1))) for e in eps]
        T = max(min(sequence, int(self.lengths[e]) - s) for e, s in zip(eps, starts))
        Z, A = self.codes[0][0].shape[1], self.actions[0].shape[1]
        out = {k: torch.zeros(len(eps), T + 1, Z) for k in ("mean", "log_var")}
        out.update(actions=torch.zeros(len(eps), T, A), rewards=torch.zeros(len(eps), T), ended=torch.zeros(len(eps), T),
                   steps=torch.zeros(len(eps), T), has_next=torch.zeros(len(eps), T), health=torch.zeros(len(eps), T),
                   has_health=torch.zeros(len(eps), T))
        for i, (e, s) in enumerate(zip(eps, starts)):
            L = min(sequence, int(self.lengths[e]) - s)
            m, v = self.codes[e]
            nxt = min(L + 1, int(self.lengths[e]) - s)  # the frame after the stretch, where there is one
            out["mean"][i, :nxt], out["log_var"][i, :nxt] = m[s : s + nxt], v[s : s + nxt]
            out["actions"][i, :L] = self.actions[e][s : s + L]
            out["rewards"][i, :L] = self.rewards[e][s : s + L]
            out["steps"][i, :L] = 1
            out["has_next"][i, : nxt - 1] = 1
            if self.health[e] is not None:  # the health the frame was seen with: what the memory has taken so far
                out["health"][i, :L], out["has_health"][i, :L] = self.health[e][s : s + L], 1
            if self.died[e]:  # the steps of the stretch within ``horizon`` of the episode's last
                first = int(self.lengths[e]) - horizon - s
                out["ended"][i, max(0, first) : L] = 1  # (empty when the stretch ends before them)
        z = out["mean"] + torch.from_numpy(rng.standard_normal(out["mean"].shape).astype(np.float32)) * (0.5 * out["log_var"]).exp()
        return {"codes": z[:, :-1], "next": z[:, 1:],
                **{k: out[k] for k in ("actions", "rewards", "ended", "steps", "has_next", "health", "has_health")}}


def memory_loss(net: MemoryRNN, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """The MDN-LSTM's objective on a batch of ``_Episodes.batch``: the next code's negative log
    likelihood per number, the reward's squared error, the termination's cross-entropy, and where the
    recording has it the health's squared error."""
    out, _ = net.run(b["codes"], b["actions"])
    logits, mean, log_sigma, reward, term = net.predict(out)
    nll = mixture_nll(logits, mean, log_sigma, b["next"]).mean(-1)  # (B, T)
    nll = (nll * b["has_next"]).sum() / b["has_next"].sum().clamp(min=1)
    steps = b["steps"].sum().clamp(min=1)
    rew = (((reward - b["rewards"]) ** 2) * b["steps"]).sum() / steps
    bce = (F.binary_cross_entropy_with_logits(term, b["ended"], reduction="none") * b["steps"]).sum() / steps
    hp = (((net.health(out) - b["health"]) ** 2) * b["has_health"]).sum() / b["has_health"].sum().clamp(min=1)
    return nll + rew + bce + hp, {"nll": nll.item(), "reward": rew.item(), "termination": bce.item(), "health": hp.item()}


def _start_from(source: str, world: RNNConfig, which: str) -> nn.Module:
    """The VAE (``which="vae"``) or MDN-LSTM of the recurrent world at ``source``, checked to be
    this run's (same preset, controls and resolution)."""
    flag = "--init-world" if which == "rnn" else "--init-world/--init-autoencoder"
    other = world_to_start_from(source, flag)
    if other.model != MODEL_KIND:
        raise TrainingError(f"{flag} {source} is a {other.model} world, not a recurrent one (--model rnn)")
    keys = ("latent", "channels") if which == "vae" else ("latent", "hidden", "mixtures")
    mine = [world.resolution, *(getattr(world.dynamics, k) for k in keys)]
    theirs = [other.config.resolution, *(getattr(other.config.dynamics, k) for k in keys)]
    if which == "rnn":
        mine, theirs = mine + [world.spec], theirs + [other.spec]
    if [tuple(v) if isinstance(v, list) else v for v in mine] != [tuple(v) if isinstance(v, list) else v for v in theirs]:
        raise TrainingError(f"{flag} {source}: its {which} is not this run's (another --preset, --rnn-hidden, resolution or controls?)")
    return other.autoencoder if which == "vae" else other.dynamics


def _train_vae(vae: VAE, cfg: TrainConfig, r: Any, frames: torch.Tensor, held: np.ndarray | None, *,
               init: Callable[[], nn.Module] | None = None) -> VAE:
    def batch_loss(step: int) -> tuple[torch.Tensor, dict[str, float]]:
        rng = _rng(cfg.seed, "vae", step)
        x = _to_input(frames[torch.from_numpy(rng.integers(0, len(frames), cfg.vae.batch_size))])
        return vae_loss(vae, x, torch.Generator().manual_seed(int(rng.integers(2**62))))

    def validate(model: nn.Module, step: int) -> None:
        if held is None:
            return
        r.folder.logger.scalars("vae", step, {"held_out_psnr": _vae_psnr(model, held)}, kind="val")
        with torch.no_grad():
            r.folder.logger.images("vae/held_out", step, [held[:8], tensor_to_frames(model(_to_input(torch.from_numpy(held[:8]))))])

    return _run_stage("vae", vae, cfg.vae, cfg, r, batch_loss, validate, init=init)


def _train_memory(net: MemoryRNN, cfg: TrainConfig, r: Any, eps: _Episodes, held: _Episodes | None, *,
                  init: Callable[[], nn.Module] | None = None) -> MemoryRNN:
    def batch_loss(step: int) -> tuple[torch.Tensor, dict[str, float]]:
        return memory_loss(net, eps.batch(_rng(cfg.seed, "rnn", step), cfg.rnn.batch_size, cfg.rnn_sequence,
                                          horizon=net.config.death_horizon))

    def validate(model: nn.Module, step: int) -> None:
        if held is None:
            return
        which = np.arange(min(64, len(held.lengths)))
        with torch.no_grad():
            _, figures = memory_loss(model, held.batch(np.random.default_rng(0), 0, cfg.rnn_sequence, which,
                                                       horizon=net.config.death_horizon))
        r.folder.logger.scalars("rnn", step, {f"held_out_{k}": v for k, v in figures.items()}, kind="val")

    return _run_stage("rnn", net, cfg.rnn, cfg, r, batch_loss, validate, init=init)


def _run_stage(name: str, module: nn.Module, sc: StageConfig, cfg: TrainConfig, r: Any,
               batch_loss: Callable[[int], tuple[torch.Tensor, dict[str, float]]],
               validate: Callable[[nn.Module, int], None], *, init: Callable[[], nn.Module] | None = None) -> Any:
    """Adam over ``module`` for ``sc.steps`` steps of ``batch_loss(step)``, resuming from the run's
    checkpoint of the stage; returns the module with its EMA weights, in eval mode. ``init``
    gives another world's network to start from (``--init-world``), unless the run has a
    checkpoint of the stage: it is copied in as the stage's step-0 checkpoint (fresh Adam), so a
    resume loads nothing from outside the run, and 0 steps keep it as it is."""
    run = r.folder
    ckpt = run.path / f"{name}.safetensors"
    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad])
    if init is not None and not ckpt.exists():
        module.load_state_dict(init().state_dict())
        save_checkpoint(ckpt, module, EMA(module, sc.ema_decay), opt, 0, {"stage": name, "init": "given"})
    ema = EMA(module, sc.ema_decay)
    step = 0
    if ckpt.exists():
        step = int(load_checkpoint(ckpt, module, ema, opt)["step"])
        print(f"[{name}] resuming at step {step}/{sc.steps}", flush=True)
    bar = None
    if run.progress and step < sc.steps:
        from tqdm import tqdm

        bar = tqdm(total=sc.steps, initial=step, desc=name, unit="step", dynamic_ncols=True)
    t_last = time.perf_counter()
    module.train()
    while step < sc.steps:
        lr = lr_at(step, sc)
        for g in opt.param_groups:
            g["lr"] = lr
        loss, metrics = batch_loss(step)
        if not torch.isfinite(loss):
            raise TrainingError(f"[{name}] the loss became NaN/inf at step {step}; stopped. "
                                + ("The last checkpoint is intact: lower the learning rate and --resume." if ckpt.exists() else ""))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        ema.update(module, step)
        step += 1
        metrics["loss"] = loss.item()
        if step % cfg.log_every == 0 or step == sc.steps:
            dt = time.perf_counter() - t_last
            run.logger.scalars(name, step, {**metrics, "lr": lr, "steps_per_s": cfg.log_every / max(dt, 1e-9)})
            t_last = time.perf_counter()
            if bar is not None:
                bar.set_postfix(loss=f"{metrics['loss']:.4f}")
        if bar is not None:
            bar.update(1)
        if step % cfg.checkpoint_every == 0 or step == sc.steps:
            save_checkpoint(ckpt, module, ema, opt, step, {"stage": name})
        if step % cfg.validate_every == 0 or step == sc.steps:
            validate(_ema_copy(module, ema), step)
            module.train()
    if bar is not None:
        bar.close()
    ema.copy_to(module)
    return module.eval()

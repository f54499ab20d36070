"""The one training loop: autoencoder, then latents, then dynamics; one CPU or torchrun.

    neuralworld train DATA --preset tiny --out RUN            # one process
    torchrun --nproc_per_node=N -m neuralworld.cli train ...  # N processes (gloo on CPU, NCCL on GPU)

A run folder::

    RUN/
      run.json                    dataset, TrainConfig and WorldConfig of the run (checked on --resume)
      autoencoder.safetensors     training state: weights, EMA, optimizer, step (state_io: no pickle)
      latents.safetensors         the dataset encoded once by the EMA encoder, normalised, fp16
      dynamics.safetensors        training state of the dynamics
      distill.safetensors         training state of the fast sampler's few-step student
      rollout.safetensors         training state of that student on its own rollouts (objective.rollout_loss)
      metrics.jsonl               one JSON line per logged step and per validation
      tb/                         TensorBoard scalars and sample grids (real | generated)
      world/                      the inference bundle (config.json + model.safetensors), EMA weights
      baseline.safetensors        with --model unet-baseline: the U-Net's training state (no autoencoder,
                                  no latents: it trains on pixel windows; see train_baseline)

Exact resume without saving a data loader: the global batch of step s is drawn
from an RNG seeded by (seed, stage, s), split into ``world_size * grad_accum``
micro-batches; micro-batch j also seeds the noise the objective draws. So a run
resumed at step s sees the same data and noise as one that never stopped, and N
processes compute what one process with ``grad_accum = N`` computes.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

from neuralworld.bundle import BundleError, World, build_networks, load_bundle, load_state_strict, save_bundle
from neuralworld.data.store import Dataset, DatasetError
from neuralworld.model.autoencoder import Autoencoder, autoencoder_loss, frames_to_tensor, tensor_to_frames
from neuralworld.model.config import ConfigError, WorldConfig, preset
from neuralworld.model.dynamics import Dynamics
from neuralworld.model.objective import LatentClip, distill_loss, dynamics_loss, rollout_loss
from neuralworld.model.sampler import sample_euler
from neuralworld.state_io import (
    StateError, atomic_write_json, flatten_state, load_tensors, read_json, save_tensors, unflatten_state,
)

STAGES = ("autoencoder", "dynamics", "distill", "rollout")
MODELS = ("world", "unet-baseline")
"""What ``neuralworld train --model`` trains: our world, or the DIAMOND-style baseline (model/unet.py)."""


class TrainingError(Exception):
    """Training cannot start or go on; the message says why and what is intact."""


# ---------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------
@dataclass
class StageConfig:
    steps: int
    """Optimizer steps for this stage."""
    batch_size: int
    """Global batch (all processes and accumulation steps together)."""
    lr: float
    """Peak learning rate (AdamW), after a linear warm-up; cosine decay to 10% at the end."""
    warmup: int = 100
    weight_decay: float = 0.01
    ema_decay: float = 0.999


@dataclass
class TrainConfig:
    preset: str = "tiny"
    stages: tuple[str, ...] = STAGES
    autoencoder: StageConfig = dataclasses.field(default_factory=lambda: StageConfig(300, 16, 1e-3))
    dynamics: StageConfig = dataclasses.field(default_factory=lambda: StageConfig(300, 8, 5e-4))
    distill: StageConfig = dataclasses.field(default_factory=lambda: StageConfig(0, 8, 1e-4))
    """The ``fast`` sampler's student (0 steps: no student; ``fast`` then plays as ``euler2``)."""
    distill_student_steps: int = 1
    """Euler steps (network calls) per frame the student is distilled for: 1 or 2."""
    distill_teacher: str = "quality"
    """The teacher's sampler preset (``model.sampler.SAMPLERS``): what the student imitates."""
    rollout: StageConfig = dataclasses.field(default_factory=lambda: StageConfig(0, 8, 3e-5))
    """The student fine-tuned on its own rollouts (0 steps: the distilled student as it is)."""
    rollout_frames: int = 8
    """Most frames the student plays itself before the frame it is taught; its clips are
    ``clip_frames + rollout_frames`` long."""
    rollout_real_weight: float = 1.0
    """Weight of the pull towards the recorded frame (``objective.rollout_loss``)."""
    rollout_teacher_weight: float = 1.0
    """Weight of the pull towards the teacher's frame from the same memory (0: no teacher calls)."""
    init_autoencoder: str | None = None
    """A trained world (bundle or run folder) whose autoencoder this run starts from: the
    autoencoder stage fine-tunes it for its steps (0: use it as it is). The autoencoder
    only knows how frames look, not the controls, so a world of the same look (another
    map, footage of the same game) skips the slowest stage on a CPU."""
    init_world: str | None = None
    """A trained world (bundle or run folder) of the same preset and controls that this run
    starts from: its autoencoder, dynamics and fast student begin each stage, which then
    trains for its steps (0: keep that network as it is). Continues a world, fine-tunes it
    on new data, or runs a later stage (``rollout``) on a shipped world."""
    clip_frames: int = 6
    """Frames per dynamics training clip (the window read is one step longer)."""
    grad_accum: int = 1
    """Micro-batches per process per step: global batch = world_size x grad_accum x micro."""
    held_out: float = 0.1
    """Fraction of episodes kept out of training for validation."""
    seed: int = 0
    checkpoint_every: int = 200
    validate_every: int = 200
    log_every: int = 10
    precision: str = "auto"
    """auto (bf16 where the hardware has it), fp32 or bf16."""
    device: str = "auto"
    model: str = "world"
    """``MODELS``: "unet-baseline" trains the frame-stacking U-Net with the dynamics stage's
    steps, batch and learning rate (the same budget) instead of autoencoder + dynamics."""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["stages"] = list(self.stages)
        return d


# the training half of each preset (the network half is model/config.PRESETS)
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    # measured at 64x64 on 2 cores: the autoencoder reaches 23 dB held-out PSNR at 500 steps and 27 dB
    # at 4000 (the weapon and panels only appear past ~2000); ~20 minutes for both stages here
    "tiny": dict(autoencoder=StageConfig(4000, 16, 1e-3, warmup=50), dynamics=StageConfig(3000, 8, 5e-4, warmup=50),
                 distill=StageConfig(600, 8, 1e-4, warmup=20), rollout=StageConfig(0, 8, 5e-5, warmup=20),
                 clip_frames=6),
    "mini": dict(autoencoder=StageConfig(4000, 16, 1e-3, warmup=50), dynamics=StageConfig(20_000, 16, 4e-4, warmup=200),
                 distill=StageConfig(1500, 16, 1e-4, warmup=50), rollout=StageConfig(0, 16, 5e-5, warmup=20),
                 clip_frames=8),
    "small": dict(autoencoder=StageConfig(20_000, 32, 5e-4, warmup=500), dynamics=StageConfig(60_000, 32, 3e-4, warmup=1000),
                  distill=StageConfig(4000, 32, 5e-5, warmup=100), rollout=StageConfig(0, 32, 3e-5, warmup=50),
                  clip_frames=16),
    "base": dict(autoencoder=StageConfig(50_000, 64, 4e-4, warmup=1000), dynamics=StageConfig(200_000, 64, 2e-4, warmup=2000),
                 distill=StageConfig(10_000, 64, 5e-5, warmup=200), rollout=StageConfig(0, 64, 3e-5, warmup=100),
                 clip_frames=32),
}


def train_config(preset_name: str, **overrides: Any) -> TrainConfig:
    if preset_name not in TRAIN_PRESETS:
        raise TrainingError(f"unknown preset {preset_name!r}; choose from {sorted(TRAIN_PRESETS)}")
    base = dict(TRAIN_PRESETS[preset_name])
    for stage in STAGES:
        if stage in base:
            base[stage] = dataclasses.replace(base[stage])
    cfg = TrainConfig(preset=preset_name, **base)
    for key, value in overrides.items():
        if value is None:
            continue
        if "." in key:  # "autoencoder.steps"
            stage, field = key.split(".", 1)
            setattr(getattr(cfg, stage), field, value)
        else:
            setattr(cfg, key, value)
    return cfg


# ---------------------------------------------------------------------------
# processes, devices, precision
# ---------------------------------------------------------------------------
@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Average logged metrics over processes, so a log line describes the global batch."""
        if self.world_size == 1 or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return {k: float(v) / self.world_size for k, v in zip(keys, t.tolist())}

    def all_true(self, flag: bool) -> bool:
        if self.world_size == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item() > 0)


def setup_distributed(device: str) -> Dist:
    """Read torchrun's environment; one process when it is absent."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainingError("--device cuda asked for, but PyTorch sees no GPU")
        dev = torch.device("cuda", local_rank if world_size > 1 else torch.cuda.current_device())
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world_size, local_rank, dev)


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_for(precision: str, device: torch.device) -> Callable[[], Any]:
    if precision not in ("auto", "fp32", "bf16"):
        raise TrainingError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    use_bf16 = precision == "bf16" or (
        precision == "auto" and (device.type == "cuda" and torch.cuda.is_bf16_supported() or device.type == "cpu" and _cpu_has_bf16())
    )
    if not use_bf16:
        return nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


# ---------------------------------------------------------------------------
# data: deterministic by step
# ---------------------------------------------------------------------------
_SEED_ORDER = ("autoencoder", "dynamics", "distill", "baseline", "rollout")
"""Stages in the order their numbers enter the RNG seeds (fixed: a new stage goes last, so
older runs resume with the same data)."""


def _stage_index(stage: str) -> int:
    """A stage's number in the RNG seeds."""
    return _SEED_ORDER.index(stage)


def _rng(seed: int, stage: str, step: int) -> np.random.Generator:
    return np.random.default_rng([seed, _stage_index(stage) + 1, step])


class FrameSource:
    """Random frames of the training episodes, held in memory when they fit."""

    def __init__(self, ds: Dataset, episodes: list[int], memory_limit: int | None = None):
        if memory_limit is None:  # a third of this machine's memory
            memory_limit = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 3
        self.ds = ds
        self.episodes = episodes
        self.lengths = np.array([ds.lengths[e] for e in episodes])
        self.cum = np.cumsum(self.lengths)
        h, w = ds.resolution
        self.in_memory = int(self.cum[-1]) * h * w * 3 <= memory_limit
        self._frames: dict[int, np.ndarray] = {}

    def frame(self, e: int, t: int) -> np.ndarray:
        if not self.in_memory:
            return self.ds.episode(e)["frames"][t]  # one chunk read per frame: slower, bounded memory
        if e not in self._frames:
            self._frames[e] = self.ds.episode(e)["frames"][:]
        return self._frames[e][t]

    def batch(self, rng: np.random.Generator, n: int) -> np.ndarray:
        flat = rng.integers(0, int(self.cum[-1]), size=n)
        out = []
        for i in flat:
            j = int(np.searchsorted(self.cum, i, side="right"))
            out.append(self.frame(self.episodes[j], int(i - (self.cum[j - 1] if j else 0))))
        return np.stack(out)  # (n, H, W, 3) uint8


@dataclass
class LatentEpisodes:
    """The dataset encoded once: per episode, normalised latents and the step data."""

    latents: list[torch.Tensor]  # (T, C, h, w) fp16
    actions: list[torch.Tensor]  # (T, A) normalised
    rewards: list[torch.Tensor]  # (T,)
    terminated: list[torch.Tensor]  # (T,)

    def clips(self, rng: np.random.Generator, episodes: list[int], n: int, frames: int) -> LatentClip:
        """n clips of ``frames`` frames: a window of frames+1 steps, aligned as LatentClip says."""
        ok = [e for e in episodes if len(self.latents[e]) >= frames + 1]
        counts = np.array([len(self.latents[e]) - frames for e in ok])
        cum = np.cumsum(counts)
        picks = rng.integers(0, int(cum[-1]), size=n)
        lat, act, rew, term = [], [], [], []
        for i in picks:
            j = int(np.searchsorted(cum, i, side="right"))
            s = int(i - (cum[j - 1] if j else 0))
            e = ok[j]
            lat.append(self.latents[e][s + 1 : s + frames + 1].float())
            act.append(self.actions[e][s : s + frames])
            rew.append(self.rewards[e][s : s + frames])
            term.append(self.terminated[e][s : s + frames])
        return LatentClip(torch.stack(lat).contiguous(), torch.stack(act), torch.stack(rew), torch.stack(term).float())


# ---------------------------------------------------------------------------
# EMA, schedule, checkpoints
# ---------------------------------------------------------------------------
class EMA:
    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))  # a short warm-up so early EMA is not stale init
        for k, v in module.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(d).add_(v.detach().float(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)

    def copy_to(self, module: torch.nn.Module) -> None:
        module.load_state_dict({k: v.to(module.state_dict()[k].dtype) for k, v in self.shadow.items()})


def lr_at(step: int, cfg: StageConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def save_checkpoint(path: Path, module: torch.nn.Module, ema: EMA, opt: torch.optim.Optimizer, step: int, extra: dict[str, Any]) -> None:
    tensors = {f"model.{k}": v for k, v in module.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.shadow.items()})
    opt_tensors, opt_skeleton = flatten_state(opt.state_dict(), "opt")
    tensors.update(opt_tensors)
    save_tensors(path, tensors, {"step": step, "optimizer": opt_skeleton, "torch_rng": torch.get_rng_state().tolist(), **extra})


def load_checkpoint(path: Path, module: torch.nn.Module, ema: EMA, opt: torch.optim.Optimizer | None) -> dict[str, Any]:
    try:
        tensors, meta = load_tensors(path, what="training checkpoint")
    except StateError as e:
        raise TrainingError(f"{e}; delete it to restart that stage") from None
    try:
        load_state_strict(module, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, str(path))
        for k in ema.shadow:
            ema.shadow[k] = tensors[f"ema.{k}"].float()
        if opt is not None:
            opt.load_state_dict(unflatten_state(tensors, meta["optimizer"]))
    except (BundleError, KeyError, StateError, ValueError) as e:
        raise TrainingError(f"training checkpoint {path} does not fit this run ({e})") from None
    return meta


# ---------------------------------------------------------------------------
# the loop shared by both stages
# ---------------------------------------------------------------------------
class Logger:
    def __init__(self, run: Path, enabled: bool):
        self.enabled = enabled
        self.run = run
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run / "tb"))
            except ImportError:  # tensorboard is optional: metrics.jsonl has everything
                self.tb = None

    def scalars(self, stage: str, step: int, values: dict[str, float], kind: str = "train") -> None:
        if not self.enabled:
            return
        with open(self.run / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"stage": stage, "kind": kind, "step": step, **values}) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(f"{stage}/{kind}/{k}", v, step)

    def image(self, tag: str, step: int, img: np.ndarray) -> None:
        if self.enabled and self.tb is not None:
            self.tb.add_image(tag, img, step, dataformats="HWC")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _run_stage(
    *,
    stage: str,
    module: torch.nn.Module,
    cfg: TrainConfig,
    stage_cfg: StageConfig,
    d: Dist,
    run: Path,
    logger: Logger,
    loss_fn: Callable[[torch.nn.Module, np.random.Generator, int], tuple[torch.Tensor, dict[str, float]]],
    validate: Callable[[torch.nn.Module, int], None],
    progress: bool,
) -> torch.nn.Module:
    """Train ``module`` for the stage's steps, resuming from its checkpoint if there is one.
    ``loss_fn(module, rng, micro_batch)`` returns the loss of a micro-batch drawn with
    ``rng``. Returns the module holding its EMA weights."""
    ckpt = run / f"{stage}.safetensors"
    micro_total = d.world_size * cfg.grad_accum
    if stage_cfg.batch_size % micro_total:
        raise TrainingError(
            f"{stage} batch size {stage_cfg.batch_size} must divide into {d.world_size} processes x {cfg.grad_accum} accumulation steps"
        )
    micro = stage_cfg.batch_size // micro_total
    module.to(d.device)
    ema = EMA(module, stage_cfg.ema_decay)
    opt = torch.optim.AdamW(module.parameters(), lr=stage_cfg.lr, weight_decay=stage_cfg.weight_decay, betas=(0.9, 0.99))
    step = 0
    if ckpt.exists():
        meta = load_checkpoint(ckpt, module, ema, opt)
        step = int(meta["step"])
        if d.main:
            print(f"[{stage}] resuming at step {step}/{stage_cfg.steps}", flush=True)
    if step >= stage_cfg.steps:
        ema.copy_to(module)
        return module

    # the loss runs inside forward so DDP sees it (its gradient hooks need its own forward)
    model: torch.nn.Module = _Objective(module, loss_fn)
    if d.world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    autocast = autocast_for(cfg.precision, d.device)
    bar = None
    if progress and d.main:
        from tqdm import tqdm

        bar = tqdm(total=stage_cfg.steps, initial=step, desc=stage, unit="step", dynamic_ncols=True)
    t_last, samples_since = time.perf_counter(), 0
    module.train()
    while step < stage_cfg.steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, stage_cfg)
        micro_seeds = _rng(cfg.seed, stage, step).integers(2**62, size=micro_total)  # one per global micro-batch
        metrics_sum: dict[str, float] = {}
        finite = True
        for k in range(cfg.grad_accum):
            j = d.rank * cfg.grad_accum + k  # global micro-batch index: the data slice and its noise
            torch.manual_seed(int(np.random.default_rng([cfg.seed, _stage_index(stage), step, j]).integers(2**62)))
            sync = k == cfg.grad_accum - 1 or d.world_size == 1
            ctx = model.no_sync() if (d.world_size > 1 and not sync) else nullcontext()
            with ctx:
                with autocast():
                    loss, metrics = model(np.random.default_rng(micro_seeds[j]), micro)
                finite &= bool(torch.isfinite(loss))
                (loss / cfg.grad_accum).backward()
            for key, v in metrics.items():
                metrics_sum[key] = metrics_sum.get(key, 0.0) + v / cfg.grad_accum
        if not d.all_true(finite):
            raise TrainingError(
                f"[{stage}] the loss became NaN/inf at step {step}; stopped. "
                + (f"The last good checkpoint ({ckpt.name}) is intact: lower the learning rate and --resume."
                   if ckpt.exists() else "No checkpoint was written yet.")
            )
        grad_norm = torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update(module, step)
        step += 1
        samples_since += stage_cfg.batch_size

        if d.world_size > 1 and (step % cfg.log_every == 0 or step == stage_cfg.steps):
            # every process joins the average; per-t bins a micro-batch lacked stay rank 0's own
            metrics_sum.update(d.mean({k: v for k, v in metrics_sum.items() if not k.startswith("flow_by_t/")}))
        if d.main and (step % cfg.log_every == 0 or step == stage_cfg.steps):
            dt = time.perf_counter() - t_last
            metrics_sum.update(lr=opt.param_groups[0]["lr"], grad_norm=float(grad_norm), samples_per_s=samples_since / max(dt, 1e-9))
            logger.scalars(stage, step, metrics_sum)
            t_last, samples_since = time.perf_counter(), 0
            if bar is not None:
                bar.set_postfix(loss=f"{metrics_sum['loss']:.4f}", sps=f"{metrics_sum['samples_per_s']:.1f}")
        if bar is not None:
            bar.update(1)
        if step % cfg.checkpoint_every == 0 or step == stage_cfg.steps:
            if d.main:
                save_checkpoint(ckpt, module, ema, opt, step, {"stage": stage})
            d.barrier()
        if d.main and (step % cfg.validate_every == 0 or step == stage_cfg.steps):
            ema_module = _ema_copy(module, ema)
            validate(ema_module, step)
            module.train()
    if bar is not None:
        bar.close()
    _check_ranks_agree(module, d, stage)
    ema.copy_to(module)
    module.eval()
    return module


class _Objective(torch.nn.Module):
    """A network and its loss as one module, so DDP's forward runs the loss."""

    def __init__(self, net: torch.nn.Module, loss_fn: Callable[..., tuple[torch.Tensor, dict[str, float]]]):
        super().__init__()
        self.net = net
        self.loss_fn = loss_fn

    def forward(self, rng: np.random.Generator, n: int) -> tuple[torch.Tensor, dict[str, float]]:
        return self.loss_fn(self.net, rng, n)


def _ema_copy(module: torch.nn.Module, ema: EMA) -> torch.nn.Module:
    import copy

    m = copy.deepcopy(module)
    ema.copy_to(m)
    return m.eval()


def _check_ranks_agree(module: torch.nn.Module, d: Dist, stage: str) -> None:
    """Every process must end a stage with the same weights (DDP keeps them so; check)."""
    if d.world_size == 1:
        return
    vec = torch.cat([p.detach().float().flatten() for p in module.parameters()])
    gathered = [torch.zeros_like(vec) for _ in range(d.world_size)]
    dist.all_gather(gathered, vec)
    worst = max(float((g - gathered[0]).abs().max()) for g in gathered)
    if worst > 0:
        raise TrainingError(f"[{stage}] processes disagree on the weights after training (max diff {worst:g})")


# ---------------------------------------------------------------------------
# stages
# ---------------------------------------------------------------------------
def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * math.log10(255.0**2 / max(mse, 1e-10))


def train_autoencoder(world: WorldConfig, cfg: TrainConfig, ds: Dataset, split: tuple[list[int], list[int]], d: Dist,
                      run: Path, logger: Logger, progress: bool) -> Autoencoder:
    torch.manual_seed(cfg.seed)
    ae, _ = build_networks(world)
    source = cfg.init_autoencoder or cfg.init_world
    if source:
        flag = "--init-autoencoder" if cfg.init_autoencoder else "--init-world"

        def given() -> Autoencoder:
            other = _world_to_start_from(source, flag)
            if not isinstance(other.autoencoder, Autoencoder) or other.config.autoencoder != ae.config:
                raise TrainingError(f"{flag}: {other.path}'s autoencoder is not this preset's (another --preset?)")
            return other.autoencoder

        _start_from(run, "autoencoder", ae, given, source, cfg.autoencoder, d)
    train_eps, held_eps = split
    source = FrameSource(ds, train_eps)
    held = FrameSource(ds, held_eps or train_eps).batch(np.random.default_rng(12345), 64)
    held_t = frames_to_tensor(held).to(d.device)

    def loss_fn(net: torch.nn.Module, rng: np.random.Generator, n: int) -> tuple[torch.Tensor, dict[str, float]]:
        return autoencoder_loss(net, frames_to_tensor(source.batch(rng, n)).to(d.device))

    def validate(m: torch.nn.Module, step: int) -> None:
        with torch.no_grad():
            rec = tensor_to_frames(m(held_t))
        psnr = float(np.mean([_psnr(rec[i], held[i]) for i in range(len(held))]))
        logger.scalars("autoencoder", step, {"psnr": psnr}, kind="held_out")
        grid = np.concatenate([np.concatenate(list(held[:8]), 1), np.concatenate(list(rec[:8]), 1)], 0)
        logger.image("autoencoder/real_vs_reconstruction", step, grid)

    ae = _run_stage(stage="autoencoder", module=ae, cfg=cfg, stage_cfg=cfg.autoencoder, d=d, run=run, logger=logger,
                    loss_fn=loss_fn, validate=validate, progress=progress)
    # latent normalisation from a fixed sample of training frames (deterministic: the same on every rank)
    with torch.no_grad():
        sample = frames_to_tensor(source.batch(np.random.default_rng(777), 512)).to(d.device)
        ae.calibrate_latents(torch.cat([ae.encode(sample[i : i + 64]) for i in range(0, len(sample), 64)]))
    return ae


def _world_to_start_from(source: str, flag: str) -> World:
    """The trained world (bundle, or run folder holding world/) a run starts from; loaded once
    per process however many stages start from it (again if its weights file changed)."""
    path = Path(source)
    bundle = path / "world" if (path / "world" / "config.json").exists() else path
    try:
        st = (bundle / "model.safetensors").stat()
        version: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
    except OSError:
        version = None  # load_bundle says what is missing
    return _load_world(str(bundle), version, flag)


@functools.lru_cache(maxsize=2)
def _load_world(bundle: str, version: tuple[int, int] | None, flag: str) -> World:
    try:
        return load_bundle(bundle)
    except BundleError as e:
        raise TrainingError(f"{flag}: {e}") from None


def _start_from(run: Path, stage: str, module: torch.nn.Module, given: Callable[[], torch.nn.Module | None],
                source: str, stage_cfg: StageConfig, d: Dist) -> None:
    """Start a stage from another world's network (``given()``; None: it has none to give),
    unless the run already has a checkpoint of it (then that is resumed, and ``given`` is not
    called: a resume loads nothing from outside the run). The copy is kept in the run as the
    stage's step-0 checkpoint (fresh optimizer), so later stages alone need nothing outside the run."""
    ckpt = run / f"{stage}.safetensors"
    if ckpt.exists():
        return
    other = given()
    if other is None:
        return
    module.load_state_dict(other.state_dict())
    if d.main:
        save_checkpoint(ckpt, module, EMA(module, stage_cfg.ema_decay), torch.optim.AdamW(module.parameters()), 0,
                        {"stage": stage, "init": str(source)})
    d.barrier()


def _init_world_networks(cfg: TrainConfig, world: WorldConfig) -> World:
    """The world named by ``init_world``, checked to hold this preset's dynamics for these controls."""
    other = _world_to_start_from(cfg.init_world, "--init-world")
    if other.model != "world" or other.config.to_dict() != world.to_dict():
        raise TrainingError(f"--init-world: {other.path} is not a {cfg.preset!r} world of this dataset's controls "
                            "and resolution (another --preset or dataset?)")
    return other


def encode_dataset(ae: Autoencoder, ds: Dataset, d: Dist, batch: int = 64) -> LatentEpisodes:
    lat, act, rew, term = [], [], [], []
    spec = ds.spec
    with torch.no_grad():
        for e in range(ds.num_episodes):
            data = ds.episode(e).load(("frames", "actions", "rewards", "terminated"))
            frames = data["frames"]
            z = [ae.normalize_latents(ae.encode(frames_to_tensor(frames[i : i + batch]).to(d.device))).half().cpu().contiguous()
                 for i in range(0, len(frames), batch)]
            lat.append(torch.cat(z))
            act.append(torch.from_numpy(spec.normalize(data["actions"])))
            rew.append(torch.from_numpy(data["rewards"].astype(np.float32)))
            term.append(torch.from_numpy(data["terminated"].astype(np.float32)))
    return LatentEpisodes(lat, act, rew, term)


def _latents_path(run: Path) -> Path:
    return run / "latents.safetensors"


def weights_sha256(module: torch.nn.Module) -> str:
    """A digest of a module's parameters and buffers: what the cached latents are keyed by."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_latents(run: Path, lat: LatentEpisodes, ae_sha: str, ids: list[str]) -> None:
    tensors = {}
    for i, key in enumerate(ids):
        tensors[f"{key}.latents"] = lat.latents[i]
        tensors[f"{key}.actions"] = lat.actions[i]
        tensors[f"{key}.rewards"] = lat.rewards[i]
        tensors[f"{key}.terminated"] = lat.terminated[i]
    save_tensors(_latents_path(run), tensors, {"autoencoder_sha256": ae_sha, "episodes": ids})


def load_latents(run: Path, ae_sha: str, ids: list[str]) -> LatentEpisodes | None:
    path = _latents_path(run)
    if not path.exists():
        return None
    try:
        tensors, meta = load_tensors(path, what="encoded latents")
    except StateError:
        return None  # damaged: encode again
    if meta.get("autoencoder_sha256") != ae_sha or meta.get("episodes") != ids:
        return None
    return LatentEpisodes(*[[tensors[f"{k}.{n}"] for k in ids] for n in ("latents", "actions", "rewards", "terminated")])


def train_dynamics(world: WorldConfig, cfg: TrainConfig, ae: Autoencoder, lat: LatentEpisodes,
                   split: tuple[list[int], list[int]], d: Dist, run: Path, logger: Logger, progress: bool) -> Dynamics:
    torch.manual_seed(cfg.seed + 1)
    _, dyn = build_networks(world)
    if cfg.init_world:
        _start_from(run, "dynamics", dyn, lambda: _init_world_networks(cfg, world).dynamics, cfg.init_world,
                    cfg.dynamics, d)
    train_eps, held_eps = split
    T = cfg.clip_frames
    held = lat.clips(np.random.default_rng(4321), held_eps or train_eps, 8, T)

    def loss_fn(net: torch.nn.Module, rng: np.random.Generator, n: int) -> tuple[torch.Tensor, dict[str, float]]:
        return dynamics_loss(net, lat.clips(rng, train_eps, n, T).to(d.device))

    def validate(m: torch.nn.Module, step: int) -> None:
        clip = held.to(d.device)
        with torch.no_grad():
            torch.manual_seed(99)
            loss, metrics = dynamics_loss(m, clip)
            # teacher-forced next frame: clean context, the last frame generated from noise
            ctx = clip.latents[:, :-1]
            B = ctx.shape[0]

            def generate(actions: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
                def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                    lat_in = torch.cat([ctx, x[:, None]], 1)
                    levels = torch.cat([torch.zeros(B, T - 1, device=x.device), t[:, None]], 1)
                    return m(lat_in, levels, actions).velocity[:, -1]
                return sample_euler(denoise, noise, 8)

            noise = torch.randn_like(clip.latents[:, -1])
            gen = generate(clip.actions, noise)
            # the same noise and memory under another clip's actions: does the model read its controls?
            gen_wrong = generate(clip.actions.roll(1, dims=0), noise)
            fake, wrong, real, prev = (tensor_to_frames(ae.decode(ae.denormalize_latents(z))) for z in
                                       (gen, gen_wrong, clip.latents[:, -1], clip.latents[:, -2]))
        psnr = float(np.mean([_psnr(fake[i], real[i]) for i in range(B)]))
        wrong_psnr = float(np.mean([_psnr(wrong[i], real[i]) for i in range(B)]))
        copy_psnr = float(np.mean([_psnr(prev[i], real[i]) for i in range(B)]))
        logger.scalars("dynamics", step, {"loss": metrics["loss"], "flow": metrics["flow"], "next_frame_psnr": psnr,
                                          "copy_last_psnr": copy_psnr, "action_gain_db": psnr - wrong_psnr},
                       kind="held_out")
        grid = np.concatenate([np.concatenate(list(real), 1), np.concatenate(list(fake), 1)], 0)
        logger.image("dynamics/real_vs_generated", step, grid)

    return _run_stage(stage="dynamics", module=dyn, cfg=cfg, stage_cfg=cfg.dynamics, d=d, run=run, logger=logger,
                      loss_fn=loss_fn, validate=validate, progress=progress)


def train_distill(world: WorldConfig, cfg: TrainConfig, ae: Autoencoder, teacher: Dynamics, lat: LatentEpisodes,
                  split: tuple[list[int], list[int]], d: Dist, run: Path, logger: Logger, progress: bool) -> Dynamics | None:
    """The ``fast`` sampler's network: a copy of the trained dynamics (EMA weights) taught by
    ``objective.distill_loss`` to reach the teacher preset's frame in ``distill_student_steps``
    Euler steps, or from ``init_world``'s student. Validation: on held-out clips, the student's
    frame vs the teacher's (PSNR of decoded frames) and both vs the real frame, beside the
    undistilled network at the same steps. None when there are 0 steps and no student to keep."""
    from neuralworld.model.sampler import SAMPLERS

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

        _start_from(run, "distill", student, given, cfg.init_world, cfg.distill, d)
    if cfg.distill.steps == 0 and not (run / "distill.safetensors").exists():
        return None  # nothing trained and nothing given: no student
    student.requires_grad_(True)
    train_eps, held_eps = split
    T = cfg.clip_frames
    held = lat.clips(np.random.default_rng(4321), held_eps or train_eps, 8, T)
    steps = cfg.distill_student_steps

    def loss_fn(net: torch.nn.Module, rng: np.random.Generator, n: int) -> tuple[torch.Tensor, dict[str, float]]:
        return distill_loss(net, teacher, lat.clips(rng, train_eps, n, T).to(d.device),
                            teacher_sampler=teacher_sampler, student_steps=steps)

    def frames(latents: torch.Tensor) -> np.ndarray:
        return tensor_to_frames(ae.decode(ae.denormalize_latents(latents)))

    def validate(m: torch.nn.Module, step: int) -> None:
        clip = held.to(d.device)
        ctx, actions = clip.latents[:, :-1], clip.actions
        B = ctx.shape[0]
        with torch.no_grad():
            torch.manual_seed(99)
            x1 = torch.randn_like(clip.latents[:, -1])

            def denoise_with(net: Dynamics):
                def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                    levels = torch.cat([torch.zeros(B, T - 1, device=x.device), t[:, None]], 1)
                    return net(torch.cat([ctx, x[:, None]], 1), levels, actions).velocity[:, -1]
                return denoise

            real = frames(clip.latents[:, -1])
            by_teacher = frames(teacher_sampler(denoise_with(teacher), x1))
            by_student = frames(sample_euler(denoise_with(m), x1, steps))
            undistilled = frames(sample_euler(denoise_with(teacher), x1, steps))
        mean_psnr = lambda a, b: float(np.mean([_psnr(a[i], b[i]) for i in range(B)]))  # noqa: E731
        logger.scalars("distill", step, {
            "student_vs_teacher_psnr": mean_psnr(by_student, by_teacher),
            "undistilled_vs_teacher_psnr": mean_psnr(undistilled, by_teacher),
            "student_psnr": mean_psnr(by_student, real), "teacher_psnr": mean_psnr(by_teacher, real),
            "undistilled_psnr": mean_psnr(undistilled, real),
        }, kind="held_out")
        grid = np.concatenate([np.concatenate(list(x), 1) for x in (real, by_teacher, by_student, undistilled)], 0)
        logger.image("distill/real_teacher_student_undistilled", step, grid)

    return _run_stage(stage="distill", module=student, cfg=cfg, stage_cfg=cfg.distill, d=d, run=run, logger=logger,
                      loss_fn=loss_fn, validate=validate, progress=progress)


def play_open_loop(world: WorldConfig, ae: Autoencoder, net: Dynamics, clip: LatentClip, context: int, steps: int,
                   context_level: float, seed: int = 99) -> np.ndarray:
    """``net`` playing clips as the player does, through ``WorldSession`` (the one rollout loop):
    the first ``context`` frames (decoded) as memory, then every later frame generated in
    ``steps`` Euler calls under the recorded actions and remembered at ``context_level``.
    Returns the generated frames (B, T - context, H, W, 3) uint8."""
    from neuralworld.model.sampler import SamplerPreset
    from neuralworld.session import WorldSession  # a session is what this validates; train sits below it otherwise

    B, T = clip.latents.shape[:2]
    with torch.no_grad():
        memory = clip.latents[:, :context].flatten(0, 1)  # (B*context, C, h, w)
        frames = tensor_to_frames(ae.decode(ae.denormalize_latents(memory))).reshape(B, context, *world.resolution, 3)
    spec = world.spec
    assert spec is not None, "a training world is bound to its dataset's controls"
    actions = spec.denormalize(clip.actions.float().cpu().numpy())  # (B, T, A) in the controls' units
    session = WorldSession(World(config=world, autoencoder=ae, dynamics=net), frames, actions=actions[:, :context],
                           sampler=SamplerPreset("euler", steps, context_level=context_level), seed=seed)
    return session.rollout(actions[:, context:])  # (B, T - context, H, W, 3)


def train_rollout(world: WorldConfig, cfg: TrainConfig, ae: Autoencoder, teacher: Dynamics, student: Dynamics,
                  lat: LatentEpisodes, split: tuple[list[int], list[int]], d: Dist, run: Path, logger: Logger,
                  progress: bool) -> Dynamics:
    """The distilled student fine-tuned on its own rollouts (``objective.rollout_loss``): the
    memory it learns from is what it makes when playing. Validation: held-out clips played
    open loop from ``clip_frames - 1`` recorded frames for ``rollout_frames`` frames; PSNR of
    the decoded frames to the recorded ones at the first and last step, beside the student
    this stage started from."""
    from neuralworld.model.sampler import SAMPLERS

    teacher_sampler = SAMPLERS[cfg.distill_teacher]
    teacher = teacher.to(d.device).eval().requires_grad_(False)
    start = Dynamics.from_world(world)
    start.load_state_dict(student.state_dict())
    start = start.to(d.device).eval().requires_grad_(False)
    student.requires_grad_(True)
    train_eps, held_eps = split
    T = cfg.clip_frames + cfg.rollout_frames
    held = lat.clips(np.random.default_rng(4321), held_eps or train_eps, 8, T)
    steps = cfg.distill_student_steps
    level = SAMPLERS["fast"].context_level
    use_teacher = cfg.rollout_teacher_weight > 0

    def loss_fn(net: torch.nn.Module, rng: np.random.Generator, n: int) -> tuple[torch.Tensor, dict[str, float]]:
        return rollout_loss(net, lat.clips(rng, train_eps, n, T).to(d.device), rollout=cfg.rollout_frames,
                            student_steps=steps, context_level=level,
                            teacher=teacher if use_teacher else None, teacher_sampler=teacher_sampler,
                            real_weight=cfg.rollout_real_weight, teacher_weight=cfg.rollout_teacher_weight)

    def frames(latents: torch.Tensor) -> np.ndarray:
        return tensor_to_frames(ae.decode(ae.denormalize_latents(latents)))

    clip = held.to(d.device)
    context = cfg.clip_frames - 1
    real = [frames(clip.latents[:, k]) for k in (context, T - 1)]
    start_frames = play_open_loop(world, ae, start, clip, context, steps, level)
    baseline = [start_frames[:, k] for k in (0, -1)]
    B = clip.latents.shape[0]
    mean_psnr = lambda a, b: float(np.mean([_psnr(a[i], b[i]) for i in range(B)]))  # noqa: E731

    def validate(m: torch.nn.Module, step: int) -> None:
        gen = play_open_loop(world, ae, m, clip, context, steps, level)
        mine = [gen[:, k] for k in (0, -1)]
        logger.scalars("rollout", step, {
            "open_loop_psnr_first": mean_psnr(mine[0], real[0]), "open_loop_psnr_last": mean_psnr(mine[1], real[1]),
            "start_psnr_first": mean_psnr(baseline[0], real[0]), "start_psnr_last": mean_psnr(baseline[1], real[1]),
        }, kind="held_out")
        grid = np.concatenate([np.concatenate(list(x), 1) for x in (real[1], baseline[1], mine[1])], 0)
        logger.image("rollout/real_start_now_last", step, grid)

    return _run_stage(stage="rollout", module=student, cfg=cfg, stage_cfg=cfg.rollout, d=d, run=run, logger=logger,
                      loss_fn=loss_fn, validate=validate, progress=progress)


# ---------------------------------------------------------------------------
# the entry point
# ---------------------------------------------------------------------------
def _start_context(ds: Dataset, split: tuple[list[int], list[int]], memory: int) -> tuple[np.ndarray, np.ndarray]:
    """The first frames of a training episode (where the recorded player spawned) with
    the actions that led to them: what a session shows when it is given nothing."""
    episode = ds.episode(split[0][0] if split[0] else 0)
    n = max(1, min(memory - 1, 16, episode.length))
    data = episode.load(("frames", "actions"), 0, n)
    led_to = np.concatenate([ds.spec.noop()[None], data["actions"][: n - 1]])  # actions[t] led to frame t+1
    return data["frames"], led_to


def _check_run(run: Path, record: dict[str, Any], resume: bool) -> None:
    path = run / "run.json"
    if not resume:
        if run.exists() and any(run.iterdir()):
            raise TrainingError(f"{run} already holds a run: add --resume to continue it, or choose another --out")
        return
    if not path.exists():
        raise TrainingError(f"--resume: {run} holds no run (no run.json)")
    try:
        old = read_json(path, "run record")
    except StateError as e:
        raise TrainingError(str(e)) from None
    problems = []
    if old.get("action_spec") != record["action_spec"]:
        problems.append("the dataset's ActionSpec differs from the run's")
    if old.get("resolution") != record["resolution"]:
        problems.append(f"the dataset's resolution {record['resolution']} differs from the run's {old.get('resolution')}")
    if old.get("world") != record["world"]:
        problems.append("the model config differs (another --preset?)")
    if problems:
        raise TrainingError(f"cannot resume {run}: " + "; ".join(problems))


def _start_run(run: Path, record: dict[str, Any], resume: bool, d: Dist) -> None:
    """Rank 0 checks the run folder against ``record`` and writes run.json once; all ranks wait."""
    if d.main:
        _check_run(run, record, resume)
        run.mkdir(parents=True, exist_ok=True)
        if not (run / "run.json").exists():
            atomic_write_json(run / "run.json", record)
    d.barrier()


def _finish_run(run: Path, summary: dict[str, Any], d: Dist, t0: float) -> dict[str, Any]:
    """Time the run, note whether ranks agree, and write summary.json (rank 0)."""
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    summary["ranks_identical"] = True if d.world_size > 1 else None
    if d.main:
        atomic_write_json(run / "summary.json", summary)
    return summary


def open_training_data(data: str | os.PathLike) -> Dataset:
    """The dataset a run trains on, or a TrainingError that says why it can't."""
    try:
        ds = Dataset(data)
    except DatasetError as e:
        raise TrainingError(str(e)) from None
    if ds.num_episodes == 0:
        raise TrainingError(f"{data} has no complete episodes to train on")
    return ds


def train(data: str | os.PathLike, out: str | os.PathLike, cfg: TrainConfig, *, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train a world on a dataset; returns a summary. The bundle lands in ``out/world``."""
    if cfg.model != "world":
        if cfg.model not in MODELS:
            raise TrainingError(f"unknown model {cfg.model!r}; choose from {list(MODELS)}")
        return train_baseline(data, out, cfg, resume=resume, progress=progress)
    run = Path(out)
    d = setup_distributed(cfg.device)
    ds = open_training_data(data)
    try:
        world = preset(cfg.preset, spec=ds.spec, resolution=ds.resolution).validate()
    except ConfigError as e:
        raise TrainingError(f"preset {cfg.preset!r} does not fit {data}: {e}") from None
    if cfg.init_world and cfg.init_autoencoder:
        raise TrainingError("give --init-world (every network) or --init-autoencoder (the autoencoder alone), not both")
    unknown = set(cfg.stages) - set(STAGES)
    if unknown or not cfg.stages:
        raise TrainingError(f"stages must be among {STAGES}, got {list(cfg.stages)}")
    record = {
        "data": str(data),
        "action_spec": ds.spec.to_json_dict(),
        "resolution": list(ds.resolution),
        "world": world.to_dict(),
        "train": cfg.to_dict(),
        "world_size": d.world_size,
    }
    _start_run(run, record, resume, d)
    split = ds.split(cfg.held_out)
    logger = Logger(run, d.main)
    t0 = time.perf_counter()
    summary: dict[str, Any] = {"run": str(run), "world_size": d.world_size, "device": str(d.device),
                               "train_episodes": len(split[0]), "held_out_episodes": len(split[1])}
    try:
        ae_ckpt = run / "autoencoder.safetensors"
        if "autoencoder" in cfg.stages:
            ae = train_autoencoder(world, cfg, ds, split, d, run, logger, progress)
        else:
            if not ae_ckpt.exists() and not (cfg.init_autoencoder or cfg.init_world):
                raise TrainingError(f"no trained autoencoder in {run}: train the autoencoder stage first "
                                    "(or give --init-autoencoder or --init-world)")
            ae = train_autoencoder(world, dataclasses.replace(cfg, autoencoder=dataclasses.replace(cfg.autoencoder, steps=0)),
                                   ds, split, d, run, logger, progress=False)
        ae.eval()
        # 0 distill steps keep a student only where there is one: --init-world's
        distill = "distill" in cfg.stages and (cfg.distill.steps > 0 or bool(cfg.init_world))
        rollout = "rollout" in cfg.stages and cfg.rollout.steps > 0
        if rollout and cfg.rollout_frames < 1:
            raise TrainingError(f"rollout_frames must be >= 1, got {cfg.rollout_frames}")
        if "dynamics" in cfg.stages or distill or rollout:
            ae_sha = weights_sha256(ae)  # the weights that encode (from a checkpoint, --init-autoencoder, or none)
            # rank 0 encodes (or reuses) the latents; every rank waits at the same barrier, then reads them
            lat = load_latents(run, ae_sha, ds.ids) if d.main else None
            if d.main and lat is None:
                t_enc = time.perf_counter()
                lat = encode_dataset(ae, ds, d)
                save_latents(run, lat, ae_sha, ds.ids)
                summary["encode_seconds"] = round(time.perf_counter() - t_enc, 1)
            d.barrier()
            if not d.main:
                lat = load_latents(run, ae_sha, ds.ids)
                if lat is None:
                    raise TrainingError(f"process {d.rank} cannot read the latents process 0 wrote to {run}")
            assert lat is not None
            if "dynamics" in cfg.stages:
                dyn = train_dynamics(world, cfg, ae, lat, split, d, run, logger, progress)
            else:  # distillation alone: the trained dynamics from its checkpoint
                if not (run / "dynamics.safetensors").exists() and not cfg.init_world:
                    raise TrainingError(f"no trained dynamics in {run}: train the dynamics stage before distilling it "
                                        "(or give --init-world)")
                dyn = train_dynamics(world, dataclasses.replace(cfg, dynamics=dataclasses.replace(cfg.dynamics, steps=0)),
                                     ae, lat, split, d, run, logger, progress=False)
            student = train_distill(world, cfg, ae, dyn, lat, split, d, run, logger, progress) if distill else None
            if rollout:
                if student is None:  # the distilled student from its checkpoint (or --init-world's)
                    student = train_distill(world, dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, steps=0)),
                                            ae, dyn, lat, split, d, run, logger, progress=False)
                    if student is None:
                        raise TrainingError(f"no distilled student in {run}: train the distill stage before the rollout stage")
                student = train_rollout(world, cfg, ae, dyn, student, lat, split, d, run, logger, progress)
            if d.main:
                start_frames, start_actions = _start_context(ds, split, world.dynamics.memory_frames)
                save_bundle(run / "world", world, ae, dyn, name=run.name,
                            start_frames=start_frames, start_actions=start_actions,
                            distilled=student, distilled_steps=cfg.distill_student_steps if student is not None else 0,
                            training={"data": str(data), "preset": cfg.preset, "held_out": cfg.held_out,
                                      "steps": {s: getattr(cfg, s).steps for s in STAGES},
                                      "init_autoencoder": cfg.init_autoencoder, "init_world": cfg.init_world})
                summary["bundle"] = str(run / "world")
    finally:
        logger.close()
    return _finish_run(run, summary, d, t0)


# ---------------------------------------------------------------------------
# the baseline: a DIAMOND-style frame-stacking U-Net on pixel windows
# ---------------------------------------------------------------------------
class PixelWindows:
    """Windows of k consecutive frames of some episodes with the actions that led to them:
    frames[s : s+k] with actions[s-1 : s+k-1] (a dataset's ``actions[t]`` follows
    ``frames[t]``), so ``actions[:, i]`` led to ``frames[:, i]``. Frames come through
    ``FrameSource`` (in memory when they fit); actions are small and always loaded."""

    def __init__(self, ds: Dataset, episodes: list[int], frames: int):
        self.k = frames
        self.episodes = [e for e in episodes if ds.lengths[e] >= frames + 1]
        if not self.episodes:
            raise TrainingError(f"no episode has the {frames + 1} frames a baseline window needs: record longer episodes")
        self.source = FrameSource(ds, self.episodes)
        self.actions = {e: torch.from_numpy(ds.spec.normalize(ds.episode(e)["actions"][:])) for e in self.episodes}  # (T, A)
        self.cum = np.cumsum([ds.lengths[e] - frames for e in self.episodes])  # starts s = 1 .. T-k per episode

    def batch(self, rng: np.random.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(frames (n, k, 3, H, W) in [-1, 1], actions (n, k, A) normalised)."""
        frames, actions = [], []
        for i in rng.integers(0, int(self.cum[-1]), size=n):
            j = int(np.searchsorted(self.cum, i, side="right"))
            e = self.episodes[j]
            s = 1 + int(i - (self.cum[j - 1] if j else 0))
            frames.append(np.stack([self.source.frame(e, t) for t in range(s, s + self.k)]))
            actions.append(self.actions[e][s - 1 : s - 1 + self.k])
        return frames_to_tensor(np.stack(frames)), torch.stack(actions)


def train_baseline(data: str | os.PathLike, out: str | os.PathLike, cfg: TrainConfig, *, resume: bool = False,
                   progress: bool = True) -> dict[str, Any]:
    """Train the frame-stacking U-Net (model/unet.py) on the dataset; its bundle lands in
    ``out/world`` and plays through ``WorldSession`` as a world does.

    Same budget as our world's dynamics: the preset's dynamics steps, global batch and
    learning-rate schedule (``--dynamics-steps`` / ``--dynamics-batch`` set both). A
    dynamics sample is a clip of ``clip_frames`` latents; a baseline sample is one window
    of n + 1 frames in pixels (one target). The same loop (``_run_stage``): resume, EMA,
    checkpoints, metrics, torchrun. Our world also spent its autoencoder stage; the
    baseline needs none."""
    from neuralworld.model.unet import MODEL_KIND, PixelCodec, baseline_loss, baseline_preset, count_parameters

    run = Path(out)
    d = setup_distributed(cfg.device)
    ds = open_training_data(data)
    try:
        world = baseline_preset(cfg.preset, spec=ds.spec, resolution=ds.resolution).validate()
    except ConfigError as e:
        raise TrainingError(f"baseline preset {cfg.preset!r} does not fit {data}: {e}") from None
    record = {"data": str(data), "model": MODEL_KIND, "action_spec": ds.spec.to_json_dict(),
              "resolution": list(ds.resolution), "world": world.to_dict(), "train": cfg.to_dict(), "world_size": d.world_size}
    _start_run(run, record, resume, d)
    split = ds.split(cfg.held_out)
    logger = Logger(run, d.main)
    t0 = time.perf_counter()
    n = world.dynamics.context_frames
    torch.manual_seed(cfg.seed + 1)
    _, unet = build_networks(world)
    summary: dict[str, Any] = {"run": str(run), "model": MODEL_KIND, "world_size": d.world_size, "device": str(d.device),
                               "train_episodes": len(split[0]), "held_out_episodes": len(split[1]),
                               "parameters": count_parameters(unet)}
    try:
        windows = PixelWindows(ds, split[0], n + 1)
        held_frames, held_actions = PixelWindows(ds, split[1] or split[0], n + 1).batch(np.random.default_rng(4321), 16)

        def loss_fn(net: torch.nn.Module, rng: np.random.Generator, micro: int) -> tuple[torch.Tensor, dict[str, float]]:
            frames, actions = windows.batch(rng, micro)  # (micro, n+1, 3, H, W), (micro, n+1, A)
            return baseline_loss(net, frames.to(d.device), actions.to(d.device))

        def validate(m: torch.nn.Module, step: int) -> None:
            frames, actions = held_frames.to(d.device), held_actions.to(d.device)
            with torch.no_grad():
                torch.manual_seed(99)
                _, metrics = baseline_loss(m, frames, actions)
                # teacher-forced next frame: n clean real frames, the last generated from noise
                past = frames[:, :-1]
                gen = sample_euler(lambda x, t: m(x, t, past, actions), torch.randn_like(frames[:, -1]), 8)
            fake, real, prev = (tensor_to_frames(x.clamp(-1, 1)) for x in (gen, frames[:, -1], frames[:, -2]))
            B = len(real)
            logger.scalars("baseline", step, {
                "loss": metrics["loss"], "next_frame_psnr": float(np.mean([_psnr(fake[i], real[i]) for i in range(B)])),
                "copy_last_psnr": float(np.mean([_psnr(prev[i], real[i]) for i in range(B)])),
            }, kind="held_out")
            grid = np.concatenate([np.concatenate(list(real[:8]), 1), np.concatenate(list(fake[:8]), 1)], 0)
            logger.image("baseline/real_vs_generated", step, grid)

        unet = _run_stage(stage="baseline", module=unet, cfg=cfg, stage_cfg=cfg.dynamics, d=d, run=run, logger=logger,
                          loss_fn=loss_fn, validate=validate, progress=progress)
        if d.main:
            start_frames, start_actions = _start_context(ds, split, world.dynamics.memory_frames)
            save_bundle(run / "world", world, PixelCodec(), unet, name=run.name, start_frames=start_frames,
                        start_actions=start_actions,
                        training={"data": str(data), "model": MODEL_KIND, "preset": cfg.preset, "held_out": cfg.held_out,
                                  "steps": {"baseline": cfg.dynamics.steps}, "batch_size": cfg.dynamics.batch_size})
            summary["bundle"] = str(run / "world")
    finally:
        logger.close()
    return _finish_run(run, summary, d, t0)

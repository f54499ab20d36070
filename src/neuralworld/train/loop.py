"""The one training loop: processes, precision, EMA, checkpoints, the logger, ``run_stage``.

Exact resume without saving a data loader: the global batch of step s is drawn
from an RNG seeded by (seed, stage, s), split into ``world_size * grad_accum``
micro-batches; micro-batch j also seeds the noise the objective draws. So a run
resumed at step s sees the same data and noise as one that never stopped, and N
processes compute what one process with ``grad_accum = N`` computes.
"""

from __future__ import annotations

import copy
import functools
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

from neuralworld.bundle import BundleError, World, load_bundle, load_state_strict
from neuralworld.state_io import StateError, flatten_state, load_tensors, save_tensors, unflatten_state
from neuralworld.train.config import PRECISIONS, StageConfig, TrainConfig, TrainingError

LossFn = Callable[[torch.nn.Module, np.random.Generator, int], tuple[torch.Tensor, dict[str, float]]]
"""``loss_fn(net, rng, n)``: the loss and metrics of a micro-batch of n samples drawn with ``rng``."""
ValidateFn = Callable[[torch.nn.Module, int], None]
"""``validate(net, step)``: held-out measures of the EMA network, logged."""


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
    if precision not in PRECISIONS:
        raise TrainingError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    use_bf16 = precision == "bf16" or (
        precision == "auto" and (device.type == "cuda" and torch.cuda.is_bf16_supported() or device.type == "cpu" and _cpu_has_bf16())
    )
    if not use_bf16:
        return nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


# ---------------------------------------------------------------------------
# seeds: deterministic by step
# ---------------------------------------------------------------------------
_SEED_ORDER = ("autoencoder", "dynamics", "distill", "baseline", "rollout", "warp", "field", "vae", "rnn")
"""Stages in the order their numbers enter the RNG seeds (fixed: a new stage goes last, so
older runs resume with the same data)."""


def _stage_index(stage: str) -> int:
    """A stage's number in the RNG seeds."""
    return _SEED_ORDER.index(stage)


def _rng(seed: int, stage: str, step: int) -> np.random.Generator:
    return np.random.default_rng([seed, _stage_index(stage) + 1, step])


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


Companions = dict[str, tuple[torch.nn.Module, torch.optim.Optimizer]]
"""Networks trained beside a stage's own, each with its optimizer (the warp world's critic),
kept in the same checkpoint under their name."""


def save_checkpoint(path: Path, module: torch.nn.Module, ema: EMA, opt: torch.optim.Optimizer, step: int, extra: dict[str, Any],
                    companions: Companions | None = None, state: dict[str, torch.Tensor] | None = None) -> None:
    """``state``: more tensors of the run (not a module's), handed back by ``load_checkpoint`` as meta["state"]."""
    tensors = {f"model.{k}": v for k, v in module.state_dict().items()}
    tensors.update({f"state.{k}": v.contiguous() for k, v in (state or {}).items()})
    tensors.update({f"ema.{k}": v for k, v in ema.shadow.items()})
    opt_tensors, opt_skeleton = flatten_state(opt.state_dict(), "opt")
    tensors.update(opt_tensors)
    skeletons = {}
    for name, (other, other_opt) in (companions or {}).items():
        tensors.update({f"{name}.{k}": v for k, v in other.state_dict().items()})
        other_tensors, skeletons[name] = flatten_state(other_opt.state_dict(), f"opt_{name}")
        tensors.update(other_tensors)
    companion_meta = {"companion_optimizers": skeletons} if skeletons else {}
    save_tensors(path, tensors, {"step": step, "optimizer": opt_skeleton, "torch_rng": torch.get_rng_state().tolist(),
                                 **companion_meta, **extra})


def load_checkpoint(path: Path, module: torch.nn.Module, ema: EMA, opt: torch.optim.Optimizer | None,
                    companions: Companions | None = None) -> dict[str, Any]:
    try:
        tensors, meta = load_tensors(path, what="training checkpoint")
    except StateError as e:
        raise TrainingError(f"{e}; delete it to restart that stage") from None
    try:
        load_state_strict(module, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, str(path))
        for k in ema.shadow:
            ema.shadow[k] = tensors[f"ema.{k}"].float().to(ema.shadow[k].device)
        if opt is not None:
            opt.load_state_dict(unflatten_state(tensors, meta["optimizer"]))
        for name, (other, other_opt) in (companions or {}).items():
            n = len(name) + 1
            load_state_strict(other, {k[n:]: v for k, v in tensors.items() if k.startswith(f"{name}.")}, str(path))
            other_opt.load_state_dict(unflatten_state(tensors, meta["companion_optimizers"][name]))
    except (BundleError, KeyError, StateError, ValueError) as e:
        raise TrainingError(f"training checkpoint {path} does not fit this run ({e})") from None
    meta["state"] = {k[6:]: v for k, v in tensors.items() if k.startswith("state.")}
    return meta


# ---------------------------------------------------------------------------
# a stage that starts from another world's network
# ---------------------------------------------------------------------------
def world_to_start_from(source: str, flag: str) -> World:
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


def start_from(run: Path, stage: str, module: torch.nn.Module, given: Callable[[], torch.nn.Module | None],
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


# ---------------------------------------------------------------------------
# the logger and what every stage is given
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

    def images(self, tag: str, step: int, rows: list[np.ndarray]) -> None:
        """A grid: each of ``rows`` (n, H, W, 3) uint8 side by side, one row under the other."""
        self.image(tag, step, np.concatenate([np.concatenate(list(r), 1) for r in rows], 0))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


@dataclass
class RunFolder:
    """Where a stage keeps its checkpoint (``path / "<stage>.safetensors"``) and logs."""

    path: Path
    logger: Logger
    progress: bool = True
    """A progress bar (rank 0)."""


def mean_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of each frame pair of (n, H, W, 3) uint8, averaged: validation's measure."""
    return float(np.mean([_psnr(a[i], b[i]) for i in range(len(a))]))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * math.log10(255.0**2 / max(mse, 1e-10))


# ---------------------------------------------------------------------------
# the loop every stage runs
# ---------------------------------------------------------------------------
def run_stage(*, stage: str, module: torch.nn.Module, cfg: TrainConfig, stage_cfg: StageConfig, d: Dist, run: RunFolder,
              loss_fn: LossFn, validate: ValidateFn) -> torch.nn.Module:
    """Train ``module`` for the stage's steps, resuming from its checkpoint if there is one.
    ``loss_fn(module, rng, micro_batch)`` returns the loss of a micro-batch drawn with
    ``rng``. Returns the module holding its EMA weights."""
    ckpt = run.path / f"{stage}.safetensors"
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
    if run.progress and d.main:
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
            run.logger.scalars(stage, step, metrics_sum)
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
            validate(_ema_copy(module, ema), step)
            module.train()
    if bar is not None:
        bar.close()
    _check_ranks_agree(module, d, stage)
    ema.copy_to(module)
    module.eval()
    return module


class _Objective(torch.nn.Module):
    """A network and its loss as one module, so DDP's forward runs the loss."""

    def __init__(self, net: torch.nn.Module, loss_fn: LossFn):
        super().__init__()
        self.net = net
        self.loss_fn = loss_fn

    def forward(self, rng: np.random.Generator, n: int) -> tuple[torch.Tensor, dict[str, float]]:
        return self.loss_fn(self.net, rng, n)


def _ema_copy(module: torch.nn.Module, ema: EMA) -> torch.nn.Module:
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

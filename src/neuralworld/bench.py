"""``neuralworld bench``: how fast a world plays, per execution path and batch size.

For each path (``backends.PATHS``: eager fp32, bf16 autocast, torch.compile, ONNX
Runtime) and batch size, a ``WorldSession`` is stepped with random actions and
the full ``step`` is timed (sampler calls + append + decode + uint8 frames):
frames/s, action-to-frame latency (mean, p50, p95), and a breakdown per call
(dynamics step, append, decode) taken by wrapping the session's backend. FLOPs
per frame are counted once per batch size with ``FlopCounterMode`` over one
eager step (matmuls, convolutions, attention; the same for every path).

The figures are printed as a table; the last line printed is JSON, with
``"fastest"``: the path with the most frames/s at batch 1, which a player can
hand to ``WorldSession(..., backend=...)`` (and ``"fastest_exact"``, the fastest
of those that compute the reference float32 function). Nothing here asserts on time (a
shared machine's timings vary).
"""

from __future__ import annotations

import os
import platform
import time
from typing import Any, Callable, Sequence

# OpenMP threads that sleep instead of spinning between parallel regions: on a shared
# 2-core machine spinning threads starve each other and every other process (3-5x
# slower under load: docs/experiments.md). Only takes effect if torch is not yet
# loaded; set OMP_WAIT_POLICY yourself to override. ONNX Runtime's spinning is off too.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from neuralworld.backends import EXACT_PATHS, PATHS  # noqa: E402


class _TimedBackend:
    """Wraps a backend and adds up the wall time of each kind of call."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.totals = {"step": 0.0, "append": 0.0, "decode": 0.0}
        self.calls = {"step": 0, "append": 0, "decode": 0}

    def new_cache(self, *a: Any, **kw: Any) -> Any:
        return self.inner.new_cache(*a, **kw)

    def _timed(self, kind: str, fn: Callable, *args: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(*args)
        self.totals[kind] += time.perf_counter() - t0
        self.calls[kind] += 1
        return out

    def step(self, *args: Any) -> Any:
        return self._timed("step", self.inner.step, *args)

    def append(self, *args: Any) -> Any:
        return self._timed("append", self.inner.append, *args)

    def decode(self, *args: Any) -> Any:
        return self._timed("decode", self.inner.decode, *args)

    def reset_counts(self) -> None:
        self.totals = dict.fromkeys(self.totals, 0.0)
        self.calls = dict.fromkeys(self.calls, 0)


def count_parameters(world: Any) -> dict[str, int]:
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {
        "dynamics": n(world.dynamics),
        "decoder": n(world.autoencoder.decoder),
        "encoder": n(world.autoencoder.encoder),
    }


def _attention_flops() -> dict[Any, Callable]:
    """FlopCounterMode counts fused attention only on GPU kernels; on the CPU (and under
    inference mode) ``scaled_dot_product_attention`` reaches it undecomposed: count it
    as its two matmuls."""
    from torch.utils.flop_counter import sdpa_flop_count

    def sdpa(query, key, value, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return sdpa_flop_count(query, key, value)

    ops = [torch.ops.aten.scaled_dot_product_attention]
    if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
        ops.append(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
    return dict.fromkeys(ops, sdpa)


def flops_per_step(world: Any, batch_size: int, sampler: str) -> dict[str, int]:
    """FLOPs of one full ``WorldSession.step`` (eager fp32) at ``batch_size``: total and per frame."""
    from torch.utils.flop_counter import FlopCounterMode

    from neuralworld.session import WorldSession

    session = WorldSession(world, sampler=sampler, batch_size=batch_size, seed=0)
    action = world.spec.noop()
    with FlopCounterMode(display=False, custom_mapping=_attention_flops()) as counter:
        session.step(action)
    total = int(counter.get_total_flops())
    return {"flops_per_step": total, "flops_per_frame": total // batch_size}


def bench_path(
    world: Any, path: str, batch_size: int, *, frames: int, warmup: int, sampler: str, seed: int = 0
) -> dict[str, Any]:
    """Time ``frames`` steps of one session on ``path`` at ``batch_size``."""
    from neuralworld.session import WorldSession

    t0 = time.perf_counter()
    session = WorldSession(world, sampler=sampler, batch_size=batch_size, seed=seed, backend=path)
    timed = _TimedBackend(session.backend)
    session.backend = timed
    setup_s = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    spec = world.spec

    def random_action() -> np.ndarray:
        """(B, A): buttons pressed at random, axes uniform in their ranges."""
        a = np.zeros((batch_size, spec.size), np.float32)
        nb = len(spec.buttons)
        a[:, :nb] = rng.random((batch_size, nb)) < 0.3
        for i, ax in enumerate(spec.axes):
            a[:, nb + i] = rng.uniform(ax.low, ax.high, batch_size)
        return a if batch_size > 1 else a[0]

    t0 = time.perf_counter()
    for _ in range(warmup):  # also fills memory, and lets a compiled path compile
        session.step(random_action())
    warmup_s = time.perf_counter() - t0
    timed.reset_counts()
    latencies = []
    actions = [random_action() for _ in range(frames)]
    t_start = time.perf_counter()
    for a in actions:
        t0 = time.perf_counter()
        session.step(a)
        latencies.append((time.perf_counter() - t0) * 1e3)
    wall = time.perf_counter() - t_start
    lat = np.asarray(latencies)
    per_frame = lambda kind: timed.totals[kind] * 1e3 / frames  # noqa: E731  ms per session.step
    per_call = lambda kind: timed.totals[kind] * 1e3 / max(timed.calls[kind], 1)  # noqa: E731
    breakdown = {k: round(per_frame(k), 3) for k in timed.totals}
    breakdown["other"] = round(float(lat.mean()) - sum(breakdown.values()), 3)
    return {
        "path": path,
        "batch": batch_size,
        "steps": frames,
        "fps": round(frames * batch_size / wall, 2),  # frames generated per second, all batch elements
        "steps_per_s": round(frames / wall, 2),
        "latency_ms": {
            "mean": round(float(lat.mean()), 3),
            "p50": round(float(np.percentile(lat, 50)), 3),
            "p95": round(float(np.percentile(lat, 95)), 3),
            "min": round(float(lat.min()), 3),  # on a shared machine, the steadiest estimate of the cost
        },
        "breakdown_ms_per_step": breakdown,  # step: all sampler calls of one session.step together
        "ms_per_call": {k: round(per_call(k), 3) for k in timed.totals},
        "calls_per_step": {k: timed.calls[k] / frames for k in timed.calls},
        "setup_s": round(setup_s, 2),
        "warmup_s": round(warmup_s, 2),
    }


def run_bench(
    world_path: str | os.PathLike | Any,
    *,
    threads: int = 2,
    batches: Sequence[int] = (1, 8),
    frames: int = 50,
    warmup: int = 10,
    sampler: str = "fast",
    paths: Sequence[str] = PATHS,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Benchmark every path at every batch size; returns the results (see module doc)."""
    from neuralworld.bundle import load_bundle

    unknown = [p for p in paths if p not in PATHS]
    if unknown:
        raise ValueError(f"unknown paths {unknown}; choose from {list(PATHS)}")
    torch.set_num_threads(threads)
    load_before = round(os.getloadavg()[0], 2)
    world = load_bundle(world_path) if isinstance(world_path, (str, os.PathLike)) else world_path
    results: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    flops = {}
    for batch in batches:
        flops[batch] = flops_per_step(world, batch, sampler)
        for path in paths:
            if path in skipped:
                continue
            log(f"bench: {path} batch {batch} ...")
            try:
                r = bench_path(world, path, batch, frames=frames, warmup=warmup, sampler=sampler)
            except Exception as e:  # a path that cannot run here (no compiler, no onnxruntime) is reported, not fatal
                skipped[path] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                log(f"bench: {path} skipped ({skipped[path]})")
                continue
            r.update(flops[batch])
            r["gflops_per_s"] = round(r["flops_per_frame"] * r["fps"] / 1e9, 2)
            results.append(r)
    batch1 = [r for r in results if r["batch"] == min(batches)]
    fastest = max(batch1, key=lambda r: r["fps"])["path"] if batch1 else None
    exact = [r for r in batch1 if r["path"] in EXACT_PATHS]
    fastest_exact = max(exact, key=lambda r: r["fps"])["path"] if exact else None
    res = tuple(world.config.resolution)
    summary = {
        "world": getattr(world, "name", ""),
        "resolution": list(res),
        "sampler": sampler,
        "threads": threads,
        "frames": frames,
        "params": count_parameters(world),
        "flops_per_frame": {str(b): f["flops_per_frame"] for b, f in flops.items()},
        "results": results,
        "skipped": skipped,
        "fastest": fastest,
        "fastest_fps_batch1": max((r["fps"] for r in batch1), default=None),
        # the fastest path that computes the reference float32 function (bf16 and int8 approximate it)
        "fastest_exact": fastest_exact,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        # other work on the machine while it ran (1-minute load average, before and after)
        "load_average": [load_before, round(os.getloadavg()[0], 2)],
    }
    return summary


def format_table(summary: dict[str, Any]) -> str:
    """The results as a fixed-width table a person can read."""
    head = (f"{'path':<9} {'batch':>5} {'fps':>8} {'mean ms':>8} {'p50 ms':>8} {'p95 ms':>8} {'min ms':>8} "
            f"{'dyn ms':>8} {'app ms':>8} {'dec ms':>8} {'GFLOP/f':>8}")
    lines = [
        f"world {summary['world']!r} {summary['resolution'][0]}x{summary['resolution'][1]}, sampler {summary['sampler']}, "
        f"{summary['threads']} threads, {summary['frames']} steps timed; params {summary['params']}",
        head,
        "-" * len(head),
    ]
    for r in summary["results"]:
        b, lat = r["breakdown_ms_per_step"], r["latency_ms"]
        lines.append(
            f"{r['path']:<9} {r['batch']:>5} {r['fps']:>8.1f} {lat['mean']:>8.2f} {lat['p50']:>8.2f} {lat['p95']:>8.2f} {lat['min']:>8.2f} "
            f"{b['step']:>8.2f} {b['append']:>8.2f} {b['decode']:>8.2f} {r['flops_per_frame'] / 1e9:>8.3f}"
        )
    for path, why in summary["skipped"].items():
        lines.append(f"{path:<9} skipped: {why}")
    lines.append(f"fastest at batch 1: {summary['fastest']} ({summary['fastest_fps_batch1']} frames/s); "
                 f"fastest float32-exact: {summary['fastest_exact']}")
    lines.append("(dyn ms: all sampler calls of one step; fps counts every batch element's frame; "
                 f"load average {summary['load_average']} on {summary['cpu_count']} cores)")
    return "\n".join(lines)

"""The report's pictures: matplotlib plots (Agg, no display needed) and frame strips.

Each function draws one picture from figures the suite measured and writes it
as a PNG (atomically); it returns the path written.

``plot_psnr``          open-loop PSNR per step, each world beside copy-last
``plot_stability``     per-frame statistics over a long rollout, the real band shaded
``plot_turn``          commanded vs measured turn per rate, one panel per measure
``save_strip``         snapshots along a rollout, one row per drive
``save_memory_strip``  left | turned 180° | back at 360° (| walked away | back)
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from neuralworld.eval.inputs import EvalError
from neuralworld.eval.stability import RealBand
from neuralworld.state_io import atomic_write_bytes


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _savefig(fig: Any, path: Path) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return str(path)


def plot_psnr(fidelity: dict[str, Any], path: Path) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    copy = None
    for name, r in fidelity.items():
        curve = r["rollout"]["psnr_curve"]
        ax.plot(np.arange(1, len(curve) + 1), curve, label=name)
        copy = copy or r["rollout"]["copy_last_psnr_curve"]
    if copy:
        ax.plot(np.arange(1, len(copy) + 1), copy, "k--", label="copy last frame")
    ax.set_xscale("log")
    ax.set_xlabel("open-loop step (recorded actions)")
    ax.set_ylabel("PSNR vs real (dB)")
    ax.set_title("open-loop PSNR vs horizon (held-out episodes)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _savefig(fig, path)


def plot_stability(traces: dict[str, np.ndarray], names: list[str], band: RealBand, r: dict[str, Any], path: Path, title: str) -> str:
    plt = _plt()
    rows = [("sharpness", "sharpness (var. of Laplacian)"), ("mean_g", "mean green"), ("std_g", "std green"), ("change", "change per frame (grey levels)")]
    fig, axes = plt.subplots(len(rows) + 1, 1, figsize=(9, 2.0 * (len(rows) + 1)), sharex=True)
    N = traces["sharpness"].shape[1]
    smooth = max(1, N // 400)
    x = np.arange(N)
    for ax, (key, label) in zip(axes, rows):
        if key in band.low:
            ax.axhspan(band.low[key], band.high[key], color="tab:green", alpha=0.15, label="real 1-99%")
        for b, n in enumerate(names):
            y = traces[key][b]
            if smooth > 1:
                y = np.convolve(y, np.ones(smooth) / smooth, mode="same")
            ax.plot(x, y, lw=0.8, label=n)
        if key == "sharpness":
            ax.set_yscale("log")  # blur sits orders of magnitude below real frames
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="upper right")
    ax = axes[-1]
    w = band.window
    for n in names:
        fd = r["drives"][n]["window_frechet"]
        ax.plot(np.arange(len(fd)) * w + w / 2, fd, lw=0.8, label=n)
    ax.axhspan(0, band.frechet_high, color="tab:green", alpha=0.15)
    ax.set_ylabel(f"feature Fréchet\n(per {w} frames)", fontsize=8)
    ax.set_xlabel("frame")
    ax.grid(alpha=0.3)
    for n in names:
        c = r["drives"][n]["collapse_frame"]
        if c is not None:
            for a in axes:
                a.axvline(c, color="red", lw=0.8, ls=":")
    fig.suptitle(f"stability of {title}: {N} frames (green: the real data's band; red: collapse)", fontsize=10)
    return _savefig(fig, path)


def plot_turn(right: np.ndarray, measured: dict[str, np.ndarray], rates: list[float], path: Path, title: str) -> str:
    """One panel per measure (control.MEASURES): commanded (dashed) and measured turn per rate."""
    plt = _plt()
    fig, axes = plt.subplots(len(measured), 1, figsize=(8, 3.2 * len(measured)), sharex=True, squeeze=False)
    for ax, (measure, per_rate) in zip(axes[:, 0], measured.items()):
        for k, rt in enumerate(rates):
            line = ax.plot(right[k], "--", lw=1)[0]
            ax.plot(per_rate[k], color=line.get_color(), lw=1.2, label=f"rate {rt:g}: measured")
        lim = 2.5 * max(rates)
        ax.set_ylim(-lim, lim)  # odometry's rare wild jumps would hide the rest
        ax.set_ylabel("deg/frame to the right")
        ax.set_title(f"{title}: commanded (dashed) vs measured by {measure.replace('_', ' ')}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[-1, 0].set_xlabel("step (still, then right, then left)")
    return _savefig(fig, path)


def _upscale(frames: np.ndarray, target: int = 128) -> np.ndarray:
    s = max(1, target // frames.shape[-2])
    return np.stack([cv2.resize(f, (f.shape[1] * s, f.shape[0] * s), interpolation=cv2.INTER_NEAREST) for f in frames])


def _grid(rows: list[np.ndarray], gap: int = 2) -> np.ndarray:
    """rows: list of (n, h, w, 3) -> one image, rows stacked, frames side by side."""
    lines = []
    for row in rows:
        n, h, w = row.shape[:3]
        line = np.full((h, n * w + (n - 1) * gap, 3), 255, np.uint8)
        for i in range(n):
            line[:, i * (w + gap) : i * (w + gap) + w] = row[i]
        lines.append(line)
    width = max(line.shape[1] for line in lines)
    lines = [np.pad(line, ((0, gap), (0, width - line.shape[1]), (0, 0)), constant_values=255) for line in lines]
    return np.concatenate(lines)


def _write_png(img: np.ndarray, path: Path) -> str:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    if not ok:
        raise EvalError(f"could not encode {path}")
    atomic_write_bytes(path, buf.tobytes())
    return str(path)


def save_strip(snaps: np.ndarray, names: list[str], steps: list[int], path: Path) -> str:
    """Snapshots (B, S, H, W, 3): one row per drive."""
    return _write_png(_grid([_upscale(s) for s in snaps]), path)


def save_memory_strip(left: np.ndarray, turn: np.ndarray | None, walk: np.ndarray | None, path: Path, rows: int = 4) -> str:
    """Per start: left | turned 180 | back at 360 || farthest | back from the walk."""
    out = []
    for b in range(min(rows, len(left))):
        cells = [left[b]]
        if turn is not None:
            cells += [turn[b, turn.shape[1] // 2 - 1], turn[b, -1]]
        if walk is not None:
            cells += [walk[b, walk.shape[1] // 2 - 1], walk[b, -1]]
        out.append(_upscale(np.stack(cells)))
    return _write_png(_grid(out), path)

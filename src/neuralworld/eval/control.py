"""Control, measured in pixels: does the view turn the way, and as far as, it was told?

The yaw between consecutive generated frames is measured two ways and set beside the
commanded turn:

* **odometry**: the project's own visual odometry (``record.odometry.VisualOdometry``,
  verified on ViZDoom against the engine's true heading, benchmarks/vo_vizdoom.py):
  features tracked between frames, a rotation fitted. Exact on sharp frames; on blurry
  generated frames it finds too few features and reads ~0;
* **image shift**: how far the whole picture slides sideways (``image_shifts``: the
  shift that best matches one frame to the next, to a tenth of a pixel), turned into
  degrees through the field of view. Coarser, but it still reads a soft picture's slide.

Each measure is applied to:

* **scripted turns**: from real held-out context, stand still, then hold a right
  turn for ``hold`` frames and a left turn for ``hold`` frames, at a few rates;
* **recorded actions**: open-loop rollouts driven by the recorded actions (the
  IDM's rollouts), and — the reference — the same windows' *real* frames, since
  neither measure is exact on small frames (its slope on real frames is what a
  perfect world would score).

Figures per set: correlation of measured and commanded turn per frame, sign
agreement where the command turns more than ``sign_threshold`` deg/frame, and
the slope measured / commanded (least squares through 0: 1 = right size, 0 =
the view doesn't turn; ``median_ratio`` is the outlier-proof version: odometry on
blurry generated frames sometimes jumps by tens of degrees). Everything is "degrees to the right per frame";
ViZDoom's ``turn`` is positive right, a camera world's ``yaw`` positive left
(record/motion.py), which ``TurnAxis.right`` accounts for.

Small frames are upscaled before odometry (corners and Lucas-Kanade need more
than 32 or 64 pixels to work with); the field of view is unchanged by scaling.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from neuralworld.data.store import Dataset
from neuralworld.eval.inputs import TurnAxis
from neuralworld.record.odometry import VisualOdometry

VO_WIDTH = 256
"""Frames are upscaled to at least this width before odometry."""
DEFAULT_HFOV = 90.0  # ViZDoom's horizontal field of view (benchmarks/vo_vizdoom.py)


def dataset_hfov(ds: Dataset) -> float:
    """The horizontal field of view the frames were made with: an imported video's
    episodes record it (``hfov_deg``); ViZDoom renders at 90 degrees."""
    try:
        attrs = ds.episode(0).attrs
    except Exception:
        return DEFAULT_HFOV
    for key in ("hfov_deg", "hfov"):
        if key in attrs:
            return float(attrs[key])
        motion = attrs.get("motion") if isinstance(attrs.get("motion"), dict) else None
        if motion and key in motion:
            return float(motion[key])
    return DEFAULT_HFOV


def measure_turn(frames: np.ndarray, hfov: float = DEFAULT_HFOV) -> tuple[np.ndarray, np.ndarray]:
    """Frames (T, H, W, 3) -> (yaw to the right per pair (T-1,), reliable (T-1,) bool)."""
    T, H, W = frames.shape[:3]
    scale = max(1, int(np.ceil(VO_WIDTH / W)))
    vo = VisualOdometry(hfov, seed=0)
    yaw, ok = np.zeros(max(T - 1, 0)), np.zeros(max(T - 1, 0), bool)
    for t in range(T):
        img = cv2.resize(np.ascontiguousarray(frames[t]), (W * scale, H * scale), interpolation=cv2.INTER_LINEAR)
        pm = vo.step(img)
        if t and pm is not None:
            yaw[t - 1] = -float(pm.rotation[0])  # odometry's yaw is positive left
            ok[t - 1] = pm.reliable
    return yaw, ok


def image_shifts(frames, max_shift: int | None = None) -> np.ndarray:
    """Horizontal slide (px, + = the picture moves right) between consecutive RGB frames:
    the shift of each frame that best matches the one before (least mean absolute
    difference over the overlap, searched to ``max_shift``, default a sixth of the width),
    refined between whole pixels by a parabola through the best three. Blur does not fool
    it as it does phase correlation, which whitens the spectrum and locks onto noise."""
    gray = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY).astype(np.float32) for f in frames]
    if not gray:
        return np.zeros(0)
    W = gray[0].shape[1]
    n = max(1, W // 6 if max_shift is None else max_shift)
    out = []
    for a, b in zip(gray, gray[1:]):
        cost = np.array([np.abs(b[:, s:] - a[:, : W - s]).mean() if s >= 0 else np.abs(b[:, : W + s] - a[:, -s:]).mean()
                         for s in range(-n, n + 1)])  # fmt: skip
        i = int(np.argmin(cost))
        frac = 0.0
        if 0 < i < 2 * n:
            curve = cost[i - 1] - 2 * cost[i] + cost[i + 1]
            frac = 0.5 * (cost[i - 1] - cost[i + 1]) / curve if curve > 0 else 0.0
        out.append(i - n + frac)
    return np.array(out, np.float64)


def measure_shift(frames: np.ndarray, hfov: float = DEFAULT_HFOV) -> tuple[np.ndarray, np.ndarray]:
    """Frames (T, H, W, 3) -> (yaw to the right per pair (T-1,), reliable (T-1,) bool), from
    ``image_shifts``: turning right slides the picture left, by f tan(yaw) at the centre."""
    W = frames.shape[2]
    focal = (W / 2) / np.tan(np.radians(hfov) / 2)
    yaw = -np.degrees(np.arctan(image_shifts(frames) / focal))
    return yaw, np.ones(len(yaw), bool)


MEASURES = {"odometry": measure_turn, "image_shift": measure_shift}
"""How a turn is read off frames (see the module doc)."""


def agreement(commanded: np.ndarray, measured: np.ndarray, *, sign_threshold: float = 2.0) -> dict[str, Any]:
    """Commanded vs measured turn (N,), both deg/frame to the right."""
    c, m = np.asarray(commanded, np.float64).ravel(), np.asarray(measured, np.float64).ravel()
    turning = np.abs(c) > sign_threshold
    corr = float(np.corrcoef(c, m)[0, 1]) if len(c) > 2 and c.std() > 0 and m.std() > 0 else None
    denom = float((c * c).sum())
    return {
        "pairs": int(len(c)),
        "corr": None if corr is None else round(corr, 4),
        "sign_agreement": round(float((np.sign(m[turning]) == np.sign(c[turning])).mean()), 4) if turning.any() else None,
        "slope": round(float((c * m).sum() / denom), 4) if denom > 0 else None,
        # robust to odometry's outliers on blurry frames: the median of measured / commanded where turning
        "median_ratio": round(float(np.median(m[turning] / c[turning])), 4) if turning.any() else None,
        "turning_pairs": int(turning.sum()),
        "mean_abs_measured": round(float(np.abs(m).mean()), 3) if len(m) else None,
    }


def scripted_turn_actions(spec: Any, axis: TurnAxis, rates: list[float], hold: int = 30, still: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Per rate a sequence: ``still`` no-ops, ``hold`` frames turning right, ``hold`` left.
    Returns (actions (R, still + 2 hold, A) in spec units, commanded right-turn (R, T))."""
    seqs, right = [], []
    for r in rates:
        per = np.concatenate([np.zeros(still), np.full(hold, r), np.full(hold, -r)])  # deg/frame to the right
        acts = np.repeat(spec.noop()[None], len(per), 0)
        acts[:, axis.index] = per * axis.right  # into the axis' own sign
        seqs.append(acts)
        right.append(per)
    return np.stack(seqs).astype(np.float32), np.stack(right)


def turn_rates(axis: TurnAxis) -> list[float]:
    """A third, two thirds and all of the axis' rate."""
    return [round(axis.rate * k / 3, 3) for k in (1, 2, 3)]


def measure_sequences(start: np.ndarray, frames: np.ndarray, right: np.ndarray, hfov: float,
                      measure: str = "odometry") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """start (B, H, W, 3) the frame before; frames (B, T, ...); right (B, T) commanded;
    ``measure`` one of ``MEASURES``. Returns (commanded (B*T,), measured (B*T,), reliable (B*T,))."""
    c, m, ok = [], [], []
    for b in range(len(frames)):
        seq = np.concatenate([start[b : b + 1], frames[b]])  # (T + 1, H, W, 3)
        yaw, rel = MEASURES[measure](seq, hfov)
        c.append(right[b])
        m.append(yaw)
        ok.append(rel)
    return np.concatenate(c), np.concatenate(m), np.concatenate(ok)


def commanded_right(actions: np.ndarray, axis: TurnAxis) -> np.ndarray:
    """(..., A) -> (...,) commanded turn in degrees to the right per frame."""
    return actions[..., axis.index] * axis.right

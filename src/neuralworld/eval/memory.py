"""Memory: turn away and come back — is the view you return to the one you left?

Two round trips from real held-out context, run as one batched session each:

* **turn 360°** with the world's turning axis at its full rate (ViZDoom: 15
  deg/frame, 24 frames); camera worlds use ``yaw``;
* **walk forward N frames, then back N**.

The returning frame is compared with the last context frame (PSNR, SSIM). Alone
that number means little, so beside it:

* **real returns**: pairs of real frames from the same episode where the player
  stood at the same place facing the same way (stored poses: position within
  ``pos_tol`` map units, heading within ``angle_tol`` degrees) at least
  ``min_gap`` frames apart — what a perfect memory would score, weapon bob and
  all;
* **random pairs**: two real frames from different episodes — what no memory
  at all scores;
* **turned away**: the generated frame half-way through the turn (180°)
  against the start — if the return is no closer than that, the world
  re-invented the view rather than remembered it.

A world whose memory (``memory_frames``) is shorter than the round trip can
only recall the view from what it has learned of the place, and the report says so.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from neuralworld.data.store import Dataset
from neuralworld.eval.inputs import EvalInputs, Rollouts, real_windows, turn_axis
from neuralworld.eval.metrics import psnr, ssim


def _sim(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    if len(a) == 0:
        return {"pairs": 0, "psnr": None, "ssim": None}
    return {"pairs": int(len(a)), "psnr": round(float(psnr(a, b).mean()), 4), "ssim": round(float(ssim(a, b).mean()), 4)}


def real_return_pairs(
    ds: Dataset,
    episodes: list[int],
    *,
    pos_tol: float = 16.0,
    angle_tol: float = 5.0,
    min_gap: int = 24,
    max_pairs: int = 200,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Real frames (N, H, W, 3) x2 taken at the same pose, at least ``min_gap`` frames apart.
    Empty when the dataset stores no x, y and angle."""
    names = list(ds.info.pose_names)
    if not all(n in names for n in ("x", "y", "angle")):
        return np.zeros((0,)), np.zeros((0,))
    ix, iy, ia = names.index("x"), names.index("y"), names.index("angle")
    rng = np.random.default_rng(seed)
    found: list[tuple[int, int, int]] = []
    for e in episodes:
        poses = ds.episode(e)["poses"][:]
        if not np.isfinite(poses[:, [ix, iy, ia]]).all():
            continue
        xy, ang = poses[:, [ix, iy]], poses[:, ia]
        d = np.linalg.norm(xy[:, None] - xy[None], axis=-1)  # (T, T)
        da = np.abs((ang[:, None] - ang[None] + 180) % 360 - 180)
        gap = np.abs(np.arange(len(xy))[:, None] - np.arange(len(xy))[None])
        i, j = np.nonzero((d < pos_tol) & (da < angle_tol) & (gap >= min_gap) & (np.arange(len(xy))[:, None] < np.arange(len(xy))[None]))
        found += [(e, a, b) for a, b in zip(i, j)]
    if not found:
        return np.zeros((0,)), np.zeros((0,))
    pick = rng.choice(len(found), min(max_pairs, len(found)), replace=False)
    a, b = [], []
    for k in sorted(pick):
        e, i, j = found[k]
        f = ds.episode(e)["frames"]
        a.append(f[i])
        b.append(f[j])
    return np.stack(a), np.stack(b)


def random_pairs(ds: Dataset, episodes: list[int], count: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two real frames from different episodes (the same episode if there is one), ``count`` times."""
    rng = np.random.default_rng(seed)
    a, b = [], []
    for _ in range(count):
        e1, e2 = rng.choice(episodes, 2, replace=len(episodes) < 2)
        a.append(ds.episode(int(e1))["frames"][int(rng.integers(ds.lengths[e1]))])
        b.append(ds.episode(int(e2))["frames"][int(rng.integers(ds.lengths[e2]))])
    return np.stack(a), np.stack(b)


def run_memory(world: Any, inputs: EvalInputs, rollouts: Rollouts, *, starts: int = 8, walk: int = 16) -> dict[str, Any]:
    """Round trips (a 360° turn; ``walk`` frames forward and as many back) from ``starts``
    held-out contexts; ``memory_references`` gives the scale their figures sit on."""
    spec = world.spec
    context = rollouts.context
    win = real_windows(inputs, context, 1, per_episode=max(1, math.ceil(starts / len(inputs.held_episodes))), max_windows=starts)
    ctx, ctx_actions = win.frames[:, :context], win.led_to[:, :context]
    left = ctx[:, -1]  # (B, H, W, 3): the view left behind
    result: dict[str, Any] = {"starts": int(len(ctx)), "memory_frames": int(world.config.dynamics.memory_frames)}
    session = rollouts.start(world, ctx, ctx_actions)
    axis = turn_axis(spec)
    if axis is None:
        result["turn"] = {"skipped": "the world has no turn or yaw axis"}
    else:
        steps = int(round(360.0 / axis.rate))
        acts = np.repeat(spec.noop()[None], steps, 0)
        acts[:, axis.index] = axis.rate * (1 if axis.high >= axis.rate else -1)
        gen = session.rollout(acts)  # (B, steps, H, W, 3)
        result["turn"] = {
            "axis": axis.name, "rate_deg_per_frame": axis.rate, "frames": steps, "degrees": round(steps * axis.rate, 2),
            "return": _sim(gen[:, -1], left), "turned_away": _sim(gen[:, steps // 2 - 1], left),
        }  # fmt: skip
        result["_turn_frames"] = gen
    if "forward" in spec.buttons and "back" in spec.buttons:
        session.reset(ctx, actions=ctx_actions, seed=rollouts.seed)
        acts = np.repeat(spec.noop()[None], 2 * walk, 0)
        acts[:walk, spec.index("forward")] = 1.0
        acts[walk:, spec.index("back")] = 1.0
        gen = session.rollout(acts)
        result["walk"] = {"frames_each_way": walk, "return": _sim(gen[:, -1], left), "farthest": _sim(gen[:, walk - 1], left)}
        result["_walk_frames"] = gen
    else:
        result["walk"] = {"skipped": "the world has no forward and back buttons"}
    result["_left"] = left
    return result


def memory_references(inputs: EvalInputs, seed: int = 0) -> dict[str, Any]:
    """Real returns (same pose, later) and random pairs: the scale the world's figure sits on."""
    ds = inputs.data
    every = list(range(ds.num_episodes))
    a, b = real_return_pairs(ds, every, seed=seed)
    ra, rb = random_pairs(ds, every, seed=seed)
    out = {"real_return": _sim(a, b), "random_pairs": _sim(ra, rb)}
    if len(a) == 0:
        out["real_return"]["note"] = "no real pairs at the same pose (the dataset stores no x, y, angle, or never returns)"
    return out

"""Stability: long open-loop play stays inside what real frames look like.

A world that holds for 30 frames can still melt into soup, freeze, go black or
white after thousands. Here batched sessions play ``frames`` steps (10,000 by
default) from real held-out context under two kinds of driving:

* **scripted**: walk forward, sweep the view right and left, strafe — a tour;
* **random**: what a player does — buttons and a turn rate drawn from the
  ActionSpec and *held* for a random while (5–40 frames), forward more often
  than back, as the recording explorer does.

Per generated frame: sharpness (variance of the Laplacian of the grey image),
colour mean and standard deviation per channel, the change from the previous
frame, and whether it is black, white or frozen (changing by less than
``FROZEN_CHANGE`` grey levels for ``FROZEN_RUN`` frames while the action moves
the view). Per window of ``window`` frames: the Fréchet distance of the
window's *features* to real frames' — features are a fixed random projection of
16x16 thumbnails (no downloaded network; the same projection for real and
generated frames), so the distance compares the distribution of layouts and
colours, not pixels.

**The real band**: the same statistics on real frames (the 1st to 99th
percentile per frame; for the Fréchet distance 1.5 times the largest that windows
of real held-out frames score against the training frames). A window is *out* when the
median of any statistic lies outside the band, its Fréchet distance exceeds
the band, or most of its frames are black / white / frozen. **Collapse** = the
first of ``patience`` consecutive windows out; ``in_band_at_start`` tells
whether the world was ever inside (a blurry world is out from frame 0: that is
a quality verdict, not a collapse over time, and the report says which).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import cv2
import numpy as np

from neuralworld.eval.engine import EnginePlayer, engine_env
from neuralworld.eval.inputs import EvalInputs, Rollouts, controls_moving, real_windows, turn_axis
from neuralworld.eval.metrics import sharpness

FROZEN_CHANGE = 0.5  # mean absolute grey-level change per frame below which a frame counts as unchanged
FROZEN_RUN = 10  # unchanged frames in a row while moving before they count as frozen
BLACK_LUMA, WHITE_LUMA = 8.0, 247.0  # mean grey level of a black / white-out frame
STATS = ("sharpness", "mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b")
FEATURE_DIM = 32
THUMB = 16
FRECHET_MARGIN = 1.5


# ---------------------------------------------------------------------------
# per-frame statistics
def frame_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Frames (N, H, W, 3) uint8 -> each of STATS plus ``luma`` (N,) float32."""
    f = frames.astype(np.float32)
    grey = np.stack([cv2.cvtColor(x, cv2.COLOR_RGB2GRAY) for x in frames]).astype(np.float32)  # (N, H, W)
    sharp = sharpness(frames)
    mean, std = f.mean(axis=(1, 2)), f.std(axis=(1, 2))  # (N, 3)
    return {
        "sharpness": sharp,
        "mean_r": mean[:, 0], "mean_g": mean[:, 1], "mean_b": mean[:, 2],
        "std_r": std[:, 0], "std_g": std[:, 1], "std_b": std[:, 2],
        "luma": grey.mean(axis=(1, 2)),
    }  # fmt: skip


def frame_change(prev: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Mean absolute grey-level change of each frame from the one before: prev (H, W, 3), frames (N, ...) -> (N,)."""
    seq = np.concatenate([prev[None], frames]).astype(np.float32).mean(-1)  # (N + 1, H, W)
    return np.abs(np.diff(seq, axis=0)).mean(axis=(1, 2))


def frozen_flags(change: np.ndarray, moving: np.ndarray, run: int = FROZEN_RUN) -> np.ndarray:
    """(N,) bool: the frame ends or sits in ``run`` or more unchanged frames in a row while moving."""
    still = (change < FROZEN_CHANGE) & moving
    out = np.zeros_like(still)
    count = 0
    for i, s in enumerate(still):
        count = count + 1 if s else 0
        if count >= run:
            out[i - count + 1 : i + 1] = True
    return out


class FeatureProjection:
    """A fixed random projection of 16x16 thumbnails (768 -> 32): features that need no weights."""

    def __init__(self, seed: int = 1234):
        rng = np.random.default_rng(seed)
        self.matrix = (rng.standard_normal((THUMB * THUMB * 3, FEATURE_DIM)) / np.sqrt(THUMB * THUMB * 3)).astype(np.float32)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        thumbs = np.stack([cv2.resize(f, (THUMB, THUMB), interpolation=cv2.INTER_AREA) for f in frames])
        x = thumbs.reshape(len(frames), -1).astype(np.float32) / 127.5 - 1  # (N, 768)
        return x @ self.matrix  # (N, 32)


def frechet(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Fréchet distance between two Gaussians: |mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1 C2)^1/2)."""
    # (C1 C2)^1/2 through the symmetric form C1^1/2 C2 C1^1/2, which stays real
    w, v = np.linalg.eigh(cov1)
    s1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = s1 @ cov2 @ s1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * tr_sqrt)


def gaussian(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return features.mean(0), np.cov(features, rowvar=False)


# ---------------------------------------------------------------------------
# the real band
@dataclass
class RealBand:
    low: dict[str, float]
    high: dict[str, float]
    frechet_high: float
    reference: tuple[np.ndarray, np.ndarray]  # (mu, cov) of training frames' features
    window: int
    real_frechet: list[float]

    def to_json(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "frechet_high": round(self.frechet_high, 4), "window": self.window,
                "real_window_frechet": [round(v, 4) for v in self.real_frechet]}  # fmt: skip


def real_band(reference_frames: np.ndarray, held_sequences: list[np.ndarray], window: int, project: FeatureProjection) -> RealBand:
    """The band from real frames: per-frame percentiles over ``reference_frames`` (N, H, W, 3)
    and the held-out sequences, and the Fréchet distance of held-out windows (consecutive
    frames) to the reference frames' features."""
    every = np.concatenate([reference_frames, *held_sequences]) if held_sequences else reference_frames
    st = frame_stats(every)
    low = {k: round(float(np.percentile(st[k], 1)), 4) for k in STATS}
    high = {k: round(float(np.percentile(st[k], 99)), 4) for k in STATS}
    ref = gaussian(project(reference_frames))
    fd = []
    for seq in held_sequences:
        feats = project(seq)
        for i in range(0, len(seq) - window + 1, window):
            fd.append(frechet(*gaussian(feats[i : i + window]), *ref))
    # windows of real frames differ a lot (a dark corridor, a lit yard): a window counts
    # out only when it is FRECHET_MARGIN times farther than the farthest real one
    fd_high = FRECHET_MARGIN * max(fd) if fd else float("inf")
    return RealBand(low, high, fd_high, ref, window, fd)


# ---------------------------------------------------------------------------
# judging a sequence
def judge(
    stats: dict[str, np.ndarray],
    frozen: np.ndarray,
    features: np.ndarray,
    band: RealBand,
    *,
    patience: int = 3,
) -> dict[str, Any]:
    """Per-window verdicts for one sequence. stats: frame_stats of N frames; frozen (N,);
    features (N, FEATURE_DIM). Returns windows out, why, and the collapse frame (or None)."""
    N, w = len(frozen), band.window
    starts = list(range(0, max(N - w + 1, 1), w))
    out, reasons, fds = [], [], []
    luma = stats["luma"]
    for s in starts:
        sl = slice(s, s + w)
        why = []
        for k in STATS:
            med = float(np.median(stats[k][sl]))
            if med < band.low[k]:
                why.append(f"{k} low")
            elif med > band.high[k]:
                why.append(f"{k} high")
        n = max(1, len(frozen[sl]))
        if (luma[sl] < BLACK_LUMA).sum() / n > 0.5:
            why.append("black")
        if (luma[sl] > WHITE_LUMA).sum() / n > 0.5:
            why.append("white")
        if frozen[sl].sum() / n > 0.5:
            why.append("frozen")
        fd = frechet(*gaussian(features[sl]), *band.reference) if len(features[sl]) > 2 else float("nan")
        fds.append(fd)
        if fd > band.frechet_high:
            why.append("features")
        out.append(bool(why))
        reasons.append(why)
    collapse = None
    run = 0
    for i, o in enumerate(out):
        run = run + 1 if o else 0
        if run >= patience:
            collapse = starts[i - patience + 1]
            break
    counts: dict[str, int] = {}
    for why in reasons:
        for r in why:
            counts[r] = counts.get(r, 0) + 1
    return {
        "frames": int(N),
        "windows": len(starts),
        "windows_out": int(sum(out)),
        "in_band_fraction": round(1 - sum(out) / max(1, len(out)), 4),
        "in_band_at_start": not out[0] if out else None,
        "collapse_frame": collapse,
        "out_reasons": counts,
        "first_window_reasons": reasons[0] if reasons else [],
        "black_fraction": round(float((luma < BLACK_LUMA).mean()), 4),
        "white_fraction": round(float((luma > WHITE_LUMA).mean()), 4),
        "frozen_fraction": round(float(frozen.mean()), 4),
        "window_frechet": [round(float(v), 4) for v in fds],
        "window_out": out,
    }


# ---------------------------------------------------------------------------
# the drives
def scripted_actions(spec: Any, frames: int) -> np.ndarray:
    """A tour (frames, A): forward, sweep right, forward, sweep left, strafe, repeated."""
    axis = turn_axis(spec)
    acts = np.repeat(spec.noop()[None], frames, 0)
    pattern = []  # (length, {control: value})
    fwd = {"forward": 1.0} if "forward" in spec.buttons else {}
    rate = axis.rate * 2 / 3 if axis else 0.0
    turn = (lambda r: {axis.name: r * axis.right}) if axis else (lambda r: {})
    pattern += [(40, fwd), (20, {**fwd, **turn(rate)}), (40, fwd), (20, {**fwd, **turn(-rate)}), (15, turn(rate)), (15, turn(-rate))]
    for side in ("strafe_left", "strafe_right"):
        if side in spec.buttons:
            pattern.append((15, {side: 1.0}))
    i = 0
    while i < frames:
        for length, ctl in pattern:
            for name, v in ctl.items():
                acts[i : i + length, spec.index(name)] = v
            i += length
            if i >= frames:
                break
    return acts[:frames].astype(np.float32)


def random_actions(spec: Any, frames: int, seed: int) -> np.ndarray:
    """A player's random play (frames, A): controls drawn and held 5-40 frames."""
    rng = np.random.default_rng(seed)
    p = {"forward": 0.6, "back": 0.1, "strafe_left": 0.15, "strafe_right": 0.15, "attack": 0.1, "use": 0.05}
    nb = len(spec.buttons)
    out = np.empty((frames, spec.size), np.float32)
    i = 0
    while i < frames:
        hold = int(rng.integers(5, 41))
        a = spec.noop()
        for j, b in enumerate(spec.buttons):
            a[j] = float(rng.random() < p.get(b, 0.2))
        if "forward" in spec.buttons and "back" in spec.buttons and a[spec.index("forward")] and a[spec.index("back")]:
            a[spec.index("back")] = 0.0
        for k, ax in enumerate(spec.axes):
            if rng.random() < 0.5:
                a[nb + k] = float(rng.choice([-1, -2 / 3, -1 / 3, 1 / 3, 2 / 3, 1])) * min(abs(ax.low), abs(ax.high))
        out[i : i + hold] = a
        i += hold
    return out


def run_stability(
    world: Any,
    inputs: EvalInputs,
    band: RealBand,
    rollouts: Rollouts,
    *,
    frames: int = 10_000,
    random_rollouts: int = 1,
    chunk: int = 200,
    snapshots: int = 8,
    patience: int = 3,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Play ``frames`` steps of one scripted and ``random_rollouts`` random drives as one
    batched session, from held-out context; per-frame traces and verdicts per drive."""
    spec = world.spec
    names = ["scripted"] + [f"random{k}" for k in range(random_rollouts)]
    B = len(names)
    context, seed = rollouts.context, rollouts.seed
    win = real_windows(inputs, context, 1, per_episode=B, max_windows=B)
    idx = [i % len(win.frames) for i in range(B)]
    ctx, ctx_actions = win.frames[idx, :context], win.led_to[idx, :context]
    actions = np.stack([scripted_actions(spec, frames)] + [random_actions(spec, frames, seed + 1 + k) for k in range(random_rollouts)])
    session = rollouts.start(world, ctx, ctx_actions)
    project = FeatureProjection()
    traces = {k: np.zeros((B, frames), np.float32) for k in (*STATS, "luma", "change")}
    feats = np.zeros((B, frames, FEATURE_DIM), np.float32)
    snap_at = sorted({int(x) for x in np.linspace(0, frames - 1, snapshots)})
    snaps = np.zeros((B, len(snap_at), *ctx.shape[-3:]), np.uint8)
    prev = ctx[:, -1]
    for s in range(0, frames, chunk):
        gen = session.rollout(actions[:, s : s + chunk])  # (B, c, H, W, 3)
        n = gen.shape[1]
        for b in range(B):
            st = frame_stats(gen[b])
            for k, v in st.items():
                traces[k][b, s : s + n] = v
            traces["change"][b, s : s + n] = frame_change(prev[b], gen[b])
            feats[b, s : s + n] = project(gen[b])
        for j, t in enumerate(snap_at):
            if s <= t < s + n:
                snaps[:, j] = gen[:, t - s]
        prev = gen[:, -1]
        if log is not None:
            log(f"stability: {s + n}/{frames} frames x {B}")
    moving = controls_moving(spec, actions)  # (B, frames)
    drives = {}
    frozen = np.zeros((B, frames), bool)
    for b, name in enumerate(names):
        frozen[b] = frozen_flags(traces["change"][b], moving[b])
        drives[name] = judge({k: traces[k][b] for k in (*STATS, "luma")}, frozen[b], feats[b], band, patience=patience)
    collapses = [d["collapse_frame"] for d in drives.values()]
    return {
        "frames": frames,
        "drives": drives,
        "collapsed": any(c is not None for c in collapses),
        "no_collapse_frames": min((c for c in collapses if c is not None), default=frames),
        "band": band.to_json(),
        "patience_windows": patience,
        "_traces": {**traces, "frozen": frozen.astype(np.float32)},
        "_snapshots": snaps,
        "_snapshot_steps": snap_at,
        "_names": names,
    }


def run_engine_drives(source: str, resolution: tuple[int, int], spec: Any, real_sharpness: float, *, frames: int = 10_000,
                      random_rollouts: int = 1, seed: int = 0) -> dict[str, Any]:
    """The random drives of ``run_stability`` (the same actions) played by the engine the data was
    recorded from, from its map's start (a death starts a new episode): what the long-rollout bar
    reads off them (``end_of_drives``), or ``{"skipped": why}`` where there is no such engine here."""
    env, why = engine_env(source, resolution, spec)
    if env is None:
        return {"skipped": why}
    try:
        names = [f"random{k}" for k in range(random_rollouts)]
        traces = {k: np.zeros((len(names), frames), np.float32) for k in (*STATS, "luma", "frozen")}
        for b in range(len(names)):
            actions = random_actions(spec, frames, seed + 1 + b)
            played = EnginePlayer(env, seed, restart=True).play(actions)  # (frames + 1, H, W, 3)
            for k, v in frame_stats(played[1:]).items():
                traces[k][b] = v
            traces["frozen"][b] = frozen_flags(frame_change(played[0], played[1:]), controls_moving(spec, actions))
        return {"frames": frames, **(end_of_drives(traces, names, real_sharpness) or {})}
    finally:
        env.close()


def end_of_drives(traces: dict[str, np.ndarray], names: list[str], real_sharpness: float, last: int = 200) -> dict[str, Any] | None:
    """What the long-rollout bar reads off the random drives' traces (B, frames): the median
    sharpness of each drive's ``last`` frames, the median of those over the drives (one drive's end
    says where it ended as much as how the world has aged) and the lowest, over
    ``real_sharpness``; and how many of the drives' frames were black, white or frozen (this
    module's definitions). None without a random drive."""
    rows = [b for b, n in enumerate(names) if n.startswith("random")]
    if not rows:
        return None
    n = min(last, traces["sharpness"].shape[1])
    ends = [float(np.median(traces["sharpness"][b, -n:])) for b in rows]
    sharp = float(np.median(ends))
    ratio = (lambda v: round(v / real_sharpness, 4) if real_sharpness > 0 else None)  # noqa: E731
    luma = traces["luma"][rows]
    return {
        "drives": len(rows), "last_frames": n, "sharpness": round(sharp, 3), "sharpness_ratio": ratio(sharp),
        "lowest_ratio": ratio(min(ends)), "drive_ratios": [ratio(v) for v in ends],
        "black_frames": int((luma < BLACK_LUMA).sum()), "white_frames": int((luma > WHITE_LUMA).sum()),
        "frozen_frames": int(traces["frozen"][rows].sum()),
        "black_below": BLACK_LUMA, "white_above": WHITE_LUMA, "frozen_run": FROZEN_RUN, "frozen_change": FROZEN_CHANGE,
    }  # fmt: skip

"""Probes: the world played as the player plays it, measured against the recorded engine.

Every probe drives one ``WorldSession`` made by ``World.start`` (the player's sampler on the
fastest exact backend, what ``neuralworld play`` plays), restarted from the world's start
frames before each probe (a world without start frames starts from a held-out real window):

* **held turn**: ``TURN_RATE`` deg/frame to the right, then to the left, for ``TURN_FRAMES``
  frames each; per frame the median horizontal optical flow (OpenCV Farneback on grey
  frames), averaged over each half of the hold, as a ratio to the real slide;
* **held forward**: ``FORWARD_FRAMES`` frames; per frame the median flow away from the
  image centre (the weapon masked), averaged over frames 2 on (the first starts from rest),
  as a ratio to the real one;
* **sharpness**: the variance of the Laplacian of the grey frame over the first
  ``SHARP_FRAMES`` frames played under random held controls (``stability.random_actions``),
  median, as a ratio to the median of real held-out frames.

Where the recording came from a ViZDoom scenario (the dataset's ``source``) and ViZDoom is
installed, the engine itself plays the same probes from its map's start (``run_engine_probes``:
the real twin, ``envs.doom.DoomEnv``): the pooled recorded pairs are mostly at full pace, and a
hold from rest is not, so the engine under the same controls says what a perfect world would
score on each probe. The bars stay against the recorded pairs; the engine's figures go beside them.

The real references come from the dataset's recorded frames (``real_motion``), never from
constants: the slide per degree from pairs where the recorded action turns and moves no
button (nor did in the two frames before: the engine's momentum), in degrees from the pose's
angle change where the dataset records poses, else from the commanded turn, and only pairs
that turn within ``RATE_BAND`` of the probe's rate: Farneback's median reads a 5-9 px slide
at 64 px wide about right but under-reads larger ones, so the world and the engine are read
the same way at the same rate. The forward flow from pairs where forward alone is held (and
was for the two frames before). The issue quotes ViZDoom at 64 px wide: 0.48 px per degree,
+1.05 px/frame forward; data/ship64 gives about the same.

Everything goes through ``WorldSession`` (``reset``, ``rollout``): no model-specific code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np

from neuralworld.data.store import Dataset
from neuralworld.eval.inputs import TurnAxis, turn_axis
from neuralworld.eval.engine import EnginePlayer, engine_env
from neuralworld.eval.metrics import sharpness
from neuralworld.eval.stability import random_actions

TURN_RATE = 8.0  # deg/frame (in the turn axis' own unit where it is not degrees)
TURN_FRAMES = 24
FORWARD_FRAMES = 12
SHARP_FRAMES = 200
FARNEBACK = (0.5, 3, 9, 3, 5, 1.1, 0)  # pyramid scale, levels, window, iterations, poly_n, poly_sigma, flags
MOVE_BUTTONS = ("forward", "back", "strafe_left", "strafe_right")
STILL_TURN = 1.0  # |turn| below this (deg/frame) counts as not turning: recorded turns jitter
RATE_BAND = (0.75, 1.25)  # real turn pairs turn between these multiples of the probe's rate
SETTLE = 2  # frames before a real pair that must hold the same kind of action (momentum)


# ---------------------------------------------------------------------------
# flow
def grey(frame: np.ndarray) -> np.ndarray:
    """RGB (H, W, 3) uint8 -> grey (H, W) uint8."""
    return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)


def optical_flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dense flow (H, W, 2) in px from RGB frame ``a`` to ``b`` (Farneback, grey)."""
    return cv2.calcOpticalFlowFarneback(grey(a), grey(b), None, *FARNEBACK)


def horizontal_flow(a: np.ndarray, b: np.ndarray) -> float:
    """Median horizontal flow a -> b (px; + = the picture moves right)."""
    return float(np.median(optical_flow(a, b)[..., 0]))


def radial_flow(a: np.ndarray, b: np.ndarray) -> float:
    """Median flow a -> b away from the image centre (px; + = the picture expands), the
    weapon (bottom centre: below 60 % of the height, within 20 % of the width of the
    centre) left out: it moves with the player, not with the world."""
    fl = optical_flow(a, b)
    H, W = fl.shape[:2]
    y, x = np.mgrid[0:H, 0:W]
    dx, dy = x - (W - 1) / 2, y - (H - 1) / 2
    r = np.sqrt(dx**2 + dy**2) + 1e-6
    keep = ~((y > H * 0.6) & (np.abs(dx) < W * 0.2))
    return float(np.median(((fl[..., 0] * dx + fl[..., 1] * dy) / r)[keep]))


def flows(frames: np.ndarray, measure: Any) -> np.ndarray:
    """``measure`` of each consecutive pair of frames (T, H, W, 3) -> (T - 1,)."""
    return np.array([measure(a, b) for a, b in zip(frames, frames[1:])], np.float64)


# ---------------------------------------------------------------------------
# the real references
@dataclass
class RealMotion:
    """What the recorded engine does, measured on the dataset's frames."""

    slide_px_per_deg: float | None  # median horizontal flow per degree turned RIGHT (ViZDoom: negative)
    turn_pairs: int
    degrees_from: str  # "pose angle" or "commanded turn"
    forward_px: float | None  # median radial flow per frame with forward held
    forward_pairs: int
    sharpness: float  # median sharpness of real frames

    def to_json(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def _held_for(mask: np.ndarray, settle: int) -> np.ndarray:
    """mask (T,) bool -> (T,) bool: true at t when mask[t - settle .. t] are all true."""
    out = mask.copy()
    for k in range(1, settle + 1):
        out[k:] &= mask[:-k]
        out[:k] = False
    return out


def probe_rate(axis: TurnAxis) -> float:
    """The held turn's rate: ``TURN_RATE``, or the axis' largest where that is smaller."""
    return min(TURN_RATE, axis.rate)


def real_motion(ds: Dataset, episodes: Sequence[int], real_frames: np.ndarray, *, max_pairs: int = 1000) -> RealMotion:
    """The real slide per degree (at the probe's rate) and forward flow from recorded pairs of
    ``episodes`` (read in order until ``max_pairs`` of each kind), and the median sharpness
    of ``real_frames``."""
    spec = ds.spec
    axis = turn_axis(spec)
    low, high = (probe_rate(axis) * k for k in RATE_BAND) if axis is not None else (0.0, 0.0)
    moves = [spec.index(b) for b in MOVE_BUTTONS if b in spec.buttons]
    fwd = spec.index("forward") if "forward" in spec.buttons else None
    angle = list(ds.info.pose_names).index("angle") if "angle" in ds.info.pose_names else None
    slides: list[float] = []
    radial: list[float] = []
    from_pose = False
    for e in episodes:
        if len(slides) >= max_pairs and (fwd is None or len(radial) >= max_pairs):
            break
        d = ds.episode(e).load(("frames", "actions", "poses"))
        frames, acts = d["frames"], d["actions"][:-1]  # acts[t] leads from frames[t] to frames[t + 1]
        moving = acts[:, moves].max(1) > 0.5 if moves else np.zeros(len(acts), bool)
        right = acts[:, axis.index] * axis.right if axis is not None else np.zeros(len(acts))
        if axis is not None and len(slides) < max_pairs:
            degrees = right
            if angle is not None and np.isfinite(d["poses"][:, angle]).all():
                # the pose's angle change, signed as the command (the angle's own sense varies by engine)
                change = (np.diff(d["poses"][:, angle]) + 180.0) % 360.0 - 180.0
                degrees, from_pose = np.abs(change) * np.sign(right), True
            pick = _held_for(~moving, SETTLE) & (np.abs(degrees) >= low) & (np.abs(degrees) <= high)
            slides += [horizontal_flow(frames[t], frames[t + 1]) / degrees[t] for t in np.flatnonzero(pick)]
        if fwd is not None and len(radial) < max_pairs:
            only = (acts[:, fwd] > 0.5) & ((acts[:, moves] > 0.5).sum(1) == 1) & (np.abs(right) < STILL_TURN)
            radial += [radial_flow(frames[t], frames[t + 1]) for t in np.flatnonzero(_held_for(only, SETTLE))]
    return RealMotion(
        slide_px_per_deg=float(np.median(slides)) if slides else None,
        turn_pairs=len(slides),
        degrees_from="pose angle" if from_pose else "commanded turn",
        forward_px=float(np.median(radial)) if radial else None,
        forward_pairs=len(radial),
        sharpness=float(np.median(sharpness(real_frames))),
    )


# ---------------------------------------------------------------------------
# playing the world
@dataclass
class Player:
    """One session played as the player plays it, restarted from the same frames for each probe."""

    session: Any  # a WorldSession (or anything with reset / rollout / frame)
    frames: np.ndarray | None = None  # None: the world's start frames
    actions: np.ndarray | None = None
    seed: int = 0

    def play(self, actions: np.ndarray) -> np.ndarray:
        """Restart, then play ``actions`` (T, A): the start frame and the T frames (T + 1, H, W, 3)."""
        first = self.session.reset(self.frames, actions=self.actions, seed=self.seed)
        return np.concatenate([np.asarray(first)[None], self.session.rollout(actions)])


def _ratio(value: float | None, real: float | None) -> float | None:
    return None if value is None or not real else round(float(value) / real, 4)


def turn_probe(player: Player, spec: Any, axis: TurnAxis, real: RealMotion, frames: int = TURN_FRAMES) -> dict[str, Any]:
    """Hold a turn right, then left; per direction the mean horizontal flow of each half
    of the hold (px/frame) and its ratio to the real slide at that rate."""
    rate = probe_rate(axis)
    half = frames // 2
    out: dict[str, Any] = {"rate": rate, "frames": frames}
    for name, sign in (("right", 1.0), ("left", -1.0)):
        acts = np.repeat(spec.noop()[None], frames, 0)
        acts[:, axis.index] = sign * rate * axis.right
        xs = flows(player.play(acts), horizontal_flow)  # (frames,)
        real_px = None if real.slide_px_per_deg is None else sign * rate * real.slide_px_per_deg
        firsts, seconds = float(xs[:half].mean()), float(xs[half:].mean())
        out[name] = {"real_px": None if real_px is None else round(real_px, 4),
                     "first_px": round(firsts, 4), "second_px": round(seconds, 4),
                     "first_ratio": _ratio(firsts, real_px), "second_ratio": _ratio(seconds, real_px),
                     "per_frame_px": [round(float(x), 3) for x in xs]}  # fmt: skip
    return out


def forward_probe(player: Player, spec: Any, real: RealMotion, frames: int = FORWARD_FRAMES) -> dict[str, Any]:
    """Hold forward; the mean radial flow of frames 2 on (px/frame) and its ratio to the real one."""
    acts = np.repeat(spec.make(forward=1.0)[None], frames, 0)
    rs = flows(player.play(acts), radial_flow)  # (frames,)
    px = float(rs[1:].mean())
    return {"frames": frames, "px": round(px, 4), "real_px": None if real.forward_px is None else round(real.forward_px, 4),
            "ratio": _ratio(px, real.forward_px), "per_frame_px": [round(float(x), 3) for x in rs]}  # fmt: skip


def sharpness_probe(player: Player, spec: Any, real: RealMotion, frames: int = SHARP_FRAMES, seed: int = 0) -> dict[str, Any]:
    """Play random held controls; the median sharpness of the frames played and its ratio to real frames'."""
    played = player.play(random_actions(spec, frames, seed))[1:]
    med = float(np.median(sharpness(played)))
    return {"frames": frames, "median": round(med, 3), "real_median": round(real.sharpness, 3), "ratio": _ratio(med, real.sharpness)}


def run_probes(world: Any, real: RealMotion, *, start: tuple[np.ndarray, np.ndarray] | None = None, sampler: Any = "fast",
               backend: Any = "auto", seed: int = 0) -> dict[str, Any]:
    """Every probe on ``world``, from its start frames (or ``start``: real frames (T, H, W, 3)
    and the actions that led to them, for a world without start frames), in one session of
    ``world.start`` (the player's sampler and backend by default)."""
    frames, actions = (None, None) if start is None else start
    session = world.start(frames, actions=actions, sampler=sampler, backend=backend, seed=seed)
    result: dict[str, Any] = {"session": repr(session), "start": "world start frames" if start is None else "held-out real frames",
                              "real": real.to_json()}  # fmt: skip
    return {**result, **_probe(Player(session, frames, actions, seed), world.spec, real, seed)}


def run_engine_probes(source: str, resolution: tuple[int, int], spec: Any, real: RealMotion, *, seed: int = 0) -> dict[str, Any]:
    """Every probe played by the engine a dataset was recorded from (``source``: the dataset's,
    "vizdoom:<scenario>"), at its resolution and frame skip, from the map's start; or
    ``{"skipped": why}`` where there is no such engine here."""
    env, why = engine_env(source, resolution, spec)
    if env is None:
        return {"skipped": why}
    try:
        return {"session": f"ViZDoom {source.split(':', 1)[1]}, from the map's start", "start": "the engine's map start",
                **_probe(EnginePlayer(env, seed), spec, real, seed)}  # fmt: skip
    finally:
        env.close()


def _probe(player: Any, spec: Any, real: RealMotion, seed: int) -> dict[str, Any]:
    axis = turn_axis(spec)
    return {
        "turn": turn_probe(player, spec, axis, real) if axis is not None else {"skipped": "the world has no turn or yaw axis"},
        "forward": forward_probe(player, spec, real) if "forward" in spec.buttons else {"skipped": "the world has no forward button"},
        "sharpness": sharpness_probe(player, spec, real, seed=seed),
    }

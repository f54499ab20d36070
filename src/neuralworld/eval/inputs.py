"""What every evaluation part starts from: a world, its dataset, the run's split,
the windows of real frames cut from it, and open-loop rollouts from real context
driven by the recorded actions. The bottom of ``eval/``: every other part
(``fidelity`` too) builds on it.

The parts of the suite (``idm``, ``control``, ``stability``, ``memory``) each need
the same things: the world loaded once, the dataset it was trained on, the
*same* train / held-out split the run used (so nothing is judged on frames the
world was trained on), and often generated frames from real starting points.
Rollouts go through ``WorldSession.rollout`` (the one rollout loop); this module
only cuts windows and hands them to a session.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from neuralworld.bundle import World, load_bundle
from neuralworld.data.store import Dataset, DatasetError
from neuralworld.session import WorldSession
from neuralworld.state_io import StateError, read_json

DEFAULT_HELD_OUT = 0.1  # TrainConfig.held_out's default: used when no run.json says otherwise


class EvalError(Exception):
    """The world and data can't be evaluated as asked; the message says why."""


@dataclass
class WorldLocation:
    """Where a world came from: its bundle, and the run folder that trained it (if known)."""

    bundle: Path
    run: Path | None
    run_record: dict[str, Any] | None


def locate_world(path: str | os.PathLike) -> WorldLocation:
    """A run folder (RUN/run.json + RUN/world) or a bundle folder (config.json); a
    bundle inside a run folder finds its run, so the held-out split is the run's."""
    p = Path(path)
    if (p / "run.json").is_file():
        run, bundle = p, p / "world"
        if not (bundle / "config.json").is_file():
            raise EvalError(f"{p} is a run folder without a finished world ({bundle} is missing): train it to the end first")
    elif (p / "config.json").is_file():
        bundle = p
        run = p.parent if (p.parent / "run.json").is_file() else None
    elif p.exists():
        raise EvalError(f"{p} is neither a run folder (run.json) nor a world bundle (config.json)")
    else:
        raise EvalError(f"{p}: no such run or world")
    record = None
    if run is not None:
        try:
            record = read_json(run / "run.json", "run record")
        except StateError as e:
            raise EvalError(str(e)) from None
    return WorldLocation(bundle, run, record)


@dataclass
class Windows:
    """Evaluation windows from held-out episodes, aligned for the session."""

    frames: np.ndarray  # (B, context + T, H, W, 3) uint8, real
    led_to: np.ndarray  # (B, context + T, A) float32: led_to[:, j] is the action that led to frames[:, j]
    episode_ids: list[str]
    starts: list[int]


def cut_windows(ds: Dataset, episodes: Sequence[int], context: int, horizon: int, per_episode: int) -> Windows:
    """Non-overlapping windows of ``context + horizon`` frames, up to ``per_episode`` from
    each episode long enough, spread over the episode (not all at its start)."""
    length = context + horizon
    frames, led_to, ids, starts = [], [], [], []
    noop = ds.spec.noop()
    for e in episodes:
        ep = ds.episode(e)
        fits = ep.length // length
        if fits == 0:
            continue
        n = min(per_episode, fits)
        # evenly spaced, non-overlapping starts over the whole episode
        slack = ep.length - n * length
        for k in range(n):
            s = k * length + (slack * (k + 1)) // (n + 1)
            data = ep.load(("frames", "actions"), max(s - 1, 0), s + length)
            acts = data["actions"]
            if s == 0:  # nothing led to an episode's first frame that we know of
                acts = np.concatenate([noop[None], acts])
            frames.append(data["frames"][-length:])
            led_to.append(acts[:length])  # the dataset's actions[j-1] led to frames[j]
            ids.append(ep.id)
            starts.append(s)
    if not frames:
        return Windows(np.zeros((0,)), np.zeros((0,)), [], [])
    return Windows(np.stack(frames), np.stack(led_to).astype(np.float32), ids, starts)


def check_fits(world: World, ds: Dataset) -> None:
    """Raise ``EvalError`` unless the world plays the dataset's controls at its resolution."""
    problems = []
    if world.spec != ds.spec:
        problems.append(f"controls differ ({world.spec.diff(ds.spec)})")
    if tuple(world.resolution) != tuple(ds.resolution):
        problems.append(f"the world is {world.resolution[0]}x{world.resolution[1]}, the data {ds.resolution[0]}x{ds.resolution[1]}")
    if problems:
        raise EvalError(f"{world.path} does not fit {ds.where}: " + "; ".join(problems))


@dataclass
class EvalInputs:
    """A world beside the dataset it is judged on, with the run's split."""

    location: WorldLocation
    world: World
    data: Dataset
    data_path: str
    train_episodes: list[int]
    held_episodes: list[int]
    held_out_fraction: float
    held_out_source: str

    @property
    def name(self) -> str:
        return self.world.name or self.location.bundle.name


def open_inputs(
    world_path: str | os.PathLike,
    data_path: str | os.PathLike | None = None,
    *,
    held_out: float | None = None,
    device: str = "cpu",
    need_train: bool = True,
) -> EvalInputs:
    """Load a world (run folder or bundle) and its dataset, and split the episodes
    exactly as training did (fraction from run.json, the bundle, or the default).
    ``need_train=False``: only held-out episodes are needed (fidelity)."""
    loc = locate_world(world_path)
    if data_path is None:
        if not loc.run_record or "data" not in loc.run_record:
            raise EvalError("no --data given and no run.json to say which dataset trained this world")
        data_path = loc.run_record["data"]
    try:
        ds = Dataset(data_path)
    except DatasetError as e:
        raise EvalError(str(e)) from None
    world = load_bundle(loc.bundle, device=device)
    check_fits(world, ds)
    if held_out is not None:
        fraction, source = float(held_out), "argument"
    elif loc.run_record is not None:
        fraction, source = float(loc.run_record.get("train", {}).get("held_out", DEFAULT_HELD_OUT)), "run.json"
    elif "held_out" in world.meta.get("training", {}):
        fraction, source = float(world.meta["training"]["held_out"]), "bundle config.json"
    else:
        fraction, source = DEFAULT_HELD_OUT, "default (no run.json found beside the bundle)"
    train, held = ds.split(fraction)
    if not held:
        raise EvalError(f"{data_path} has no held-out episodes at held_out={fraction} ({ds.num_episodes} episodes): record more")
    if need_train and not train:
        raise EvalError(f"{data_path} needs both training and held-out episodes at held_out={fraction} ({ds.num_episodes} episodes): record more")
    return EvalInputs(loc, world, ds, str(data_path), train, held, fraction, source)


def as_world(world: World | str | os.PathLike, device: str = "cpu") -> World:
    """A loaded world, or a run folder / bundle path loaded (baselines come as paths)."""
    if isinstance(world, (str, os.PathLike)):
        return load_bundle(locate_world(world).bundle, device=device)
    return world


def real_windows(inputs: EvalInputs, context: int, horizon: int, per_episode: int, max_windows: int | None = None) -> Windows:
    """Windows of ``context + horizon`` real frames from the held-out episodes."""
    win = cut_windows(inputs.data, inputs.held_episodes, context, horizon, per_episode)
    if len(win.frames) == 0:
        longest = max(inputs.data.lengths[e] for e in inputs.held_episodes)
        raise EvalError(f"held-out episodes are too short: the longest has {longest} frames, {context + horizon} needed")
    if max_windows is not None and len(win.frames) > max_windows:
        keep = slice(0, max_windows)
        win = Windows(win.frames[keep], win.led_to[keep], win.episode_ids[keep], win.starts[keep])
    return win


@dataclass(frozen=True)
class Rollouts:
    """How every part of the suite plays a world: from ``context`` real frames of held-out
    windows, with one sampler preset and noise seed (the same for every world compared)."""

    context: int
    sampler: Any = "fast"
    seed: int = 0

    def start(self, world: World, frames: np.ndarray, led_to: np.ndarray) -> WorldSession:
        """A (batched) session primed with real ``frames`` (B, context, H, W, 3) and the
        actions that led to them (B, context, A)."""
        return WorldSession(world, frames, actions=led_to, sampler=self.sampler, seed=self.seed)


def open_loop(world: World, win: Windows, rollouts: Rollouts, *, actions: np.ndarray | None = None) -> np.ndarray:
    """Generated frames (B, T, H, W, 3): each window's first ``context`` real frames,
    then ``actions`` (B, T, A) — by default the recorded ones, ``win.led_to[:, context:]``."""
    c = rollouts.context
    if actions is None:
        actions = win.led_to[:, c:]
    return rollouts.start(world, win.frames[:, :c], win.led_to[:, :c]).rollout(actions)


def default_context(world: World, wanted: int | None = None) -> int:
    """Real frames a rollout starts from: the dynamics' memory less the frame being made."""
    ctx = wanted if wanted is not None else world.config.dynamics.memory_frames - 1
    if ctx < 1:
        raise EvalError(f"context must be >= 1 real frame, got {ctx}")
    return int(ctx)


def controls_moving(spec: Any, actions: np.ndarray) -> np.ndarray:
    """(..., A) -> (...,) bool: the action moves the view (a movement button held without its
    opposite, or a turning axis off zero). Opposite buttons held together cancel, as in Doom,
    which adds one's move and takes away the other's. A frozen picture is only a failure while
    this is true."""
    nb = len(spec.buttons)

    def held(name: str) -> np.ndarray:
        return actions[..., spec.index(name)] > 0.5 if name in spec.buttons else np.zeros(actions.shape[:-1], bool)

    out = (held("forward") != held("back")) | (held("strafe_left") != held("strafe_right"))
    for j in range(nb, nb + len(spec.axes)):
        out |= np.abs(actions[..., j]) > 1e-3
    return out


@dataclass(frozen=True)
class TurnAxis:
    """The axis that turns the view: ``turn`` (ViZDoom: positive = right) or ``yaw``
    (camera-motion worlds, record/motion.py: positive = left)."""

    index: int  # position in the action vector
    name: str
    low: float
    high: float
    right: float  # +1 when a positive value turns right, -1 when it turns left

    @property
    def rate(self) -> float:
        """The largest rate that turns either way (deg/frame)."""
        return float(min(abs(self.low), abs(self.high)))


def turn_axis(spec: Any) -> TurnAxis | None:
    """The world's turning axis, or None when it has neither ``turn`` nor ``yaw``."""
    nb = len(spec.buttons)
    for name, right in (("turn", 1.0), ("yaw", -1.0)):
        for i, ax in enumerate(spec.axes):
            if ax.name == name:
                return TurnAxis(nb + i, name, ax.low, ax.high, right)
    return None


def sample_real_frames(ds: Dataset, episodes: Sequence[int], count: int, seed: int = 0) -> np.ndarray:
    """Up to ``count`` real frames (N, H, W, 3), spread evenly over the given episodes."""
    per = max(1, count // max(1, len(episodes)))
    out = []
    for e in episodes:
        n = ds.lengths[e]
        idx = np.unique(np.linspace(0, n - 1, min(per, n)).astype(int))
        out.append(ds.episode(e)["frames"][idx[0] : idx[-1] + 1][idx - idx[0]])
    return np.concatenate(out)[:count]

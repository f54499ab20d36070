"""The world's heads on held-out real episodes: does the termination head see a death coming
when it comes, and does it cry wolf otherwise? (What an agent trained in the world lives by:
a head that never fires gives a dream without death; one that fires early, a dream of
deaths that do not happen.)

Each held-out episode is played teacher-forced: from ``context`` real frames, every recorded
step is predicted (``session.step(action, remember=False)``) and then the real frame it led to
is observed, so ``last_termination`` is the head's probability that this step ended the
episode, judged from real frames alone. The step that did end it has no frame after it (the
recording stops at the death): it is predicted and remembered, and its probability read.

Per episode that ended (``terminated`` on its last step), the death is **caught** when some step
within ``tolerance`` steps of it has a probability above ``threshold``, and **missed** otherwise.
**False alarms** are steps more than ``tolerance`` before a death (or in an episode that did not
end) whose probability passes the threshold, counted per 1,000 steps. Where the *first* alarm
lands is told apart too (**early**: before the death's window; its median offset), and the
caught fraction and false alarms at other thresholds give the head's whole trade-off (``curve``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from neuralworld.bundle import World
from neuralworld.data.store import Dataset

TOLERANCE = 4  # steps either side of the death: issue 16's bar


def death_timing(world: World, ds: Dataset, episodes: list[int], *, context: int, threshold: float = 0.5,
                 tolerance: int = TOLERANCE, sampler: str = "fast", seed: int = 0, max_episodes: int = 60,
                 span: int = 200) -> dict[str, Any]:
    """The termination head on ``episodes`` of ``ds`` (at most ``max_episodes``; of each, its last
    ``span`` steps after ``context`` real frames); see the module docstring. Returns the figures."""
    runs: list[tuple[np.ndarray, bool]] = []
    for e in episodes:
        if len(runs) >= max_episodes:
            break
        ep = ds.episode(e)
        s = max(0, ep.length - span - context)
        data = ep.load(("frames", "actions", "terminated"), max(s - 1, 0))  # from the step that led to frame s
        acts = data["actions"] if s > 0 else np.concatenate([ds.spec.noop()[None], data["actions"]])
        frames, T = data["frames"][-(ep.length - s):], ep.length - s
        if T <= context:
            continue
        runs.append((_probabilities(world, frames, acts, context, sampler, seed + e), bool(data["terminated"][-1])))
    figures = _alarms(runs, threshold, tolerance)
    offsets: list[int] = []
    early = 0
    for p, died in runs:
        fired = np.flatnonzero(p > threshold)
        if died and len(fired):
            offsets.append(int(fired[0] - (len(p) - 1)))  # < 0: before the death
            early += offsets[-1] < -tolerance
    return {
        "episodes": len(runs), **figures, "early": early,
        "median_alarm_offset": float(np.median(offsets)) if offsets else None,
        "curve": [{"threshold": t, **{k: v for k, v in _alarms(runs, t, tolerance).items() if k in CURVE_KEYS}}
                  for t in CURVE_THRESHOLDS],
    }  # fmt: skip


CURVE_THRESHOLDS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
CURVE_KEYS = ("caught_fraction", "false_alarms_per_1000")


def _alarms(runs: list[tuple[np.ndarray, bool]], threshold: float, tolerance: int) -> dict[str, Any]:
    """Deaths caught (an alarm within ``tolerance`` steps of the death) and false alarms at
    ``threshold``, over episodes' probabilities (each ending at its last step) and whether they died."""
    caught = deaths = alarms_far = steps_far = 0
    for p, died in runs:
        near = np.arange(len(p)) >= len(p) - 1 - tolerance if died else np.zeros(len(p), bool)
        alarms_far += int((p[~near] > threshold).sum())
        steps_far += int((~near).sum())
        deaths += died
        caught += bool((p[near] > threshold).any())
    return {
        "deaths": deaths, "threshold": threshold, "tolerance": tolerance, "caught": caught, "missed": deaths - caught,
        "caught_fraction": round(caught / deaths, 4) if deaths else None,
        "false_alarm_steps": alarms_far, "steps_checked": steps_far,
        "false_alarms_per_1000": round(1000 * alarms_far / steps_far, 2) if steps_far else None,
    }  # fmt: skip


def _probabilities(world: World, frames: np.ndarray, acts: np.ndarray, context: int, sampler: str, seed: int) -> np.ndarray:
    """The head's probability for each recorded step ``context - 1 .. T - 1`` of ``frames`` (T, H, W, 3)
    (step t acts on frame t and leads to frame t + 1), teacher-forced. ``acts`` (T + 1, A): ``acts[t]``
    led to frame t, so ``acts[t + 1]`` is step t's."""
    T = len(frames)
    session = world.start(frames[:context], actions=acts[:context], sampler=sampler, backend="eager", seed=seed)
    p = []
    for t in range(context - 1, T - 1):
        session.step(acts[t + 1], remember=False)
        session.observe(frames[t + 1 : t + 2], acts[t + 1 : t + 2])
        p.append(float(session.last_termination))
    session.step(acts[T])  # the step that ended it: no frame after it
    p.append(float(session.last_termination))
    return np.asarray(p)

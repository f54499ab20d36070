"""The world's heads on held-out real episodes: does the termination head see a death coming
when it comes, and does it cry wolf otherwise? (What an agent trained in the world lives by:
a head that never fires gives a dream without death; one that fires early, a dream of
deaths that do not happen.)

Each held-out episode is played teacher-forced: from ``context`` real frames, every recorded
step is predicted (``session.step(action, remember=False)``) and then the real frame it led to
is observed, so ``last_termination`` is the head's probability that this step ended the
episode, judged from real frames alone. The step that did end it has no frame after it (the
recording stops at the death): it is predicted and remembered, and its probability read.

Per episode that ended (``terminated`` on its last step), the **alarm** is the first step
whose probability passes ``threshold``: the death is *caught* when the alarm is within
``tolerance`` steps of it, *early* when it comes sooner, *missed* when it never comes.
**False alarms** are steps more than ``tolerance`` before a death (or in an episode that did
not end) whose probability passes the threshold, counted per 1,000 steps.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from neuralworld.bundle import World
from neuralworld.data.store import Dataset

TOLERANCE = 4  # steps either side of the death: issue 16's bar


def death_timing(world: World, ds: Dataset, episodes: list[int], *, context: int, threshold: float = 0.5,
                 tolerance: int = TOLERANCE, sampler: str = "fast", seed: int = 0, max_episodes: int = 20,
                 span: int = 200) -> dict[str, Any]:
    """The termination head on ``episodes`` of ``ds`` (at most ``max_episodes``; of each, its last
    ``span`` steps after ``context`` real frames); see the module docstring. Returns the figures."""
    caught = early = missed = deaths = alarms_far = steps_far = 0
    offsets: list[int] = []
    played = 0
    for e in episodes:
        if played >= max_episodes:
            break
        ep = ds.episode(e)
        s = max(0, ep.length - span - context)
        data = ep.load(("frames", "actions", "terminated"), max(s - 1, 0))  # from the step that led to frame s
        acts = data["actions"] if s > 0 else np.concatenate([ds.spec.noop()[None], data["actions"]])
        frames, T = data["frames"][-(ep.length - s):], ep.length - s
        if T <= context:
            continue
        played += 1
        p = _probabilities(world, frames, acts, context, sampler, seed + e)  # (T - context + 1,)
        steps = np.arange(context - 1, T)
        died = bool(data["terminated"][-1])
        far = steps < T - 1 - tolerance if died else np.ones(len(steps), bool)
        alarms_far += int((p[far] > threshold).sum())
        steps_far += int(far.sum())
        if not died:
            continue
        deaths += 1
        fired = np.flatnonzero(p > threshold)
        if not len(fired):
            missed += 1
            continue
        offset = int(steps[fired[0]] - (T - 1))  # < 0: before the death
        offsets.append(offset)
        if abs(offset) <= tolerance:
            caught += 1
        else:
            early += 1
    return {
        "episodes": played, "deaths": deaths, "threshold": threshold, "tolerance": tolerance,
        "caught": caught, "early": early, "missed": missed,
        "caught_fraction": round(caught / deaths, 4) if deaths else None,
        "median_alarm_offset": float(np.median(offsets)) if offsets else None,
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

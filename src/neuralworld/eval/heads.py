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
        ep = ds.episode(e)
        if played >= max_episodes:
            break
        T = ep.length
        data = ep.load(("frames", "actions", "terminated"), start=max(0, T - span - context))
        T = len(data["terminated"])
        if T <= context:
            continue
        played += 1
        p = _probabilities(world, data["frames"], data["actions"], context, sampler, seed + e)  # (T - context + 1,)
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


def _probabilities(world: World, frames: np.ndarray, actions: np.ndarray, context: int, sampler: str, seed: int) -> np.ndarray:
    """The head's probability for each recorded step ``context - 1 .. T - 1`` (step t acts on
    frame t and leads to frame t + 1), teacher-forced."""
    T = len(frames)
    led = np.concatenate([np.zeros_like(actions[:1]), actions[:-1]])  # led[t]: the step that led to frame t
    session = world.start(frames[:context], actions=led[:context], sampler=sampler, backend="eager", seed=seed)
    p = []
    for t in range(context - 1, T - 1):
        session.step(actions[t], remember=False)
        session.observe(frames[t + 1 : t + 2], actions[t : t + 1])
        p.append(float(session.last_termination))
    session.step(actions[T - 1])  # the step that ended it: no frame after it
    p.append(float(session.last_termination))
    return np.asarray(p)

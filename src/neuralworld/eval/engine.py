"""The engine a dataset was recorded from, played as a world is probed: ``engine_env`` opens it
(the real twin, ``envs.doom.DoomEnv``, where the dataset's ``source`` is a ViZDoom scenario and
ViZDoom is installed), ``EnginePlayer`` plays actions in it from its map's start. The probes and
the stability part set its figures beside the worlds'."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class EnginePlayer:
    """The recording's engine played as a world is probed: each ``play`` a new episode from the
    map's start (the same seed each time), then the actions; after the episode ends (a death)
    its last frame is held."""

    env: Any  # an envs.doom.DoomEnv
    seed: int = 0
    restart: bool = False  # after a death, a new episode goes on (long drives) instead of the last frame held

    def play(self, actions: np.ndarray) -> np.ndarray:
        frame, _ = self.env.reset(seed=self.seed)
        out, done, episode = [frame], False, 0
        for a in actions:
            if done and self.restart:
                episode += 1
                frame, _ = self.env.reset(seed=self.seed + episode)
                done = False
            elif not done:
                frame, _, terminated, truncated, _ = self.env.step(np.asarray(a, np.float32))
                done = terminated or truncated
            out.append(frame)
        return np.stack(out)


def engine_env(source: str, resolution: tuple[int, int], spec: Any) -> tuple[Any, str]:
    """The engine a dataset was recorded from (``source``: the dataset's, "vizdoom:<scenario>"),
    as its real twin (``envs.doom.DoomEnv``) at its resolution and frame skip; or (None, why)."""
    if not source.startswith("vizdoom:"):
        return None, f"recorded from {source or 'an unknown source'}, not a ViZDoom scenario: no engine to play"
    from neuralworld.envs.world import EnvError

    try:
        from neuralworld.envs.doom import DoomEnv
        from neuralworld.record.doom import frame_skip_for

        env = DoomEnv("doom/" + source.split(":", 1)[1], resolution=tuple(resolution), frame_skip=frame_skip_for(spec),
                      max_steps=10**9)  # fmt: skip
    except EnvError as e:
        return None, str(e)
    if env.spec_actions != spec:
        env.close()
        return None, f"the dataset's controls are not the engine's ({spec.diff(env.spec_actions)})"
    return env, ""

"""``WorldVectorEnv``: B playthroughs of a world advanced by one batched network call.

One batched ``WorldSession`` (``batch_size=B``) plays every element: a step is one
``session.step`` of (B, A) actions, so the network runs once for B frames instead of
B times. Autoreset follows Gymnasium's default, ``AutoresetMode.NEXT_STEP``: the step
after an element terminated or truncated returns that element's reset observation
(reward 0, not done) and ignores its action. That fits the session exactly:
``session.step(restart=mask)`` forgets those elements' memory and remembers their start
frame in place of a generated one, so every element still advances one frame per call.

A restarted element begins from the last frame of the context given at ``reset``
(the bundle's start frames, or ``options["frames"]``), where ``reset`` primed it with
the whole context: the memory rings of a batch move together and take one frame a
call. Noise comes from the session's one generator: ``reset(seed=s)`` reseeds it for
all elements (a list of seeds takes its first).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from neuralworld.actions import ActionError
from neuralworld.envs.world import EnvError, _observation_space, _start, action_space, combination_table, flat_action, restart


class WorldVectorEnv(VectorEnv):
    """``num_envs`` playthroughs of one world in one batched session; arguments as
    ``WorldEnv``'s. ``step`` takes a batched action of ``action_space`` or flat vectors
    (B, A) in the spec's units."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30, "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, world: Any = None, num_envs: int = 1, **settings: Any):
        if int(num_envs) < 1:
            raise EnvError(f"num_envs must be >= 1, got {num_envs}")
        self.num_envs = int(num_envs)
        s = _start(self, world, settings, batch_size=self.num_envs)
        self.single_action_space = action_space(self.spec_actions)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.single_observation_space = _observation_space(self.session, s.observation)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self._steps = np.zeros(self.num_envs, np.int64)
        self._autoreset = np.zeros(self.num_envs, bool)

    def reset(self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        if isinstance(seed, (list, tuple)):
            seed = seed[0] if seed else None
        super().reset(seed=seed)
        restart(self.session, seed, options)
        self._steps[:] = 0
        self._autoreset[:] = False
        return self._observation(), {}

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        a = flat_action(self.spec_actions, self.single_action_space, actions, batch=self.num_envs)  # (B, A)
        restart = self._autoreset.copy()
        self.session.step(a, restart=restart)
        self._steps = np.where(restart, 0, self._steps + 1)
        p = np.atleast_1d(np.asarray(self.session.last_termination, np.float64))  # (B,); B = 1 is an unbatched session
        reward = np.where(restart, 0.0, np.atleast_1d(np.asarray(self.session.last_reward, np.float64)))
        terminated = ~restart & (p > self.termination_threshold)
        truncated = ~restart & ~terminated & (self._steps >= self.max_steps)
        self._autoreset = terminated | truncated
        info = {"step": self._steps.copy(), "termination_probability": p}
        return self._observation(), reward, terminated, truncated, info

    def render(self) -> np.ndarray | None:
        return self.session.frame.copy() if self.render_mode == "rgb_array" else None

    def _observation(self) -> np.ndarray:
        if self.observation_kind == "latent":
            return self.session.latent.float().cpu().numpy()  # (B, C, h, w)
        return self.session.frame.reshape(self.num_envs, *self.session.resolution, 3).copy()  # (B, H, W, 3) uint8


class DiscreteVectorActions(gym.vector.VectorActionWrapper):
    """``DiscreteActions`` for a vector env: ``MultiDiscrete([n] * B)``, element i playing
    ``table[actions[i]]``."""

    def __init__(self, env: WorldVectorEnv, combos: Any = None):
        super().__init__(env)
        self.table = combination_table(env.spec_actions, combos)  # (n, A)
        self.single_action_space = gym.spaces.Discrete(len(self.table))
        self.action_space = batch_space(self.single_action_space, env.num_envs)

    def actions(self, actions: Any) -> np.ndarray:
        arr = np.asarray(actions)
        if arr.shape != (self.num_envs,) or not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() >= len(self.table):
            raise ActionError(f"actions must be {self.num_envs} integers in [0, {len(self.table)}), got {actions!r}")
        return self.table[arr]  # (B, A)

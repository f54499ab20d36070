"""``WorldVecEnv``: B playthroughs of a world in one batched network call, as
Stable-Baselines3's ``VecEnv`` (SB3 is an optional dependency: only ``agents`` imports this).

SB3 wants same-step autoreset: the step at which element i ends returns, for i, the
reset observation, with the last frame in ``infos[i]["terminal_observation"]``.
``WorldVectorEnv`` (Gymnasium's ``NEXT_STEP`` mode) restarts an element on the call after
it ended, because the batch's memory rings move together and only a network call can
advance them. The two meet here: at the end step this env returns the element's start
frame (the frame ``WorldVectorEnv`` will restart it at, known without a network call) and
the next call restarts it, which shows the start frame once more, pays nothing and ignores
that one action. So every episode after the first opens with one frame held still; the
policy sees nothing that did not happen in the world.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from stable_baselines3.common.vec_env import VecEnv

from neuralworld.envs.vector import DiscreteVectorActions, WorldVectorEnv


class WorldVecEnv(VecEnv):
    """``DiscreteVectorActions(WorldVectorEnv(world, num_envs, **settings), combos)`` as an SB3
    ``VecEnv``: actions are (B,) indices into the Discrete set, observations (B, H, W, 3) uint8."""

    def __init__(self, world: Any, num_envs: int, combos: Any = None, **settings: Any):
        self.env = DiscreteVectorActions(WorldVectorEnv(world, num_envs, **settings), combos)
        self.render_mode = self.env.unwrapped.render_mode
        super().__init__(num_envs, self.env.single_observation_space, self.env.single_action_space)
        self._actions: np.ndarray | None = None
        self._start: np.ndarray | None = None

    def reset(self) -> np.ndarray:
        obs, info = self.env.reset(seed=self._seeds[0], options=self._options[0] or None)
        self._reset_seeds()
        self._reset_options()
        self.reset_infos = [{} for _ in range(self.num_envs)]
        self._start = obs.copy()  # where an element starts over (WorldVectorEnv restarts at the context's last frame)
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions).reshape(self.num_envs).astype(np.int64)

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        if self._start is None or self._actions is None:
            raise RuntimeError("WorldVecEnv.step before reset")
        obs, reward, terminated, truncated, info = self.env.step(self._actions)
        done = terminated | truncated
        infos: list[dict[str, Any]] = [
            {"termination_probability": float(info["termination_probability"][i])} for i in range(self.num_envs)
        ]
        for i in np.flatnonzero(done):
            infos[i]["terminal_observation"] = obs[i].copy()
            infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
            obs[i] = self._start[i]
        return obs, reward.astype(np.float32), done, infos

    def close(self) -> None:
        self.env.close()

    def get_images(self) -> list[np.ndarray]:
        frames = self.env.unwrapped.session.frame.reshape(self.num_envs, *self.env.unwrapped.session.resolution, 3)
        return list(frames.copy())

    # one env underneath: every index reads and writes it
    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        return [getattr(self.env.unwrapped, attr_name) for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        setattr(self.env.unwrapped, attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: Any = None, **method_kwargs: Any) -> list[Any]:
        result = getattr(self.env.unwrapped, method_name)(*method_args, **method_kwargs)
        return [result for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type, indices: Any = None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]

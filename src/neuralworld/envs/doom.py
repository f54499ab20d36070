"""``DoomEnv``: the real twin of a world recorded in ViZDoom, as a ``gymnasium.Env``.

Same ActionSpec (``record.doom.doom_action_spec``), same observations (uint8 frames at
the recorded resolution, resized as the recorder resizes them) and same frame skip as
the recordings, so one policy plays the world and the engine unchanged: ``step`` takes
the same action space, or the same flat vectors, as ``WorldEnv``'s. The game is set up
by the recorder's ``DoomEngine`` (one setup, not two). The reward is the engine's:
``take_cover`` pays 1 per tic alive, so an episode's return is the tics survived.

Why not ``vizdoom.gymnasium_wrapper``: its envs take each scenario's .cfg buttons
(take_cover: MOVE_LEFT, MOVE_RIGHT only) as a ``Discrete``/``Dict`` space of their own
and return a dict observation at the engine's resolution, so a policy trained in a
world of ours could not play it unchanged.

Give ``world=PATH`` to take the resolution and frame skip from a world (and have its
ActionSpec checked), or ``resolution=(H, W)`` and ``frame_skip`` as recorded.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from neuralworld.actions import ActionSpec
from neuralworld.envs.world import DEFAULT_MAX_STEPS, EnvError, action_space, flat_action, open_world
from neuralworld.record.doom import TURN_LIMIT, DoomEngine, doom_action_spec, frame_skip_for, parse_env


class DoomEnv(gym.Env):
    """A ViZDoom scenario (``env="doom/take_cover"``) as the world's twin; see the module docstring."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 17.5}

    def __init__(
        self,
        env: str = "doom/take_cover",
        *,
        world: Any = None,
        resolution: tuple[int, int] | None = None,
        frame_skip: int | None = None,
        max_steps: int = DEFAULT_MAX_STEPS,
        render_mode: str | None = None,
    ):
        try:
            _, scenario = parse_env(env)
        except Exception as e:  # DatasetError: the recorder's message lists the scenarios
            raise EnvError(str(e)) from None
        if world is not None:
            w = open_world(world)
            resolution = resolution or tuple(w.resolution)
            frame_skip = frame_skip or frame_skip_for(w.spec)
            if doom_action_spec(frame_skip) != w.spec:
                raise EnvError(
                    f"{w.name}'s controls are not ViZDoom's at frame skip {frame_skip}: "
                    f"world {w.spec.describe()} vs engine {doom_action_spec(frame_skip).describe()} ({w.spec.diff(doom_action_spec(frame_skip))})"
                )
        resolution = tuple(resolution or (128, 128))
        frame_skip = int(frame_skip or 2)
        if int(max_steps) < 1:
            raise EnvError(f"max_steps must be >= 1, got {max_steps}")
        if render_mode not in (None, "rgb_array"):
            raise EnvError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        try:
            import vizdoom  # noqa: F401
        except ImportError:
            raise EnvError("ViZDoom is not installed: pip install 'neuralworld[doom]' (or run ./setup.sh)") from None
        self.env_name, self.max_steps, self.render_mode = env, int(max_steps), render_mode
        self.spec_actions: ActionSpec = doom_action_spec(frame_skip)
        self.metadata = {**self.metadata, "render_fps": self.spec_actions.fps}
        self.action_space = action_space(self.spec_actions)
        self.observation_space = spaces.Box(0, 255, (*resolution, 3), np.uint8)
        self.engine = DoomEngine(scenario, resolution, frame_skip, seed=0)  # type: ignore[arg-type]
        self._frame = np.zeros((*resolution, 3), np.uint8)
        self._steps = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if options:
            raise EnvError(f"the real game takes no reset options, got {sorted(options)}")
        # an engine seed from the env's own generator: reset(seed=s) repeats an episode exactly
        self.engine.game.set_seed(int(self.np_random.integers(2**31)))
        self.engine.game.new_episode()
        self._steps = 0
        self._frame = self.engine.frame(self.engine.game.get_state())
        return self._frame.copy(), {"step": 0}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        a = flat_action(self.spec_actions, self.action_space, action)
        a[-1] = np.clip(a[-1], -TURN_LIMIT, TURN_LIMIT)
        _, reward = self.engine.step(a)
        self._steps += 1
        terminated = bool(self.engine.game.is_episode_finished())  # died (or left the map)
        if not terminated:
            self._frame = self.engine.frame(self.engine.game.get_state())
        truncated = not terminated and self._steps >= self.max_steps
        return self._frame.copy(), float(reward), terminated, truncated, {"step": self._steps}

    def render(self) -> np.ndarray | None:
        return self._frame.copy() if self.render_mode == "rgb_array" else None

    def close(self) -> None:
        if getattr(self, "engine", None) is not None:
            self.engine.close()
            self.engine = None  # type: ignore[assignment]

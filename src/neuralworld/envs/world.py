"""``WorldEnv``: a world bundle as a ``gymnasium.Env``, and the action spaces of an ActionSpec.

One ``WorldSession`` does all the work (STYLE habit 3): ``reset`` is ``session.reset``,
``step`` is ``session.step``; the reward is the reward head's estimate for the step
(``session.last_reward``) and the episode terminates where the termination head's
probability (``session.last_termination``) passes ``termination_threshold``.

Action spaces (``action_space(spec)``): an ActionSpec's buttons are multi-hot and its
axes continuous, so a spec with both is ``Dict(buttons=MultiBinary(nb), axes=Box(low,
high))``; buttons alone are a ``MultiBinary``, axes alone a ``Box``. ``step`` also takes
the flat vector ``[buttons..., axes...]`` in the spec's units (``ActionSpec.make``), so
one policy's actions play the world and its real twin (``envs.doom``) unchanged.
``DiscreteActions`` offers a ``Discrete`` set of button/turn combinations for libraries
that take no mixed spaces (Stable-Baselines3's PPO).

Which worlds have heads: the transformer world and the warp world predict reward and
termination for every frame they remember (trained on the dataset's rewards and
deaths: a world recorded without monsters, like the shipped one, has heads that say
0 and "alive" always). The U-Net baseline (``model/unet.py``) has none: an env over it
is refused unless ``require_heads=False`` (then reward 0, episodes end only at the
step limit).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from neuralworld.actions import ActionError, ActionSpec

DEFAULT_MAX_STEPS = 1000
DEFAULT_THRESHOLD = 0.5
NO_HEADS = {"unet-baseline": "the U-Net baseline (model/unet.py) has no reward or termination heads",
            "field": "the field world (model/field.py) has no reward or termination heads"}
"""World kinds (``World.model``) whose networks predict neither reward nor termination, and why."""


class EnvError(ValueError):
    """A world, or settings, an environment cannot be made from; the message says why."""


# ---------------------------------------------------------------------------
# spaces
# ---------------------------------------------------------------------------
def action_space(spec: ActionSpec, seed: int | None = None) -> spaces.Space:
    """The Gymnasium space of ``spec``'s actions (see the module docstring)."""
    nb = len(spec.buttons)
    axes = None
    if spec.axes:
        low = np.array([a.low for a in spec.axes], np.float32)
        high = np.array([a.high for a in spec.axes], np.float32)
        axes = spaces.Box(low, high, dtype=np.float32, seed=seed)
    if nb and axes is not None:
        return spaces.Dict({"buttons": spaces.MultiBinary(nb), "axes": axes}, seed=seed)
    return spaces.MultiBinary(nb, seed=seed) if nb else axes  # type: ignore[return-value]


def flat_action(spec: ActionSpec, space: spaces.Space, action: Any, batch: int | None = None) -> np.ndarray:
    """An action of ``space`` (or a flat vector in the spec's units) -> validated float32
    (A,), or (B, A) where ``batch`` is B (a batched space's action). Anything else is an
    ``ActionError`` naming the space and the spec; nothing is changed by a refused action."""
    lead = () if batch is None else (batch,)
    if isinstance(action, Mapping):
        if not isinstance(space, spaces.Dict) or set(action) != set(space.spaces):
            raise ActionError(f"action keys {sorted(action)} do not fit the action space {space}")
        parts = [np.asarray(action["buttons"], np.float32), np.asarray(action["axes"], np.float32)]
        if any(p.shape[:-1] != lead for p in parts):
            raise ActionError(f"action parts have shapes {[p.shape for p in parts]}; the space {space} wants leading {lead}")
        action = np.concatenate(parts, axis=-1)
    arr = np.asarray(action)
    if arr.dtype == object:
        raise ActionError(f"an action of {space} or a vector {lead + (spec.size,)} in {spec.describe()}, got {action!r}")
    try:
        arr = spec.validate(arr)
    except ActionError as e:
        raise ActionError(f"{e} (action space {space}; {spec.describe()})") from None
    if arr.shape != lead + (spec.size,):
        raise ActionError(f"an action here has shape {lead + (spec.size,)} ({spec.describe()}), got {arr.shape}")
    return arr


def heads_problem(world: Any) -> str:
    """Why ``world`` gives no reward or termination ('' when its heads do)."""
    return NO_HEADS.get(getattr(world, "model", "world"), "")


def open_world(world: Any) -> Any:
    """A loaded ``World`` from a path or as is (many envs may share one world's networks)."""
    if isinstance(world, (str, os.PathLike)):
        from neuralworld.bundle import load_bundle

        return load_bundle(world)
    if world is None:
        raise EnvError("an env over a world needs world=PATH (a world bundle folder) or a loaded World")
    return world


def check_heads(world: Any, require_heads: bool) -> None:
    problem = heads_problem(world)
    if problem and require_heads:
        raise EnvError(
            f"{getattr(world, 'name', 'this world')}: {problem}, and this env's reward and termination come from them; "
            "train a transformer or warp world, or pass require_heads=False (reward 0, episodes end at the step limit)"
        )


# ---------------------------------------------------------------------------
# the env
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class EnvSettings:
    """What an env over a world is asked to do: the keywords of ``WorldEnv`` and
    ``WorldVectorEnv`` (and of ``gymnasium.make`` for them) after ``world``."""

    observation: str = "frame"
    """``"frame"`` (uint8 (H, W, 3), the default) or ``"latent"`` (the dynamics' latent of the
    frame, float32 (C, h, w): no pixels to look at, faster for a policy that reads latents)."""
    max_steps: int = DEFAULT_MAX_STEPS
    """Steps per episode before truncation."""
    termination_threshold: float = DEFAULT_THRESHOLD
    """The termination head's probability above which an episode ends."""
    sampler: str = "fast"
    backend: str = "eager"
    """The session's (``WorldSession``); eager by default: exact, and nothing to export first."""
    device: str | None = None
    require_heads: bool = True
    """Refuse a world without reward/termination heads (default)."""
    render_mode: str | None = None
    """None or ``"rgb_array"``."""


def _start(env: Any, world: Any, settings: dict[str, Any], batch_size: int | None = None) -> EnvSettings:
    """What both envs do first: check the settings, open the world and its one session."""
    try:
        s = EnvSettings(**settings)
    except TypeError as e:
        raise EnvError(f"unknown env setting: {e}; the settings are {sorted(EnvSettings.__dataclass_fields__)}") from None
    _check_settings(s.observation, s.max_steps, s.termination_threshold, s.render_mode)
    env.world = open_world(world)
    check_heads(env.world, s.require_heads)
    batch = {} if batch_size is None else {"batch_size": batch_size}
    env.session = env.world.start(sampler=s.sampler, backend=s.backend, device=s.device, **batch)
    env.spec_actions = env.world.spec
    env.observation_kind, env.max_steps, env.termination_threshold = s.observation, int(s.max_steps), float(s.termination_threshold)
    env.render_mode = s.render_mode
    env.metadata = {**env.metadata, "render_fps": env.spec_actions.fps}
    return s


def restart(session: Any, seed: int | None, options: dict[str, Any] | None) -> None:
    """An env's ``reset``: the session starts over from ``options["frames"]`` (with
    ``options["actions"]``) or the bundle's start frames, its noise reseeded by ``seed``."""
    options = dict(options or {})
    unknown = set(options) - {"frames", "actions"}
    if unknown:
        raise EnvError(f"reset options are 'frames' and 'actions' (every batch element starts over), got {sorted(unknown)}")
    session.reset(options.get("frames"), actions=options.get("actions"), seed=seed)


class WorldEnv(gym.Env):
    """A world as a Gymnasium environment: ``WorldEnv(world, **settings)``.

    ``world``: a world bundle folder or a loaded ``World``; ``settings``: ``EnvSettings``'
    fields (observation, max_steps, termination_threshold, sampler, backend, device,
    require_heads, render_mode).

    ``reset(seed=s)`` reseeds the session's noise; ``options={"frames": F, "actions": A}``
    starts from frames F (an image, (T, H, W, 3) or as ``WorldSession.reset`` takes them)
    instead of the bundle's start frames.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, world: Any = None, **settings: Any):
        s = _start(self, world, settings)
        self.action_space = action_space(self.spec_actions)
        self.observation_space = _observation_space(self.session, s.observation)
        self._steps = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        super().reset(seed=seed)
        restart(self.session, seed, options)
        self._steps = 0
        return self._observation(), {"step": 0}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        a = flat_action(self.spec_actions, self.action_space, action)  # refused before anything moves
        self.session.step(a)
        self._steps += 1
        p = float(self.session.last_termination)
        terminated = p > self.termination_threshold
        truncated = not terminated and self._steps >= self.max_steps
        info = {"step": self._steps, "termination_probability": p}
        return self._observation(), float(self.session.last_reward), terminated, truncated, info

    def render(self) -> np.ndarray | None:
        return self.session.frame.copy() if self.render_mode == "rgb_array" else None

    def _observation(self) -> np.ndarray:
        if self.observation_kind == "latent":
            return self.session.latent[0].float().cpu().numpy()  # (C, h, w)
        return self.session.frame.copy()  # (H, W, 3) uint8


def _check_settings(observation: str, max_steps: int, threshold: float, render_mode: str | None) -> None:
    if observation not in ("frame", "latent"):
        raise EnvError(f"observation must be 'frame' or 'latent', got {observation!r}")
    if int(max_steps) < 1:
        raise EnvError(f"max_steps must be >= 1, got {max_steps}")
    if not 0.0 <= float(threshold) <= 1.0:
        raise EnvError(f"termination_threshold is a probability in [0, 1], got {threshold}")
    if render_mode not in (None, "rgb_array"):
        raise EnvError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")


def _observation_space(session: Any, observation: str) -> spaces.Box:
    if observation == "latent":
        shape = tuple(session.latent.shape[1:])  # (C, h, w)
        return spaces.Box(-np.inf, np.inf, shape, np.float32)
    H, W = session.resolution
    return spaces.Box(0, 255, (H, W, 3), np.uint8)


# ---------------------------------------------------------------------------
# a Discrete set of actions
# ---------------------------------------------------------------------------
def default_combinations(spec: ActionSpec) -> list[dict[str, float]]:
    """No-op; each button alone; each axis at half its range either way; and where the
    spec has ``forward`` and ``turn``, forward while turning either way."""
    combos: list[dict[str, float]] = [{}]
    combos += [{b: 1.0} for b in spec.buttons]
    for ax in spec.axes:
        combos += [{ax.name: ax.low / 2}, {ax.name: ax.high / 2}]
    if "forward" in spec.buttons and "turn" in spec.names:
        turn = spec.axes[spec.names.index("turn") - len(spec.buttons)]
        combos += [{"forward": 1.0, "turn": turn.low / 2}, {"forward": 1.0, "turn": turn.high / 2}]
    return combos


def parse_combinations(text: str) -> list[dict[str, float]]:
    """``"noop;strafe_left=1;forward,turn=-5"`` -> ``[{}, {"strafe_left": 1.0}, {"forward": 1.0, "turn": -5.0}]``:
    the combinations of a Discrete action set as a user types them (``;`` between combinations,
    ``,`` between the controls of one, ``NAME`` alone for 1). Names are checked by ``combination_table``."""
    combos = []
    for part in text.split(";"):
        part = part.strip()
        if part in ("", "noop"):
            combos.append({})
            continue
        combo = {}
        for item in part.split(","):
            name, sep, value = item.partition("=")
            try:
                combo[name.strip()] = float(value) if sep else 1.0
            except ValueError:
                raise EnvError(f"{item!r} is not NAME or NAME=NUMBER") from None
        combos.append(combo)
    return combos


def combination_table(spec: ActionSpec, combos: Sequence[Mapping[str, float]] | None = None) -> np.ndarray:
    """(n, A) action vectors of ``combos`` (default ``default_combinations``), validated."""
    combos = default_combinations(spec) if combos is None else combos
    if not combos:
        raise EnvError("a Discrete action set needs at least one combination")
    return np.stack([spec.make(dict(c)) for c in combos])


class DiscreteActions(gym.ActionWrapper):
    """``Discrete(n)`` over ``n`` combinations of buttons and axes (``combination_table``):
    action ``i`` plays the flat vector ``table[i]``. Works on any env whose ``step`` takes
    flat vectors of the spec's units (``WorldEnv``, the real twin ``DoomEnv``)."""

    def __init__(self, env: gym.Env, combos: Sequence[Mapping[str, float]] | None = None):
        super().__init__(env)
        self.spec_actions: ActionSpec = env.unwrapped.spec_actions
        self.combos = [dict(c) for c in (default_combinations(self.spec_actions) if combos is None else combos)]
        self.table = combination_table(self.spec_actions, self.combos)  # (n, A)
        self.action_space = spaces.Discrete(len(self.table))

    def action(self, action: Any) -> np.ndarray:
        if not self.action_space.contains(action):
            raise ActionError(f"action {action!r} is outside Discrete({len(self.table)}) (combinations {self.combos})")
        return self.table[int(action)]

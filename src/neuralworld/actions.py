"""ActionSpec: the one definition of a world's controls.

Every dataset declares its controls once; the model builds its action encoder
from it, the player maps keys and mouse to it, the gym env derives its
``action_space`` from it and the browser export carries it.

An action is a float32 vector laid out as ``[buttons..., axes...]``:

* **buttons** are discrete and multi-hot (several may be held at once): 0 or 1;
* **axes** are continuous with a closed range ``[low, high]`` in their own unit
  (degrees of turn per frame, metres of translation per frame, ...).

The spec also carries the frame rate: an action is what was applied during one
frame interval. This module imports nothing of ours.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
FORMAT_VERSION = 1


class ActionError(ValueError):
    """An action, or an array of them, does not fit its ActionSpec."""


@dataclass(frozen=True)
class Axis:
    """A continuous control with a range, e.g. ``Axis("turn", -12, 12, "deg/frame")``."""

    name: str
    low: float
    high: float
    unit: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "low", float(self.low))
        object.__setattr__(self, "high", float(self.high))
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low >= self.high:
            raise ValueError(f"axis {self.name!r}: need finite low < high, got [{self.low}, {self.high}]")


@dataclass(frozen=True)
class ActionSpec:
    """Named buttons (multi-hot) + named continuous axes with ranges + frame rate."""

    buttons: tuple[str, ...]
    axes: tuple[Axis, ...] = ()
    fps: float = 30.0
    # free-form descriptions, e.g. {"forward": "W"}; not part of equality
    descriptions: Mapping[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "buttons", tuple(self.buttons))
        object.__setattr__(self, "axes", tuple(self.axes))
        names = self.names
        if not names:
            raise ValueError("an ActionSpec needs at least one button or axis")
        for n in names:
            if not isinstance(n, str) or not _NAME.match(n):
                raise ValueError(f"control name {n!r} must be lower_snake_case")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"control names must be unique, repeated: {dupes}")
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"fps must be a positive number, got {self.fps}")

    # -- layout ---------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.buttons) + tuple(a.name for a in self.axes)

    @property
    def size(self) -> int:
        return len(self.buttons) + len(self.axes)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise ActionError(f"unknown control {name!r}; this world has {list(self.names)}") from None

    # -- building and reading single actions ----------------------------------
    def noop(self) -> np.ndarray:
        """No button held, every axis at 0 clipped into its range."""
        a = np.zeros(self.size, np.float32)
        for i, ax in enumerate(self.axes):
            a[len(self.buttons) + i] = min(max(0.0, ax.low), ax.high)
        return a

    def make(self, values: Mapping[str, float | bool] | None = None, /, **kw: float | bool) -> np.ndarray:
        """An action vector from names: ``spec.make(forward=1, turn=-5.0)``.

        Unknown names are an error; controls not named are at rest (see ``noop``).
        """
        merged = {**(values or {}), **kw}
        a = self.noop()
        for name, v in merged.items():
            a[self.index(name)] = float(v)
        return self.validate(a)

    def to_dict(self, action: np.ndarray) -> dict[str, float]:
        action = self.validate(action)
        if action.ndim != 1:
            raise ActionError(f"to_dict takes one action of shape ({self.size},), got {action.shape}")
        return {n: float(v) for n, v in zip(self.names, action)}

    # -- validation ----------------------------------------------------------
    def validate(self, actions: Any, *, atol: float = 1e-4) -> np.ndarray:
        """Check ``actions`` (shape ``(..., size)``) against this spec; return it as float32.

        Raises ActionError naming the first offending control and index.
        """
        try:
            arr = np.asarray(actions, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise ActionError(f"actions must be numeric, got {type(actions).__name__}: {e}") from None
        if arr.ndim == 0 or arr.shape[-1] != self.size:
            raise ActionError(
                f"actions must have shape (..., {self.size}) for controls {list(self.names)}, got shape {arr.shape}"
            )
        if arr.size == 0:
            return arr
        flat = arr.reshape(-1, self.size)
        bad = ~np.isfinite(flat)
        if bad.any():
            row, col = map(int, np.argwhere(bad)[0])
            raise ActionError(f"control {self.names[col]!r} is {flat[row, col]} at index {row}: must be finite")
        nb = len(self.buttons)
        if nb:
            b = flat[:, :nb]
            off = (b != 0) & (b != 1)
            if off.any():
                row, col = map(int, np.argwhere(off)[0])
                raise ActionError(f"button {self.buttons[col]!r} is {b[row, col]} at index {row}: buttons are 0 or 1")
        for i, ax in enumerate(self.axes):
            col = flat[:, nb + i]
            out = (col < ax.low - atol) | (col > ax.high + atol)
            if out.any():
                row = int(np.argmax(out))
                raise ActionError(
                    f"axis {ax.name!r} is {col[row]} at index {row}: outside its range [{ax.low}, {ax.high}]"
                )
        return arr

    # -- what the model sees --------------------------------------------------
    def normalize(self, actions: np.ndarray) -> np.ndarray:
        """Buttons stay 0/1; axes map linearly from [low, high] to [-1, 1]."""
        arr = np.array(actions, dtype=np.float32, copy=True)
        nb = len(self.buttons)
        for i, ax in enumerate(self.axes):
            arr[..., nb + i] = (arr[..., nb + i] - ax.low) / (ax.high - ax.low) * 2.0 - 1.0
        return arr

    def denormalize(self, actions: np.ndarray) -> np.ndarray:
        arr = np.array(actions, dtype=np.float32, copy=True)
        nb = len(self.buttons)
        for i, ax in enumerate(self.axes):
            arr[..., nb + i] = (arr[..., nb + i] + 1.0) / 2.0 * (ax.high - ax.low) + ax.low
        return arr

    # -- serialisation ---------------------------------------------------------
    def to_json_dict(self) -> dict[str, Any]:
        return {
            "version": FORMAT_VERSION,
            "fps": self.fps,
            "buttons": list(self.buttons),
            "axes": [{"name": a.name, "low": a.low, "high": a.high, "unit": a.unit} for a in self.axes],
            "descriptions": dict(self.descriptions),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_json_dict(), sort_keys=True)

    @classmethod
    def from_json_dict(cls, d: Mapping[str, Any]) -> "ActionSpec":
        try:
            version = int(d.get("version", FORMAT_VERSION))
            if version > FORMAT_VERSION:
                raise ValueError(f"ActionSpec format version {version} is newer than this neuralworld ({FORMAT_VERSION})")
            axes = tuple(
                Axis(str(a["name"]), float(a["low"]), float(a["high"]), str(a.get("unit", ""))) for a in d.get("axes", [])
            )
            return cls(
                buttons=tuple(str(b) for b in d.get("buttons", [])),
                axes=axes,
                fps=float(d["fps"]),
                descriptions={str(k): str(v) for k, v in dict(d.get("descriptions", {})).items()},
            )
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"not a valid ActionSpec: {e!r} in {dict(d)!r}") from None

    @classmethod
    def from_json(cls, text: str) -> "ActionSpec":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"ActionSpec is not valid JSON: {e}") from None
        if not isinstance(d, dict):
            raise ValueError("ActionSpec JSON must be an object")
        return cls.from_json_dict(d)

    def describe(self) -> str:
        parts = [*self.buttons, *(f"{a.name}[{a.low:g},{a.high:g}]{a.unit and ' ' + a.unit}" for a in self.axes)]
        return f"{self.size} controls @ {self.fps:g} fps: " + ", ".join(parts)

    def diff(self, other: "ActionSpec") -> str:
        """Human-readable reason two specs differ ('' when equal)."""
        if self == other:
            return ""
        reasons = []
        if self.buttons != other.buttons:
            reasons.append(f"buttons {list(self.buttons)} vs {list(other.buttons)}")
        if self.axes != other.axes:
            reasons.append(f"axes {[(a.name, a.low, a.high) for a in self.axes]} vs {[(a.name, a.low, a.high) for a in other.axes]}")
        if self.fps != other.fps:
            reasons.append(f"fps {self.fps:g} vs {other.fps:g}")
        return "; ".join(reasons)


def camera_motion_spec(fps: float, translation: float = 1.0, rotation: float = 1.0) -> ActionSpec:
    """Controls for footage: translation x, y, z and rotation yaw, pitch, roll per frame,
    normalised so that ``translation``/``rotation`` are the ends of each range."""
    t, r = float(translation), float(rotation)
    return ActionSpec(
        buttons=(),
        axes=(
            Axis("move_x", -t, t, "norm"),
            Axis("move_y", -t, t, "norm"),
            Axis("move_z", -t, t, "norm"),
            Axis("yaw", -r, r, "norm"),
            Axis("pitch", -r, r, "norm"),
            Axis("roll", -r, r, "norm"),
        ),
        fps=fps,
    )


def stack(spec: ActionSpec, actions: Sequence[Mapping[str, float]]) -> np.ndarray:
    """Actions given as dicts → validated (T, size) array."""
    return np.stack([spec.make(a) for a in actions]) if actions else np.zeros((0, spec.size), np.float32)

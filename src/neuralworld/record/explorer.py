"""Recording policies: what the recorded player does decides what the world knows.

Per-frame random actions jitter in place and never leave the first room, so the
default policy is an **explorer** with:

* persistence — every choice (a heading to walk, a strafe, a sweep of the view)
  is held for a random while, like a person's;
* forward bias — it walks forward most of the time, backs up rarely;
* novelty — it keeps a grid of visited cells and, when it picks a new heading,
  prefers headings whose cells ahead it has seen least;
* getting unstuck — when forward is held but the pose stops moving it presses
  *use* (doors, lifts, switches), backs off and turns away;
* view sweeps — smooth turning with a random rate, sometimes a full look around,
  so the data holds every kind of camera motion the player will try;
* room to walk — where the engine gives depth, it steers away from a wall
  before touching it and prefers open headings, so the data is mostly views
  down corridors and across rooms, not close-ups of a wall.

Policies are engine-agnostic: they see the pose (x, y, angle in degrees) and,
optionally, the clearance ahead (median depth in the left, centre and right
thirds of the view, in the engine's depth units) and return a dict of control
values by name; the recorder turns it into an action through the ActionSpec.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

CELL = 64.0  # map units per coverage cell (Doom: a corridor is ~128 wide)
NEAR = 18.0  # clearance (ViZDoom depth units, 0-255) under which a wall is "close"


def coverage_cells(xy: np.ndarray, cell: float = CELL) -> int:
    """Distinct ``cell``-sized squares visited by a path of (x, y) positions."""
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    xy = xy[np.isfinite(xy).all(axis=1)]
    if not len(xy):
        return 0
    return int(len(np.unique(np.floor(xy / cell).astype(np.int64), axis=0)))


class RandomPolicy:
    """Independent random controls every frame: the baseline an explorer must beat."""

    def __init__(self, seed: int, turn_limit: float):
        self.rng = np.random.default_rng(seed)
        self.turn_limit = turn_limit

    def act(self, x: float, y: float, angle: float, clearance: tuple[float, float, float] | None = None) -> dict[str, float]:
        r = self.rng
        return {
            "forward": float(r.random() < 0.5),
            "back": float(r.random() < 0.5),
            "strafe_left": float(r.random() < 0.5),
            "strafe_right": float(r.random() < 0.5),
            "attack": float(r.random() < 0.1),
            "use": float(r.random() < 0.1),
            "turn": float(r.uniform(-self.turn_limit, self.turn_limit)),
        }


class StrafePolicy:
    """Take Cover's own buttons at random, as World Models recorded it: no-op, strafe left or strafe
    right, each held for 1 to 8 frames; the view never turns, so what comes at the player stays in
    sight (a random turn faces it away from the monsters, and fireballs then kill unseen)."""

    CHOICES = ({}, {"strafe_left": 1.0}, {"strafe_right": 1.0})

    def __init__(self, seed: int, turn_limit: float):
        self.rng = np.random.default_rng(seed)
        self.held, self.left = self.CHOICES[0], 0

    def act(self, x: float, y: float, angle: float, clearance: tuple[float, float, float] | None = None) -> dict[str, float]:
        if self.left <= 0:
            self.held, self.left = self.CHOICES[int(self.rng.integers(3))], int(self.rng.integers(1, 9))
        self.left -= 1
        return {"forward": 0.0, "back": 0.0, "strafe_left": 0.0, "strafe_right": 0.0, "attack": 0.0, "use": 0.0, "turn": 0.0,
                **self.held}


@dataclass
class _Plan:
    kind: str  # "walk" | "sweep" | "strafe" | "unstick" | "look"
    steps: int
    heading: float = 0.0  # target heading, degrees (walk)
    turn_rate: float = 0.0  # degrees per frame (sweep / look / unstick)
    strafe: str = ""  # "strafe_left" | "strafe_right"


@dataclass
class Explorer:
    """Persistent, forward-biased, novelty-seeking exploration (see module doc).

    ``turn_limit`` is the largest turn per frame the ActionSpec allows (degrees).
    """

    seed: int
    turn_limit: float = 15.0
    cell: float = CELL
    visits: dict[tuple[int, int], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        self.plan: _Plan | None = None
        self.trail: list[tuple[float, float]] = []
        self.turn_now = 0.0  # smoothed turn rate, so the view never snaps
        self.stuck_frames = 0

    # -- helpers -----------------------------------------------------------------
    def _cell(self, x: float, y: float) -> tuple[int, int]:
        return int(math.floor(x / self.cell)), int(math.floor(y / self.cell))

    def _pick_heading(self, x: float, y: float, angle: float, clearance: tuple[float, float, float] | None) -> float:
        """A heading toward the least-visited cells ahead (softmax over novelty),
        preferring open space in view when depth is known."""
        candidates = angle + np.arange(0, 360, 30.0)
        scores = []
        for i, h in enumerate(candidates):
            dx, dy = math.cos(math.radians(h)), math.sin(math.radians(h))
            seen = sum(self.visits.get(self._cell(x + dx * d * self.cell, y + dy * d * self.cell), 0) for d in (1, 2, 3, 4))
            # a slight preference for not turning round: keeps walks long
            turn_cost = abs((h - angle + 180) % 360 - 180) / 180.0
            open_bonus = 0.0
            if clearance is not None:
                # 0° is straight ahead (centre third); +30° lies in the left third, -30° (330°) in the right
                view = {0: clearance[1], 1: clearance[0], 11: clearance[2]}.get(i)
                if view is not None:
                    open_bonus = 1.5 * min(view, 4 * NEAR) / (4 * NEAR) - (2.0 if view < NEAR else 0.0)
            scores.append(-seen - 0.5 * turn_cost + open_bonus)
        s = np.array(scores) * 1.5
        p = np.exp(s - s.max())
        p /= p.sum()
        return float(candidates[self.rng.choice(len(candidates), p=p)] % 360)

    def _new_plan(self, x: float, y: float, angle: float, clearance: tuple[float, float, float] | None) -> _Plan:
        r = self.rng
        u = r.random()
        if u < 0.62:
            return _Plan("walk", int(r.integers(20, 90)), heading=self._pick_heading(x, y, angle, clearance))
        if u < 0.78:
            return _Plan("sweep", int(r.integers(8, 30)), turn_rate=float(r.choice([-1, 1]) * r.uniform(0.2, 0.8) * self.turn_limit))
        if u < 0.90:
            return _Plan("strafe", int(r.integers(6, 25)), strafe=str(r.choice(["strafe_left", "strafe_right"])),
                         turn_rate=float(r.normal(0, 0.15) * self.turn_limit))
        # a full look around in place
        rate = float(r.choice([-1, 1]) * r.uniform(0.5, 0.9) * self.turn_limit)
        return _Plan("look", int(360 / abs(rate)) + 1, turn_rate=rate)

    # -- the policy ----------------------------------------------------------------
    def act(self, x: float, y: float, angle: float, clearance: tuple[float, float, float] | None = None) -> dict[str, float]:
        r = self.rng
        c = self._cell(x, y)
        self.visits[c] = self.visits.get(c, 0) + 1
        self.trail.append((x, y))
        moved = math.dist(self.trail[-1], self.trail[-4]) if len(self.trail) >= 4 else 99.0

        a = {"forward": 0.0, "back": 0.0, "strafe_left": 0.0, "strafe_right": 0.0, "attack": 0.0, "use": 0.0}
        if self.plan is None or self.plan.steps <= 0:
            self.plan = self._new_plan(x, y, angle, clearance)
        plan = self.plan

        # stuck: walking but not moving for a while → press use, back off, turn away
        if plan.kind == "walk" and moved < 3.0:
            self.stuck_frames += 1
        else:
            self.stuck_frames = 0
        if self.stuck_frames > 6:
            self.stuck_frames = 0
            plan = self.plan = _Plan("unstick", int(r.integers(8, 20)), turn_rate=float(r.choice([-1, 1]) * r.uniform(0.5, 1.0) * self.turn_limit))
            a["use"] = 1.0

        # a wall close ahead while walking: steer to the more open side before touching it
        if plan.kind == "walk" and clearance is not None and clearance[1] < NEAR:
            side = 1.0 if clearance[0] >= clearance[2] else -1.0  # +1 = left is more open
            plan.heading = (angle + side * float(r.uniform(45, 100))) % 360

        target_turn = 0.0
        if plan.kind == "walk":
            a["forward"] = 1.0
            err = (plan.heading - angle + 180) % 360 - 180  # + = heading is to the left
            # positive turn = to the right (like mouse x), which lowers the Doom angle
            target_turn = float(np.clip(-err * 0.35, -self.turn_limit, self.turn_limit))
            target_turn += float(r.normal(0, 0.08) * self.turn_limit)  # a hand is never steady
            if r.random() < 0.02:
                a["use"] = 1.0
        elif plan.kind == "sweep":
            a["forward"] = float(r.random() < 0.7)
            target_turn = plan.turn_rate
        elif plan.kind == "strafe":
            a[plan.strafe] = 1.0
            a["forward"] = float(r.random() < 0.4)
            target_turn = plan.turn_rate
        elif plan.kind == "look":
            target_turn = plan.turn_rate
        elif plan.kind == "unstick":
            a["back"] = 1.0 if plan.steps > 4 else 0.0
            target_turn = plan.turn_rate
        if r.random() < 0.03:
            a["attack"] = 1.0

        # smooth the turn (a first-order lag), as a mouse hand moves
        self.turn_now += 0.5 * (target_turn - self.turn_now)
        a["turn"] = float(np.clip(self.turn_now, -self.turn_limit, self.turn_limit))
        plan.steps -= 1
        return a


def make_policy(name: str, seed: int, turn_limit: float):
    if name == "explorer":
        return Explorer(seed=seed, turn_limit=turn_limit)
    if name == "random":
        return RandomPolicy(seed=seed, turn_limit=turn_limit)
    if name == "strafe":
        return StrafePolicy(seed=seed, turn_limit=turn_limit)
    raise ValueError(f"unknown policy {name!r}; choose explorer, random or strafe")

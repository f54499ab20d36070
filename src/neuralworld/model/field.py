"""The field world: a network that holds the place itself and renders it from the player's pose.

Why this network (docs/experiments.md, "a network that holds the place"): every world that
makes the next frame from the last ones (latent, warp-and-paint) loses the place as its own
frames feed back. This one has no frame memory at all. It learns the level as a **feature
field** over (x, y, ray angle) and renders a frame from a camera pose, so it cannot melt:
frame 10,000 is drawn from the same field as frame 1. Controls move the pose, so a turn
turns at the engine's rate and a step forward walks into the place.

* **Rendering** (``render``): Doom's view is 2.5-D, so one screen column is what one
  horizontal ray meets. Each column reads two trilinear grids of features (a fine one and a
  coarse one, ``cells`` map units and ``angles`` slices of the full turn) at the camera's
  (x, y) and the column's ray angle; a 1-D conv mixes neighbouring columns into a short
  stack of rows, and a 2-D conv decoder doubles it to the frame's height. A learned overlay
  (colour and alpha, the same on every frame) draws what the camera carries: the weapon.
  Trilinear reads are written as gathers of the eight corners (not a 5-D ``grid_sample``),
  so the graph is plain Gather/Mul/Add.
* **Kinematics** (``advance``): the camera's move between two frames (forward, left in map
  units, yaw in degrees, in the earlier camera's frame) is linear in the previous move and
  the action (least squares on the recording's free moves, ``fit_kinematics``: Doom's momentum is the
  previous move). The player cannot leave the recorded place: ``walls`` marks the
  ``wall_cell``-unit cells the recording visited, and (the "ray" renderer) it keeps
  ``player_radius`` from the wall map, as Doom's player box keeps from a wall; a move that
  would break either slides along one axis or stops, as Doom's player slides along walls.
  The floor height is each cell's recorded median.
* **Localisation** (``locate``): a session started from an image must find where it is.
  The bundle holds a bank of recorded thumbnails with their poses; the nearest few are
  refined by gradient steps on the rendering's L1 to the image, and the best is kept.

Playing through ``WorldSession`` as the pixel worlds do: the "latent" is the frame in [-1, 1]
(``PixelCodec``); the cache is the pose, the last move and the start pose (``FieldCache``).
``step`` renders the pose the action leads to (one Euler step from the noise lands on it);
``append`` moves the pose there. Real frames the session observes are placed by ``place``.
It models nothing that moves by itself (monsters, doors), and has no reward heads.

Shapes: B batch, W columns (the frame's width), H rows, C features, A action size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from neuralworld.actions import ActionSpec
from neuralworld.model.config import ConfigError
from neuralworld.model.dynamics import CacheRows, DynamicsOutput, check_batch, run_cached_step
from neuralworld.model.pixel import PixelWorldConfig, pixel_preset

MODEL_KIND = "field"
"""The bundle's ``"model"`` value for this network."""

THUMB = 8
"""Localisation thumbnails are frames averaged over THUMB x THUMB blocks."""
EYE = 41.0
"""Map units from the floor to a Doom player's eye."""
RAY_CODE = 48
"""Channels of the "ray" renderer's column code."""
HEIGHT_WAVES = (8.0, 16.0, 32.0, 64.0, 128.0)
"""Wavelengths (map units) of the "ray" renderer's encoding of each pixel's world height."""
TEXTURE_LEVELS = (1, 2)
"""The surface texture's levels, in multiples of ``texture_cell``."""
HASH_PRIMES = (1, 2654435761, 805459861)
"""Multipliers of a texture cell's x, y, z in its hash (the spatial hash of Instant-NGP)."""
TEXTURE_FLOOR = 4096.0
"""Map units added to heights before the texture's cells (Doom floors can sit below zero)."""


@dataclass
class FieldNetConfig:
    cells: tuple[float, float] = (16.0, 64.0)
    """Map units per grid cell of the fine and the coarse feature grid."""
    angles: tuple[int, int] = (180, 36)
    """Slices of the full turn in each grid (180: one per 2 degrees)."""
    features: int = 8
    column_channels: int = 256
    decoder_channels: int = 48
    hfov: float = 90.0
    """The camera's horizontal field of view in degrees (the recording's)."""
    bounds: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    """x0, y0, x1, y1: the map area the grids cover (the recorded positions and a margin)."""
    wall_cell: float = 16.0
    """Map units per cell of the walkable map (cells the recording visited)."""
    player_radius: float = 0.0
    """"ray": map units the camera keeps from the wall map's cells (box distance, as Doom's player
    box keeps its 16 from a wall; 14 is Doom's less a cell), so play cannot press it closer to a
    wall than the recording ever was; 0: only the walkable cells bound it. A camera placed closer
    may not get closer. Off by default: what it buys and costs, docs/experiments.md."""
    bank_size: int = 4096
    """Recorded thumbnails with their poses kept for localisation."""
    locate_candidates: int = 4
    locate_steps: int = 24
    # -- training objective ----------------------------------------------------------------
    adv_weight: float = 0.0
    """Weight of the hinge loss against a patch critic that sees the candidate beside the real
    frame's 8x8 low-pass (it judges detail, not layout; 0: L1 alone). Start it from an L1
    field: from scratch a critic collapses the field to one frame (experiments, field C)."""
    grid_lr_scale: float = 5.0
    """The grids' learning rate as a multiple of the rest's (each grid cell is seen rarely)."""
    close_share: float = 0.0
    """"ray": the share of each training batch drawn from the recorded frames that face a wall
    nearer than ``close_depth`` (their columns' median depth): play presses the camera against
    walls far more often than a recording looks at them, and a view seen rarely is drawn blurred."""
    close_depth: float = 48.0
    """Map units: a recorded frame whose columns' median depth is nearer faces a wall (``close_share``)."""
    # -- the renderer ------------------------------------------------------------------------
    renderer: str = "column"
    """"column": a conv decoder turns the row of column features into the picture (it must learn
    how tall a wall is from how far it is). "ray": each column marches its ray through a map of
    walls fitted from the recording's depth buffers (``occupancy``) to the first wall, reads a
    second feature grid at that hit point on the map, and each pixel row is placed by its world
    height at that distance, as Doom's renderer places them: a wall twice as near is drawn twice
    as tall, and its texture stays on the wall as the camera moves. Needs a recording with depth."""
    hit_cells: tuple[float, ...] = (4.0, 32.0)
    """"ray": map units per cell of the hit-point grids (x, y on the map; no angle)."""
    hit_features: int = 16
    reach: float = 256.0
    """"ray": map units the hit-point grids reach beyond ``bounds`` (farther hits read their border)."""
    occupancy_cell: float = 2.0
    """"ray": map units per cell of the wall map (and per step of a column's march through it)."""
    march: float = 1024.0
    """"ray": the farthest a column looks (map units); nothing met by then is drawn at that distance."""
    depth_unit: float = 100.0 / 14.0
    depth_offset: float = 0.0
    """"ray": the recording's camera (``data.flow.Camera``) its wall map was fitted with: map units per
    step of the depth buffer, and how far a reading falls short (a record; the fit reads the dataset's)."""
    aspect: float = 4.0 / 3.0
    """"ray": width / height of the engine's render (sets the vertical focal length's start)."""
    exact_hit: bool = False
    """"ray": a column's depth is where its ray enters the first wall cell (exact for a wall along
    the cells' edges, and continuous as the camera moves), not that cell's middle (which moves in
    steps of ``occupancy_cell`` along the ray, a tenth of the depth of a wall 20 units away)."""
    texture_cell: float = 0.0
    """"ray": map units per cell of the finest surface texture, 0 for none. The texture is a hashed
    3-D grid (two levels: this cell and twice it) read at the point each *pixel* sees: on the wall
    its column's march met, at the pixel's height, or on the floor where the pixel's ray meets the
    pose's floor first. The hit-point grids are 2-D and per column, so a wall a few units away
    stretches one of their cells over many pixels; this one holds detail down to ``texture_cell``."""
    texture_features: int = 4
    texture_table: int = 19
    """"ray": log2 of the entries in each texture level's hash table."""
    texture_snap: int = 0
    """"ray": how many of the texture's levels, finest first, read one value per cell across the
    surface (the trilinear read at the middle of the cell the point is in, along the surface's two
    axes; across it, the read stays continuous): Doom draws a texel as one colour, where a
    continuous read ramps between cells and a near wall, whose cells span pixels, comes out blurred."""
    texture_footprint: bool = False
    """"ray", training only: each texture level learns from a pixel in proportion to how well the
    pixel resolves its cells (``erf(cell / (sqrt(8) footprint))``, the footprint the map units one
    pixel spans where it lands): a far wall's pixel averages many cells, and pulling the fine
    levels toward that average is what blurs a near wall. What the field draws is unchanged."""
    # -- the walk's bob in play (fitted from the recording's eye: ``fit_bob``) -------------------
    bob_period: float = 0.0
    """Frames per cycle of the view's bob while walking; 0: play keeps the eye at ``EYE``."""
    bob_phase: float = 0.0
    """The cycle's angle (radians) at an episode's first frame (Doom's bob runs on the level's clock)."""
    bob_gain: float = 0.0
    """The bob's amplitude (map units) per squared walking speed (map units per frame, smoothed)."""
    bob_max: float = 0.0
    """The largest amplitude (map units): Doom caps the bob."""
    bob_stuck: float = 0.0
    """The walking speed (map units per frame) a stuck move (``STUCK_MOVE``: the legs push, the body
    stays) counts for in the speed the bob follows (fitted: ``fit_stuck``; 0: its push, as any move's)."""
    weapon_x: float = 0.0
    weapon_y: float = 0.0
    """The weapon's bob (fitted from the recording's frames: ``train.field.fit_weapon``): pixels it
    moves across and down per map unit of the view's bob amplitude, on Doom's law: across with the
    cosine of its own clock, down with the sine's size; 0, 0: a weapon that stays put."""
    weapon_phase: float = 0.0
    """The weapon clock's angle (radians) at an episode's first frame. Its period is
    ``WEAPON_CYCLE`` times ``bob_period`` (Doom: 64 tics against the view's 20)."""

    def levels(self) -> int:
        return 3  # the decoder doubles its rows three times: H / 8 rows come out of the column conv

    @property
    def memory_frames(self) -> int:
        """Frames a session needs to start (eval's context is this minus one): the field has no
        frame memory; it finds its pose from the last real frame it is shown."""
        return 2

    def validate(self) -> "FieldNetConfig":
        if len(self.cells) != len(self.angles) or not self.cells:
            raise ConfigError("field: cells and angles need one entry per grid")
        if min(self.cells) <= 0 or min(self.angles) < 2 or self.features < 1 or self.wall_cell <= 0:
            raise ConfigError("field: cells and wall_cell must be > 0, angles >= 2, features >= 1")
        x0, y0, x1, y1 = self.bounds
        if not (x1 > x0 and y1 > y0):
            raise ConfigError(f"field: bounds {self.bounds} must be x0, y0, x1, y1 with x1 > x0 and y1 > y0")
        if not 0 < self.hfov < 180:
            raise ConfigError(f"field: hfov {self.hfov} must be in (0, 180) degrees")
        if self.bank_size < 1 or self.locate_candidates < 1 or self.locate_steps < 0:
            raise ConfigError("field: bank_size and locate_candidates must be >= 1, locate_steps >= 0")
        if not 0 <= self.close_share < 1 or self.close_depth <= 0:
            raise ConfigError(f"field: close_share {self.close_share} must be in [0, 1) and close_depth {self.close_depth} > 0")
        if self.player_radius < 0:
            raise ConfigError(f"field: player_radius {self.player_radius} must be >= 0")
        if self.adv_weight < 0 or self.grid_lr_scale <= 0:
            raise ConfigError("field: adv_weight must be >= 0 and grid_lr_scale > 0")
        if self.renderer not in ("column", "ray"):
            raise ConfigError(f"field: renderer {self.renderer!r} must be 'column' or 'ray'")
        if not self.hit_cells or min(self.hit_cells) <= 0 or self.hit_features < 1 or self.reach < 0:
            raise ConfigError("field: hit_cells must be > 0, hit_features >= 1, reach >= 0")
        if self.occupancy_cell <= 0 or self.march < self.occupancy_cell:
            raise ConfigError("field: occupancy_cell must be > 0 and march at least one cell")
        if self.texture_cell < 0 or self.texture_features < 1 or not 8 <= self.texture_table <= 24:
            raise ConfigError("field: texture_cell must be >= 0, texture_features >= 1, texture_table in [8, 24]")
        if not 0 <= self.texture_snap <= len(TEXTURE_LEVELS):
            raise ConfigError(f"field: texture_snap {self.texture_snap} must be in [0, {len(TEXTURE_LEVELS)}] (levels snapped)")
        if min(self.bob_period, self.bob_gain, self.bob_max, self.bob_stuck) < 0 or (self.bob_gain > 0 and self.bob_period <= 0):
            raise ConfigError("field: bob_period, bob_gain, bob_max and bob_stuck must be >= 0, and a bob needs a period")
        if self.texture_cell > 0 and self.renderer != "ray":
            raise ConfigError("field: texture_cell needs renderer 'ray' (the texture is read where each pixel's ray lands)")
        return self

    def grid_shape(self, i: int) -> tuple[int, int, int]:
        """(angles, ny, nx) of grid ``i``."""
        x0, y0, x1, y1 = self.bounds
        c = self.cells[i]
        return self.angles[i], int(math.ceil((y1 - y0) / c)) + 1, int(math.ceil((x1 - x0) / c)) + 1

    def hit_shape(self, i: int) -> tuple[int, int, int]:
        """(1, ny, nx) of hit-point grid ``i`` (over ``bounds`` widened by ``reach``)."""
        x0, y0, x1, y1 = self.bounds
        c, r = self.hit_cells[i], 2 * self.reach
        return 1, int(math.ceil((y1 - y0 + r) / c)) + 1, int(math.ceil((x1 - x0 + r) / c)) + 1

    def occupancy_shape(self) -> tuple[int, int]:
        """(ny, nx) of the "ray" renderer's wall map (over ``bounds`` widened by ``reach``)."""
        x0, y0, x1, y1 = self.bounds
        r = 2 * self.reach
        return int(math.ceil((y1 - y0 + r) / self.occupancy_cell)), int(math.ceil((x1 - x0 + r) / self.occupancy_cell))

    def wall_shape(self) -> tuple[int, int]:
        x0, y0, x1, y1 = self.bounds
        return int(math.ceil((y1 - y0) / self.wall_cell)), int(math.ceil((x1 - x0) / self.wall_cell))


@dataclass
class FieldConfig(PixelWorldConfig):
    NAME: ClassVar[str] = "field world"
    dynamics: FieldNetConfig = field(default_factory=FieldNetConfig)
    """A field bundle's config.json holds ``PixelWorldConfig``'s fields, with this network."""


FIELD_PRESETS: dict[str, FieldNetConfig] = {
    "tiny": FieldNetConfig(cells=(32.0, 128.0), angles=(60, 12), features=4, column_channels=64, decoder_channels=16,
                           bank_size=512),
    "mini": FieldNetConfig(),
    "small": FieldNetConfig(),
    "base": FieldNetConfig(cells=(8.0, 32.0), angles=(360, 72), features=16, column_channels=384, decoder_channels=64),
}


def field_preset(name: str, spec: ActionSpec | None = None, resolution: tuple[int, int] = (64, 64)) -> FieldConfig:
    return pixel_preset(FieldConfig, FIELD_PRESETS, name, spec, resolution)


# ---------------------------------------------------------------------------
# the pose and how the controls move it
# ---------------------------------------------------------------------------
def body_move(pose_new: torch.Tensor, pose_old: torch.Tensor) -> torch.Tensor:
    """Poses (..., 4): x, y, z, angle in degrees (counter-clockwise) -> the move (..., 3):
    forward, left (map units, in the old camera's frame) and the yaw turned (degrees, wrapped
    to [-180, 180))."""
    a = pose_old[..., 3] * (math.pi / 180.0)
    dx, dy = pose_new[..., 0] - pose_old[..., 0], pose_new[..., 1] - pose_old[..., 1]
    fwd = dx * torch.cos(a) + dy * torch.sin(a)
    left = -dx * torch.sin(a) + dy * torch.cos(a)
    yaw = torch.remainder(pose_new[..., 3] - pose_old[..., 3] + 180.0, 360.0) - 180.0
    return torch.stack([fwd, left, yaw], -1)


BLOCKED_MADS = 2.0


def rotation_axes(spec: ActionSpec) -> tuple[int, ...]:
    """The action vector's indices of the axes that turn the camera (those in degrees): they turn
    it and do not move it (``fit_kinematics``'s ``turns``)."""
    return tuple(len(spec.buttons) + i for i, a in enumerate(spec.axes) if a.unit.startswith("deg"))


def fit_kinematics(moves: list[np.ndarray], actions: list[np.ndarray], *, turns: tuple[int, ...] = (),
                   blocked_mads: float | None = BLOCKED_MADS, rounds: int = 8) -> np.ndarray:
    """Least squares: [previous move (forward, left), action, 1] -> move (forward, left, yaw),
    over episodes (``moves[e][t]``: pose t -> t + 1 of episode e, after ``actions[e][t]``,
    normalised). Returns K (2 + A + 1, 3).

    ``turns``: the action's rotation axes (the spec's axes in degrees). They turn the camera and
    do not move it, and nothing else turns it; the fit holds to that. (A recording's policy that
    turns as it slows for a wall would otherwise teach a camera that backs away as it turns.)

    A recording is full of moves a wall cut short (the player pressed into it, or slid along
    it): fitted with the free ones, they teach a camera that speeds up slowly and never reaches
    the engine's pace. So each of ``rounds`` rounds leaves out the moves shorter than the law
    predicts by more than ``blocked_mads`` robust deviations (1.4826 x the median absolute
    shortfall of those kept) and fits the move again: the law of the free camera, which the
    world's own walls then stop (``FieldNet.advance``). ``blocked_mads=None``: plain least squares."""
    X, Y = [], []
    for mv, act in zip(moves, actions):
        if len(mv) < 2:
            continue
        X.append(np.concatenate([mv[:-1, :2], act[1 : len(mv)], np.ones((len(mv) - 1, 1))], 1))
        Y.append(mv[1:])
    if not X:
        raise ValueError("fit_kinematics needs episodes of at least three frames")
    Xa, Ya = np.concatenate(X).astype(np.float64), np.concatenate(Y).astype(np.float64)
    n = Xa.shape[1]
    turning = [2 + i for i in turns]
    moving = [c for c in range(n) if c not in turning]  # what may move the camera
    yawing = turning + [n - 1] if turning else list(range(n))  # what may turn it
    K = np.zeros((n, 3))
    K[yawing, 2] = np.linalg.lstsq(Xa[:, yawing], Ya[:, 2], rcond=None)[0]
    Xm = Xa[:, moving]
    keep = np.ones(len(Xa), bool)
    M = np.linalg.lstsq(Xm, Ya[:, :2], rcond=None)[0]
    for _ in range(rounds if blocked_mads is not None else 0):
        pred = Xm @ M
        short = np.hypot(pred[:, 0], pred[:, 1]) - np.hypot(Ya[:, 0], Ya[:, 1])  # > 0: moved less than the law says
        mad = 1.4826 * float(np.median(np.abs(short[keep])))
        kept = short <= blocked_mads * mad + 1e-6
        if kept.sum() < 4 * n or (kept == keep).all():
            break
        keep = kept
        M = np.linalg.lstsq(Xm[keep], Ya[keep, :2], rcond=None)[0]
    K[moving, :2] = M
    return K.astype(np.float32)


WEAPON_CYCLE = 3.2
"""The weapon's bob period over the view's (Doom: 64 tics against 20, both on the level's clock)."""
CLOCK_WRAP = 16
"""The walk's clock wraps after this many view-bob periods (5 of the weapon's: both start over)."""
BOB_SMOOTH = 0.5
"""The walking speed the bob follows: this share of the last frame's, the rest the move's (Doom's
bob follows the body's momentum, which the thrust of one frame only partly turns)."""
EMA_KERNEL = (1 - BOB_SMOOTH) * BOB_SMOOTH ** np.arange(40)
"""``BOB_SMOOTH``'s running mean as a filter (the weight of a push 40 frames back is under 1e-12)."""
STUCK_MOVE = 0.5
"""A stuck move: the legs push for more than this (map units) and the body moves less (pressed
into a wall). Doom's bob follows the body's momentum, which the wall does not wholly stop."""


RELOCATE = 32.0
"""Map units: a placed frame seen farther than this from where the camera was expected is a new
place (``FieldNet.place``), not the next step of a walk (two wall cells; Doom's runner covers
about 12 units a frame)."""


LOCATE_LR = (2.0, 1.0)
"""Adam's first step sizes (map units, degrees) when ``locate`` starts from recorded poses alone,
decayed to 0 over its steps."""
TRACK_LR = (1.0, 0.5)
"""The same when it tracks (starts from where the kinematics took the camera)."""


def shift_image(image: torch.Tensor, across: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """An image (1, C, H, W) moved (bilinearly) by ``across`` and ``down`` pixels (B,) each: (B, C, H, W),
    zeros where it moved in from outside. Two matrix products (they export to any ONNX runtime)."""
    _, _, H, W = image.shape
    ys, xs = torch.arange(H, dtype=image.dtype, device=image.device), torch.arange(W, dtype=image.dtype, device=image.device)
    rows = (1 - (ys[None, None, :] - ys[None, :, None] + down[:, None, None]).abs()).clamp(min=0)  # (B, H out, H in)
    cols = (1 - (xs[None, :, None] - xs[None, None, :] + across[:, None, None]).abs()).clamp(min=0)  # (B, W in, W out)
    return rows[:, None] @ image @ cols[:, None]


def leg_push(moves: np.ndarray, actions: np.ndarray, kinematics: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An episode's moves (T-1, 3) (pose t -> t + 1, after action t) and normalised actions (T, A)
    -> each move's push (T-1,), the move the kinematics give its action from the move before (what
    the legs push for), and whether it was stuck (T-1,) bool: ``STUCK_MOVE``."""
    prev = np.concatenate([np.zeros((1, 2)), moves[:-1, :2]])  # the move before each move
    X = np.concatenate([prev, actions[: len(moves)], np.ones((len(moves), 1))], 1)
    push = np.hypot(*(X @ kinematics)[:, :2].T)
    return push, (push > STUCK_MOVE) & (np.hypot(moves[:, 0], moves[:, 1]) < STUCK_MOVE)


def walk_speeds(moves: np.ndarray, actions: np.ndarray, kinematics: np.ndarray, stuck: float = 0.0) -> np.ndarray:
    """An episode's moves (T-1, 3) and normalised actions (T, A) -> the speed (T,) the bob follows
    at each frame: the legs' push (``leg_push``; so a player pressed into a wall still bobs, as in
    Doom), a stuck move's counted as ``stuck`` where that is not 0, smoothed by ``BOB_SMOOTH``; 0 at
    the first frame."""
    return _smoothed(*leg_push(moves, actions, kinematics), stuck)


def _smoothed(push: np.ndarray, stuck_at: np.ndarray, stuck: float) -> np.ndarray:
    """``walk_speeds`` from ``leg_push``'s pushes (T-1,) and stuck moves (T-1,)."""
    if stuck > 0:
        push = np.where(stuck_at, stuck, push)
    out = np.zeros(len(push) + 1)
    out[1:] = np.convolve(push, EMA_KERNEL)[: len(push)]  # BOB_SMOOTH's running mean, from 0
    return out


def fit_stuck(eyes: list[np.ndarray], moves: list[np.ndarray], actions: list[np.ndarray], kinematics: np.ndarray,
              bob: dict[str, float], *, speeds: np.ndarray | None = None) -> dict[str, float]:
    """The bob of a player pressed into a wall: ``bob_stuck``, the walking speed a stuck move counts
    for (``walk_speeds``; Doom's wall stops the body but not all of its momentum, and a move that
    runs into it at full speed keeps no more than one from rest) that fits the recorded eyes
    ``eyes[e]`` (T,) best under ``bob`` (``fit_bob``'s law), by least squares over ``speeds``; and
    ``stuck_frames``, how many moves were stuck. No stuck move, no bob, or no speed that fits better
    than the stuck move's own push: 0 (its push, as any move's)."""
    pushes = [leg_push(m, a, kinematics) for m, a in zip(moves, actions)]
    stuck = sum(int(at.sum()) for _, at in pushes)
    if not stuck or bob.get("bob_gain", 0.0) <= 0:
        return {"bob_stuck": 0.0, "stuck_frames": float(stuck)}
    y = np.concatenate(eyes).astype(np.float64) - EYE
    t = np.concatenate([np.arange(len(e), dtype=np.float64) for e in eyes])
    wave = np.sin(2 * np.pi * t / bob["bob_period"] + bob["bob_phase"])
    ok = np.isfinite(y)
    errors = []
    for k in np.concatenate([[0.0], np.arange(0.5, 12.01, 0.1) if speeds is None else speeds]):
        s2 = np.concatenate([_smoothed(push, at, k) for push, at in pushes]) ** 2
        errors.append((float(((np.minimum(bob["bob_gain"] * s2, bob["bob_max"]) * wave - y)[ok] ** 2).sum()), float(k)))
    return {"bob_stuck": round(min(errors)[1], 2), "stuck_frames": float(stuck)}


def fit_bob(eyes: list[np.ndarray], speeds: list[np.ndarray], *, periods: np.ndarray | None = None,
            min_share: float = 0.05) -> dict[str, float]:
    """The view's walking bob from recorded episodes: ``eyes[e]`` (T,) the eye over the feet at
    frame t of episode e, ``speeds[e]`` (T,) its ``walk_speeds``. The law is Doom's:
    ``EYE + min(gain * speed**2, max) * sin(2 pi t / period + phase)``, on a clock that starts
    with the episode. Least squares over a grid of periods (frames), then over the cap. Returns
    ``FieldNetConfig``'s bob_period, bob_phase, bob_gain, bob_max, and ``share``: the eye's
    variance the law explains; all zero (a standing eye) where it explains under ``min_share``."""
    none = {"bob_period": 0.0, "bob_phase": 0.0, "bob_gain": 0.0, "bob_max": 0.0, "share": 0.0}
    t = np.concatenate([np.arange(len(e), dtype=np.float64) for e in eyes])
    y = np.concatenate(eyes).astype(np.float64) - EYE
    s2 = np.concatenate(speeds).astype(np.float64) ** 2
    ok = np.isfinite(y) & np.isfinite(s2)
    t, y, s2 = t[ok], y[ok], s2[ok]
    total = float((y * y).sum())
    if len(y) < 20 or total <= 0:
        return none
    best = None
    for P in np.arange(2.5, 40.0, 0.05) if periods is None else periods:
        X = np.stack([s2 * np.sin(2 * np.pi * t / P), s2 * np.cos(2 * np.pi * t / P)], 1)
        c = np.linalg.lstsq(X, y, rcond=None)[0]
        r = float(((X @ c - y) ** 2).sum())
        if best is None or r < best[0]:
            best = (r, float(P), c)
    _, P, (a, b) = best
    phase, gain = math.atan2(b, a), math.hypot(a, b)
    wave = np.sin(2 * np.pi * t / P + phase)
    fits = []
    for top in np.quantile(np.abs(y), np.linspace(0.5, 1.0, 26)):  # the cap, and the gain under it
        for g in gain * np.linspace(0.5, 3.0, 51):
            fits.append((float(((np.minimum(g * s2, top) * wave - y) ** 2).sum()), float(g), float(top)))
    r, gain, top = min(fits)
    share = 1.0 - r / total
    if share < min_share:
        return {**none, "share": share}
    return {"bob_period": P, "bob_phase": phase % (2 * math.pi), "bob_gain": gain, "bob_max": top, "share": share}


# ---------------------------------------------------------------------------
# the memory: where the camera is
# ---------------------------------------------------------------------------
@dataclass
class FieldCache(CacheRows):
    """The camera's pose, its last move and its walk (the speed and clock of the walk's bob),
    where it started (a restarted element goes back there), whether the next frame appended
    is its start (not a move), and where it was before the last frame appended (``last``: a
    placement that follows reads the camera's momentum off it)."""

    pose: torch.Tensor  # (B, 4) x, y, z, angle
    move: torch.Tensor  # (B, 4) forward, left of the last move; the walk: its speed, frames since the start
    home: torch.Tensor  # (B, 4)
    fresh: torch.Tensor  # (B,) bool
    reward: torch.Tensor  # (B,) always 0: the field world has no heads
    termination: torch.Tensor  # (B,)
    frames_seen: int = 0
    last: torch.Tensor | None = None  # (B, 4): the pose before the last frame appended; None: none since a placement

    FORGET: ClassVar[tuple[str, ...]] = ("move", "reward", "termination")

    def reset(self, batch_index: int | torch.Tensor | None = None) -> None:
        super().reset(batch_index)
        index = slice(None) if batch_index is None else batch_index
        self.pose[index] = self.home[index]
        self.fresh[index] = True

    def step_inputs(self) -> tuple[torch.Tensor, ...]:
        return (self.pose, self.move)

    def go(self, pose: torch.Tensor, move: torch.Tensor) -> None:
        """A frame was appended: the camera goes to ``pose`` (B, 4) after ``move`` (what ``advance``
        gives), except an element's first frame after a reset (its start: it stays, at rest)."""
        self.last = self.pose.clone()
        stay = self.fresh[:, None]
        self.pose.copy_(torch.where(stay, self.pose, pose))
        self.move.copy_(torch.where(stay, torch.zeros_like(move), move))
        self.fresh.zero_()


# ---------------------------------------------------------------------------
# the network
# ---------------------------------------------------------------------------
class FieldNet(nn.Module):
    """Feature grids + column conv + decoder + overlay, with the kinematics, walls and
    localisation bank as buffers (fitted from the recording, saved in the bundle)."""

    one_step = True
    HALF_STORED = ("grids.", "hit_grids.", "textures.", "bank_thumbs", "occupancy")
    """State kept at half precision in a bundle (the feature tables: most of its bytes)."""

    def __init__(self, config: FieldNetConfig, *, resolution: tuple[int, int], action_size: int):
        super().__init__()
        self.config = config
        self.latent_size = tuple(resolution)
        self.latent_channels = 3
        self.action_size = action_size
        self.pos_embed = nn.Parameter(torch.zeros(0), requires_grad=False)  # a device anchor (sessions read its .device)
        H, W = resolution
        x0, y0, x1, y1 = config.bounds
        self.register_buffer("lo", torch.tensor([x0, y0], dtype=torch.float32))
        self.register_buffer("hi", torch.tensor([x1, y1], dtype=torch.float32))
        u = (torch.arange(W, dtype=torch.float32) + 0.5) / W * 2 - 1
        # each column's ray angle relative to the view direction, degrees (left of centre is +)
        self.register_buffer("col_angle", -torch.rad2deg(torch.atan(u * math.tan(math.radians(config.hfov / 2)))))
        self.grids = nn.ParameterList(
            [nn.Parameter(torch.randn(1, config.features, *config.grid_shape(i)) * 0.1) for i in range(len(config.cells))])
        C, ch = config.features * len(config.cells) + 1, config.decoder_channels
        self.rows = rows = H // 2 ** config.levels()
        if config.renderer == "ray":
            self._build_ray(C, H)
        else:
            self.col = nn.Sequential(nn.Conv1d(C, config.column_channels, 3, padding=1), nn.GELU(),
                                     nn.Conv1d(config.column_channels, 32 * rows, 3, padding=1))
            self.up = nn.ModuleList([nn.Sequential(nn.Conv2d(32 if i == 0 else ch, ch, 3, padding=1), nn.GELU(),
                                                   nn.Conv2d(ch, ch, 3, padding=1), nn.GELU()) for i in range(config.levels())])
            self.out = nn.Conv2d(ch, 3, 3, padding=1)
        self.overlay = nn.Parameter(torch.zeros(1, 4, H, W))  # rgb + alpha logit (the weapon)
        with torch.no_grad():
            self.overlay[:, 3] = -4.0
        ny, nx = config.wall_shape()
        self.register_buffer("kinematics", torch.zeros(2 + action_size + 1, 3))
        self.register_buffer("walls", torch.ones(ny, nx))  # 1: walkable
        self.register_buffer("floor", torch.zeros(ny, nx))  # floor height per cell
        n = config.bank_size
        self.register_buffer("bank_thumbs", torch.zeros(n, 3, H // THUMB, W // THUMB))
        self.register_buffer("bank_poses", torch.zeros(n, 4))

    def _build_ray(self, C: int, H: int) -> None:
        cfg, ch = self.config, self.config.decoder_channels
        x0, y0, x1, y1 = cfg.bounds
        self.register_buffer("hit_lo", torch.tensor([x0 - cfg.reach, y0 - cfg.reach], dtype=torch.float32))
        self.register_buffer("hit_hi", torch.tensor([x1 + cfg.reach, y1 + cfg.reach], dtype=torch.float32))
        self.register_buffer("col_cos", torch.cos(self.col_angle * (math.pi / 180.0)))
        self.hit_grids = nn.ParameterList(
            [nn.Parameter(torch.randn(1, cfg.hit_features, *cfg.hit_shape(i)) * 0.1) for i in range(len(cfg.hit_cells))])
        self.register_buffer("occupancy", torch.zeros(cfg.occupancy_shape()))  # 1: a wall (fitted, train/field.py)
        self.register_buffer("march_at", torch.arange(1, int(cfg.march / cfg.occupancy_cell) + 1, dtype=torch.float32)
                             * cfg.occupancy_cell)  # (S,) distances along a ray where the march looks
        hits = cfg.hit_features * len(cfg.hit_cells)
        self.col = nn.Sequential(nn.Conv1d(C + hits + 1, cfg.column_channels, 3, padding=1), nn.GELU(),
                                 nn.Conv1d(cfg.column_channels, RAY_CODE, 1))
        levels = TEXTURE_LEVELS if cfg.texture_cell > 0 else ()
        self.textures = nn.ParameterList(
            [nn.Parameter(torch.randn(2 ** cfg.texture_table, cfg.texture_features) * 0.1) for _ in levels])
        tex = cfg.texture_features * len(levels)
        self.pix = nn.Sequential(nn.Conv2d(RAY_CODE + 2 + 2 * len(HEIGHT_WAVES) + tex, 64, 1), nn.GELU(), nn.Conv2d(64, ch, 1), nn.GELU(),
                                 nn.Conv2d(ch, ch, 3, padding=1), nn.GELU(), nn.Conv2d(ch, ch, 3, padding=1), nn.GELU())
        self.out = nn.Conv2d(ch, 3, 3, padding=1)
        fy = (H / 2) * cfg.aspect / math.tan(math.radians(cfg.hfov / 2))
        self.camera = nn.Parameter(torch.tensor([(H - 1) / 2, math.log(fy)]))  # the horizon's row, log vertical focal

    @classmethod
    def from_world(cls, world: FieldConfig) -> "FieldNet":
        return cls(world.dynamics, resolution=world.resolution, action_size=world.action_size)

    # -- rendering ---------------------------------------------------------------------------
    def _read(self, g: torch.Tensor, xy: torch.Tensor, ang: torch.Tensor) -> torch.Tensor:
        """Trilinear read of grid ``g`` (1, C, A, ny, nx) at (x, y) in [0, 1] ((B, 2), or (B, W, 2):
        one per column) for the ray angles ``ang`` (B, W) in degrees -> (B, C, W). Positions clamp
        to the border; angles wrap."""
        _, C, A, ny, nx = g.shape
        B, W = ang.shape
        xy = xy[:, None, :] if xy.dim() == 2 else xy
        fx = (xy[..., 0] * (nx - 1)).clamp(0, nx - 1).expand(B, W)
        fy = (xy[..., 1] * (ny - 1)).clamp(0, ny - 1).expand(B, W)
        fa = torch.remainder(ang, 360.0) / 360.0 * A
        x0, y0, a0 = fx.floor(), fy.floor(), fa.floor()
        tx, ty, ta = fx - x0, fy - y0, fa - a0
        x0, y0, a0 = x0.long(), y0.long(), a0.long()
        x1, y1 = (x0 + 1).clamp(max=nx - 1), (y0 + 1).clamp(max=ny - 1)
        a0, a1 = a0 % A, (a0 + 1) % A
        table = g[0].permute(1, 2, 3, 0).reshape(A * ny * nx, C)
        out = 0
        for ia, wa in ((a0, 1 - ta), (a1, ta)):
            for iy, wy in ((y0, 1 - ty), (y1, ty)):
                for ix, wx in ((x0, 1 - tx), (x1, tx)):
                    w = (wa * wy * wx).reshape(B * W, 1)
                    out = out + table[((ia * ny + iy) * nx + ix).reshape(B * W)] * w
        return out.reshape(B, W, C).transpose(1, 2)

    def render(self, pose: torch.Tensor) -> torch.Tensor:
        """Poses (B, 4): x, y, z, angle (degrees) -> frames (B, 3, H, W) in [-1, 1]. A fifth
        column is the eye's height over the feet (the recording's, with Doom's walking bob; the
        "ray" renderer's), else EYE; a sixth and seventh move the overlay (the weapon's bob:
        pixels across and down)."""
        B = pose.shape[0]
        xy = (pose[:, :2] - self.lo) / (self.hi - self.lo)  # (B, 2) in [0, 1]
        ang = pose[:, 3:4] + self.col_angle[None]  # (B, W)
        W = ang.shape[1]
        feats = [self._read(g, xy, ang) for g in self.grids]
        z = (pose[:, 2:3, None] / 128.0).expand(B, 1, W)
        view = torch.cat(feats + [z], 1)
        if self.config.renderer == "ray":
            x = self._ray(pose, ang, view)
        else:
            x = self.col(view).reshape(B, 32, self.rows, W)
            for blk in self.up:
                x = blk(F.interpolate(x, scale_factor=(2, 1), mode="nearest"))
        scene = torch.tanh(self.out(x))
        alpha = torch.sigmoid(self.overlay[:, 3:])
        paint = torch.cat([torch.tanh(self.overlay[:, :3]) * alpha, alpha], 1)  # (1, 4, H, W): premultiplied
        if pose.shape[1] > 6:  # the weapon's bob: the overlay moved by (across, down) pixels
            paint = shift_image(paint, pose[:, 5], pose[:, 6])
        return scene * (1 - paint[:, 3:]) + paint[:, :3]

    def _ray(self, pose: torch.Tensor, ang: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        """The "ray" renderer's features (B, ch, H, W)."""
        B, W = ang.shape
        H = self.latent_size[0]
        depth = self.march_depth(pose, ang)  # (B, W) along the view
        log_depth = depth.log()
        hxy = (self.hit_points(pose, ang, depth) - self.hit_lo) / (self.hit_hi - self.hit_lo)
        flat = torch.zeros_like(ang)
        hits = [self._read(g, hxy, flat) for g in self.hit_grids]
        code = self.col(torch.cat([view] + hits + [log_depth[:, None] / 5.0], 1))  # (B, RAY_CODE, W)
        height = self.pixel_heights(pose, depth)
        enc = [height / 64.0, (log_depth / 5.0)[:, None, :].expand(B, H, W)]
        for wave in HEIGHT_WAVES:
            t = height * (2 * math.pi / wave)
            enc += [torch.sin(t), torch.cos(t)]
        x = [code[:, :, None, :].expand(B, code.shape[1], H, W), torch.stack(enc, 1)]
        if len(self.textures):
            points = self.surface_points(pose, ang, depth, height)
            normals = self.surface_normals(points, self._sees_floor(depth, self.eye(pose))[0]) if self.config.texture_snap else None
            footprint = self.footprint(pose, points) if self.config.texture_footprint and torch.is_grad_enabled() else None
            x.append(self.texture(points, normals, footprint))
        return self.pix(torch.cat(x, 1))

    @staticmethod
    def eye(pose: torch.Tensor) -> torch.Tensor:
        """Poses (B, 4 or 5) -> the eye's height over the feet (B,): the fifth column, else EYE."""
        return pose[:, 4] if pose.shape[1] > 4 else torch.full_like(pose[:, 0], EYE)

    def surface_points(self, pose: torch.Tensor, ang: torch.Tensor, depth: torch.Tensor,
                       height: torch.Tensor) -> torch.Tensor:
        """The point each pixel sees (B, H, W, 3): x, y, height in map units. On its column's wall
        (ray angles ``ang`` (B, W), depths ``depth`` (B, W), pixel heights there ``height`` (B, H, W)),
        unless the pixel looks down and its ray meets the pose's floor nearer: then there."""
        floor, to_floor = self._sees_floor(depth, self.eye(pose))
        d = torch.where(floor, to_floor, depth[:, None, :]) / self.col_cos  # along each pixel's own ray
        rad = ang[:, None, :] * (math.pi / 180.0)
        x = pose[:, 0, None, None] + d * torch.cos(rad)
        y = pose[:, 1, None, None] + d * torch.sin(rad)
        h = torch.where(floor, pose[:, 2, None, None].expand_as(height), height)
        return torch.stack([x, y, h], -1)

    def _sees_floor(self, depth: torch.Tensor, eye: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Depths (B, W) and eye heights (B,) -> whether each pixel's ray meets the pose's floor
        before its column's wall (B, H, W), and the depth along the view where each row meets the
        floor (B, H, 1)."""
        slope = self.row_slopes(depth)[None, :, None]  # (1, H, 1)
        to_floor = eye[:, None, None] / (-slope).clamp(min=1e-3)
        return (slope < 0) & (to_floor < depth[:, None, :]), to_floor

    def surface_normals(self, points: torch.Tensor, floor: torch.Tensor) -> torch.Tensor:
        """The axis (B, H, W) across the surface each of ``points`` (B, H, W, 3) lies on: 2 (height)
        on the floor (``floor`` (B, H, W)), else x or y, whichever lies nearer a line of the wall
        map's cells (a wall is the edge of its cells)."""
        c = self.config.occupancy_cell
        rel = (points[..., :2] - self.hit_lo) / c
        off = (rel - rel.round()).abs()  # (B, H, W, 2)
        return torch.where(floor, torch.full_like(off[..., 0], 2), (off[..., 1] < off[..., 0]).to(off.dtype))

    def footprint(self, pose: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Poses (B, 4+) and the points their pixels see (B, H, W, 3: ``surface_points``) -> the map
        units one pixel spans there (B, H, W): the distance from the eye times a pixel's angle."""
        eye = torch.stack([pose[:, 0], pose[:, 1], pose[:, 2] + self.eye(pose)], 1)[:, None, None, :]
        pixel = 2 * math.tan(math.radians(self.config.hfov / 2)) / points.shape[2]
        return torch.linalg.vector_norm(points - eye, dim=-1) * pixel

    def texture(self, points: torch.Tensor, normals: torch.Tensor | None = None,
                footprint: torch.Tensor | None = None) -> torch.Tensor:
        """The surface texture's features (B, F x levels, H, W) at ``points`` (B, H, W, 3): each
        level's hashed trilinear read (gathers of the eight corners, as ``_read``). The first
        ``texture_snap`` levels read along the surface at their cell's middle, which needs the
        axis across it, ``normals`` (B, H, W: ``surface_normals``). With ``footprint`` (B, H, W:
        ``footprint``) each level's read passes back only the share of its gradient the pixel resolves
        (``texture_footprint``); its value is unchanged."""
        B, H, W, _ = points.shape
        cfg = self.config
        origin = torch.stack([self.hit_lo[0], self.hit_lo[1], self.hit_lo.new_tensor(-TEXTURE_FLOOR)])
        out = []
        for n, (table, level) in enumerate(zip(self.textures, TEXTURE_LEVELS)):
            p = ((points - origin) / (cfg.texture_cell * level)).clamp(min=0).reshape(-1, 3)  # (N, 3) in cells
            p0 = p.floor()
            t, i = p - p0, p0.long()
            if n < cfg.texture_snap:
                if normals is None:
                    raise ValueError("texture_snap needs the surface's normals")
                across = normals.reshape(-1, 1) == torch.arange(3, device=p.device, dtype=normals.dtype)  # (N, 3)
                t = torch.where(across, t, torch.full_like(t, 0.5))
            # per axis, the two corners' hash terms and weights (N, 2); the eight corners are their sums and products
            k = [torch.stack([i[:, a] * HASH_PRIMES[a], (i[:, a] + 1) * HASH_PRIMES[a]], 1) for a in range(3)]
            w = [torch.stack([1 - t[:, a], t[:, a]], 1) for a in range(3)]
            key = (k[0][:, :, None, None] + k[1][:, None, :, None] + k[2][:, None, None, :]).reshape(-1, 8) % table.shape[0]
            weight = (w[0][:, :, None, None] * w[1][:, None, :, None] * w[2][:, None, None, :]).reshape(-1, 8)
            read = (table[key] * weight[..., None]).sum(1).reshape(B, H, W, -1)
            if footprint is not None:
                share = torch.erf(cfg.texture_cell * level / (math.sqrt(8.0) * footprint.clamp(min=1e-3)))[..., None]
                read = read.detach() + share * (read - read.detach())
            out.append(read)
        return torch.cat(out, -1).permute(0, 3, 1, 2)

    def march_depth(self, pose: torch.Tensor, ang: torch.Tensor) -> torch.Tensor:
        """Each column's depth along the view (B, W) in map units: its ray, from the pose at the
        ray angles ``ang`` (B, W) in degrees, stepped through the wall map to the first wall cell
        (``march`` when it meets none). Fitted geometry: no gradient flows through it."""
        with torch.no_grad():
            rad = ang * (math.pi / 180.0)
            d = self.march_at  # (S,)
            px = pose[:, 0, None, None] + torch.cos(rad)[..., None] * d  # (B, W, S)
            py = pose[:, 1, None, None] + torch.sin(rad)[..., None] * d
            ny, nx = self.occupancy.shape
            ix = torch.floor((px - self.hit_lo[0]) / self.config.occupancy_cell)
            iy = torch.floor((py - self.hit_lo[1]) / self.config.occupancy_cell)
            inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
            flat = (iy.clamp(0, ny - 1) * nx + ix.clamp(0, nx - 1)).long()
            wall = (self.occupancy.reshape(-1)[flat] > 0.5) & inside  # (B, W, S)
            wall = torch.cat([wall, torch.ones_like(wall[..., :1])], -1)  # the far end counts as met
            first = wall.float().argmax(-1)  # (B, W) index of the first wall
            c = self.config.occupancy_cell
            along = torch.cat([d, d[-1:]])[first] - c / 2  # the cell's middle
            if self.config.exact_hit:
                along = self._cell_entry(pose, rad, ix, iy, first, along, c)
            return (along * self.col_cos).clamp(min=1.0)

    def _cell_entry(self, pose: torch.Tensor, rad: torch.Tensor, ix: torch.Tensor, iy: torch.Tensor,
                    first: torch.Tensor, middle: torch.Tensor, c: float) -> torch.Tensor:
        """Where each ray (angles ``rad`` (B, W)) enters the wall its march met at sample ``first``
        (B, W) of the cells ``ix``, ``iy`` (B, W, S): between the sample before (free) and that one
        it crosses a line of the map's x cells, a line of its y cells, or both; it enters the wall
        at the first crossing into a wall cell. A ray that met nothing keeps ``middle`` (B, W)."""
        S = ix.shape[-1]
        at = first.clamp(max=S - 1)[..., None]
        before = (first - 1).clamp(min=0)[..., None]
        x_cam = torch.floor((pose[:, 0, None] - self.hit_lo[0]) / c)  # (B, 1): where a march from the first sample starts
        y_cam = torch.floor((pose[:, 1, None] - self.hit_lo[1]) / c)
        qx, qy = ix.gather(-1, at)[..., 0], iy.gather(-1, at)[..., 0]  # (B, W) the wall cell
        px = torch.where(first > 0, ix.gather(-1, before)[..., 0], x_cam.expand_as(qx))  # the free cell before
        py = torch.where(first > 0, iy.gather(-1, before)[..., 0], y_cam.expand_as(qy))
        dx, dy = torch.cos(rad), torch.sin(rad)
        never = torch.full_like(dx, 1e9)
        safe = lambda v: torch.where(v.abs() > 1e-6, v, torch.ones_like(v))  # noqa: E731
        tx = torch.where(qx != px, (self.hit_lo[0] + c * torch.maximum(px, qx) - pose[:, 0, None]) / safe(dx), never)
        ty = torch.where(qy != py, (self.hit_lo[1] + c * torch.maximum(py, qy) - pose[:, 1, None]) / safe(dy), never)
        # crossing both: the cell between them (x first: (qx, py); y first: (px, qy)) may be the wall
        mx, my = torch.where(tx < ty, qx, px), torch.where(tx < ty, py, qy)
        ny, nx = self.occupancy.shape
        between = self.occupancy.reshape(-1)[(my.clamp(0, ny - 1) * nx + mx.clamp(0, nx - 1)).long()] > 0.5
        t1, t2 = torch.minimum(tx, ty), torch.maximum(tx, ty)
        entry = torch.where(between | (t2 >= 1e9), t1, t2)
        entry = torch.where(entry >= 1e9, middle, entry).clamp(min=middle - c / 2, max=middle + c / 2)
        return torch.where(first < S, entry, middle)

    def hit_points(self, pose: torch.Tensor, ang: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """Where each column's ray meets what it sees: poses (B, 4), ray angles (B, W) in degrees,
        depths along the view (B, W) -> map points (B, W, 2)."""
        rad = ang * (math.pi / 180.0)
        dist = depth / self.col_cos  # along the column's own ray
        return pose[:, None, :2] + dist[..., None] * torch.stack([torch.cos(rad), torch.sin(rad)], -1)

    def pixel_heights(self, pose: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """Each pixel's height in the world (B, H, W), where its row meets its column's depth (B, W):
        the eye is ``eye(pose)`` above the pose's floor; a row's offset from the horizon scales with depth
        (a pinhole camera with no pitch, as Doom's)."""
        up = self.row_slopes(depth)[None, :, None] * depth[:, None, :]
        return (pose[:, 2] + self.eye(pose))[:, None, None] + up

    def row_slopes(self, like: torch.Tensor) -> torch.Tensor:
        """Each pixel row's rise per unit of depth along the view (H,), in ``like``'s dtype and
        device: its offset from the horizon row over the focal length."""
        rows = torch.arange(self.latent_size[0], dtype=like.dtype, device=like.device)
        return (self.camera[0] - rows) / self.camera[1].exp()

    def forward(self, pose: torch.Tensor) -> torch.Tensor:
        return self.render(pose)

    # -- moving --------------------------------------------------------------------------------
    def _cell(self, xy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 2) positions -> (row, column) (B,) of the walkable map, clamped to it."""
        ny, nx = self.walls.shape
        c = torch.floor((xy - self.lo) / self.config.wall_cell).long()
        return c[:, 1].clamp(0, ny - 1), c[:, 0].clamp(0, nx - 1)

    def _free(self, xy: torch.Tensor) -> torch.Tensor:
        ny, nx = self.walls.shape
        c = torch.floor((xy - self.lo) / self.config.wall_cell)
        inside = (c[:, 0] >= 0) & (c[:, 0] < nx) & (c[:, 1] >= 0) & (c[:, 1] < ny)
        iy, ix = self._cell(xy)
        return inside & (self.walls[iy, ix] > 0.5)

    def clearance(self, xy: torch.Tensor) -> torch.Tensor:
        """(B, 2) positions -> map units (B,) to the nearest cell of the wall map, as a box (the
        larger of the x and y gaps), at most ``player_radius`` (which it is without a wall map)."""
        R = float(self.config.player_radius)
        if self.config.renderer != "ray" or R <= 0:
            return torch.full_like(xy[:, 0], R)
        c = self.config.occupancy_cell
        k = int(math.ceil(R / c))
        ny, nx = self.occupancy.shape
        offs = torch.arange(-k, k + 1, device=xy.device, dtype=xy.dtype)
        ix = torch.floor((xy[:, 0] - self.hit_lo[0]) / c)[:, None] + offs  # (B, 2k + 1) columns near each
        iy = torch.floor((xy[:, 1] - self.hit_lo[1]) / c)[:, None] + offs
        gap_x = torch.maximum(self.hit_lo[0] + ix * c - xy[:, 0, None], xy[:, 0, None] - self.hit_lo[0] - (ix + 1) * c).clamp(min=0)
        gap_y = torch.maximum(self.hit_lo[1] + iy * c - xy[:, 1, None], xy[:, 1, None] - self.hit_lo[1] - (iy + 1) * c).clamp(min=0)
        inside = ((ix >= 0) & (ix < nx))[:, None, :] & ((iy >= 0) & (iy < ny))[:, :, None]  # (B, rows, columns)
        flat = (iy.clamp(0, ny - 1)[:, :, None] * nx + ix.clamp(0, nx - 1)[:, None, :]).long()
        wall = (self.occupancy.reshape(-1)[flat] > 0.5) & inside
        gap = torch.maximum(gap_x[:, None, :], gap_y[:, :, None])
        return torch.where(wall, gap, torch.full_like(gap, R)).flatten(1).amin(1).clamp(max=R)

    def advance(self, pose: torch.Tensor, move: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Where ``action`` (B, A, normalised) takes the camera at ``pose`` (B, 4) after ``move``
        (B, 2 or 4): (pose (B, 4), move (B, 2 or 4)). A move must stay in the walked cells and keep
        ``player_radius`` from the wall map (or, closer already, get no closer); a blocked move
        slides along one axis or stops. A move of four columns carries the walk too (the cache's):
        the speed the bob follows (``walk_speeds``) and the frames since the start, modulo
        ``bob_period``."""
        pose, move, action = pose.float(), move.float(), action.float()
        ones = torch.ones_like(pose[:, :1])
        mv = torch.cat([move[:, :2], action, ones], 1) @ self.kinematics  # (B, 3) forward, left, yaw
        a = pose[:, 3] * (math.pi / 180.0)
        dx = mv[:, 0] * torch.cos(a) - mv[:, 1] * torch.sin(a)
        dy = mv[:, 0] * torch.sin(a) + mv[:, 1] * torch.cos(a)
        xy = pose[:, :2]
        full = xy + torch.stack([dx, dy], 1)
        only_x = xy + torch.stack([dx, torch.zeros_like(dy)], 1)
        only_y = xy + torch.stack([torch.zeros_like(dx), dy], 1)
        stranded = ~self._free(xy)  # placed outside the walked cells (a located image): any move is allowed
        room = self.clearance(xy) - 1e-3
        f_full, f_x, f_y = ((stranded | (self._free(q) & (self.clearance(q) >= room)))[:, None]
                            for q in (full, only_x, only_y))
        new_xy = torch.where(f_full, full, torch.where(f_x, only_x, torch.where(f_y, only_y, xy)))
        new_move = torch.where(f_full, mv[:, :2], torch.zeros_like(mv[:, :2]))
        iy, ix = self._cell(new_xy)
        z = self.floor[iy, ix][:, None]
        angle = torch.remainder(pose[:, 3:4] + mv[:, 2:3], 360.0)
        if move.shape[1] > 2:
            push = torch.linalg.vector_norm(mv[:, :2], dim=1, keepdim=True)
            if self.config.bob_stuck > 0:  # a stuck move counts as its own speed: walk_speeds' law
                stuck = (push > STUCK_MOVE) & (torch.linalg.vector_norm(new_xy - xy, dim=1, keepdim=True) < STUCK_MOVE)
                push = torch.where(stuck, torch.full_like(push, self.config.bob_stuck), push)
            speed = BOB_SMOOTH * move[:, 2:3] + (1 - BOB_SMOOTH) * push
            clock = move[:, 3:4] + 1
            if self.config.bob_period > 0:
                clock = torch.remainder(clock, self.config.bob_period * CLOCK_WRAP)
            new_move = torch.cat([new_move, speed, clock], 1)
        return torch.cat([new_xy, z, angle], 1), new_move

    def bob_amplitude(self, speed: torch.Tensor) -> torch.Tensor:
        """Walking speeds (``walk_speeds``) -> the view's bob amplitude there (map units), by
        ``fit_bob``'s law."""
        return (self.config.bob_gain * speed**2).clamp(max=self.config.bob_max)

    def walk(self, move: torch.Tensor) -> torch.Tensor:
        """The cache's move (B, 4) -> (B, 3): the eye's height over the feet (``EYE`` and the bob
        Doom's view makes at that walking speed and time, ``fit_bob``'s law) and the weapon's bob,
        pixels across and down (``weapon_x``, ``weapon_y``): the pose's columns 4 to 6 that
        ``render`` draws the walk with."""
        c = self.config
        amplitude = self.bob_amplitude(move[:, 2])
        turn = move[:, 3] * (2 * math.pi / max(c.bob_period, 1e-6))
        eye = EYE + amplitude * torch.sin(turn + c.bob_phase)
        weapon = turn / WEAPON_CYCLE + c.weapon_phase
        return torch.stack([eye, c.weapon_x * amplitude * torch.cos(weapon), c.weapon_y * amplitude * torch.sin(weapon).abs()], 1)

    # -- finding where an image was seen --------------------------------------------------
    def _retrieve(self, frames: torch.Tensor, k: int) -> torch.Tensor:
        """(B, 3, H, W) -> the k nearest bank poses (B, k, 4) by thumbnail distance."""
        thumbs = F.avg_pool2d(frames.float(), THUMB).flatten(1)  # (B, D)
        bank = self.bank_thumbs.flatten(1)  # (N, D)
        d = (thumbs * thumbs).sum(1, keepdim=True) - 2 * thumbs @ bank.T + (bank * bank).sum(1)[None]  # (B, N) squared
        idx = d.topk(min(k, d.shape[1]), dim=1, largest=False).indices  # (B, k)
        return self.bank_poses[idx.reshape(-1)].reshape(frames.shape[0], -1, 4)

    def _best(self, poses: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """Candidate poses (B, k, 4) -> (B, 4): each element's whose rendering is closest (L1) to its frame."""
        B, k = poses.shape[:2]
        target = frames[:, None].expand(B, k, *frames.shape[1:]).reshape(B * k, *frames.shape[1:])
        err = (self.render(poses.reshape(B * k, 4)) - target).abs().mean(dim=(1, 2, 3)).reshape(B, k)
        best = err.argmin(1)  # (B,)
        return torch.gather(poses, 1, best[:, None, None].expand(B, 1, 4))[:, 0]

    def nearest(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames (B, 3, H, W) in [-1, 1] -> the bank pose (B, 4), among the ``locate_candidates``
        nearest thumbnails, that renders closest to each: ``locate`` without its gradient steps
        (what the browser runs: the ``locate`` graph)."""
        return self._best(self._retrieve(frames.float(), self.config.locate_candidates), frames.float())

    def locate(self, frames: torch.Tensor, guess: torch.Tensor | None = None) -> torch.Tensor:
        """Frames (B, 3, H, W) in [-1, 1] -> the poses (B, 4) that render closest to them: the
        nearest bank poses refined by gradient steps on the rendering's L1 to the frame (x, y and
        angle; the floor height follows the cell). With a ``guess`` (B, 4) (tracking: where the
        camera should be) the guess and the nearest bank pose, a third of the steps."""
        with torch.inference_mode(False), torch.enable_grad():  # sessions run in inference mode
            return self._locate(frames.detach().float().clone(), None if guess is None else guess.detach().float().clone())

    def _locate(self, frames: torch.Tensor, guess: torch.Tensor | None) -> torch.Tensor:
        cfg = self.config
        # tracking (a guess: where the kinematics took the camera) needs fewer candidates and steps, and shorter ones
        k, steps = (cfg.locate_candidates, cfg.locate_steps) if guess is None else (1, max(1, cfg.locate_steps // 3))
        lr = LOCATE_LR if guess is None else TRACK_LR
        with torch.no_grad():
            cand = self._retrieve(frames, k)  # (B, k, 4)
        if guess is not None:
            cand = torch.cat([cand, guess[:, None]], 1)
        B, k = cand.shape[:2]
        target = frames[:, None].expand(B, k, *frames.shape[1:]).reshape(B * k, *frames.shape[1:])
        p = cand.reshape(B * k, 4).clone()
        xy, ang = p[:, :2].clone().requires_grad_(True), p[:, 3:].clone().requires_grad_(True)
        opt = torch.optim.Adam([{"params": [xy], "lr": lr[0]}, {"params": [ang], "lr": lr[1]}])
        # Adam's steps are about lr long whatever the gradient: without the decay the pose wanders
        # about the optimum by that much (docs/experiments.md: the camera placed on real frames)
        decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        frozen = [q.requires_grad for q in self.parameters()]
        for q in self.parameters():
            q.requires_grad_(False)
        try:
            for _ in range(steps):
                pose = torch.cat([xy, p[:, 2:3], ang], 1)
                loss = (self.render(pose) - target).abs().mean()
                opt.zero_grad(set_to_none=True)
                (loss * B * k).backward()
                opt.step()
                decay.step()
        finally:
            for q, r in zip(self.parameters(), frozen):
                q.requires_grad_(r)
        with torch.no_grad():
            iy, ix = self._cell(xy)
            pose = torch.cat([xy, self.floor[iy, ix][:, None], torch.remainder(ang, 360.0)], 1)
            return self._best(pose.reshape(B, k, 4), frames)

    # -- the session's interface (as the pixel worlds') --------------------------------------
    def new_cache(self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> FieldCache:
        device = device if device is not None else self.pos_embed.device
        z = lambda *s: torch.zeros(batch_size, *s, device=device)  # noqa: E731
        return FieldCache(pose=z(4), move=z(4), home=z(4), fresh=torch.ones(batch_size, dtype=torch.bool, device=device),
                          reward=z(), termination=z())

    def step_with_cache_tensors(self, latent: torch.Tensor, noise_level: torch.Tensor, action: torch.Tensor,
                                pose: torch.Tensor, move: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The pure step: (velocity = latent - frame at the pose ``action`` leads to, reward 0,
        termination logit -20, that pose (B, 4), the move (B, 4): with the walk): what ``append`` makes the
        cache (a backend without the network's buffers takes them from here)."""
        new_pose, new_move = self.advance(pose, move, action)
        if self.config.bob_gain > 0 and new_move.shape[1] > 2:  # the walk's bob moves the eye (and the weapon)
            walk = self.walk(new_move)
            walk = walk if self.config.weapon_x or self.config.weapon_y else walk[:, :1]
            frame = self.render(torch.cat([new_pose, walk], 1)).to(latent.dtype)
        else:
            frame = self.render(new_pose).to(latent.dtype)
        zeros = latent[:, 0, 0, 0] * 0
        return latent - frame, zeros, zeros - 20.0, new_pose, new_move

    def step(self, latent: torch.Tensor, noise_level: torch.Tensor | float, action: torch.Tensor, cache: FieldCache) -> DynamicsOutput:
        out, _ = run_cached_step(self, latent, noise_level, action, cache)
        return out

    def append(self, latent: torch.Tensor, noise_level: torch.Tensor | float, action: torch.Tensor, cache: FieldCache) -> DynamicsOutput:
        """The camera moves to where ``action`` (B, A) leads (the frame ``latent`` is what it sees
        there); an element's first frame after a reset is its start: it stays put."""
        check_batch(cache, latent)
        with torch.no_grad():
            cache.go(*self.advance(cache.pose, cache.move, action))
        cache.frames_seen += 1
        zeros = torch.zeros(latent.shape[0], device=latent.device)
        return DynamicsOutput(torch.zeros_like(latent), zeros, zeros - 20.0)

    def place(self, cache: FieldCache, frames: torch.Tensor, poses: torch.Tensor | None = None, *, start: bool = False) -> None:
        """Real frames (B, 3, H, W) were seen: put each camera where its frame was seen (``poses``
        (B, 4) when known, else ``locate``: from the cache's pose too unless ``start``).
        ``start``: that is also where the element restarts, at rest. Else (tracking: the frame
        follows a frame appended since the last placement) the camera keeps the momentum it had
        between the two placements (``body_move`` from ``cache.last``), and its walk goes on,
        unless the frame was seen farther than ``RELOCATE`` from where the camera was expected:
        a new place, at rest."""
        if poses is None:
            poses = self.locate(frames, None if start else cache.pose)
        with torch.no_grad():
            poses = poses.to(cache.pose)
            if start or cache.last is None:
                cache.move.zero_()
            else:
                cache.move[:, :2] = body_move(poses, cache.last)[:, :2]  # forward, left
                cache.move.mul_(torch.linalg.vector_norm(poses[:, :2] - cache.pose[:, :2], dim=1, keepdim=True) <= RELOCATE)
            cache.pose.copy_(poses)
            cache.last = None
            cache.fresh.zero_()
            if start:
                cache.home.copy_(cache.pose)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

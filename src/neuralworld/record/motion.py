"""Camera motion for imported video: the conventions, the result, and motion logs.

A world model learns what an action does to the next frame, so footage needs
one action per frame. For video the action is the camera's own motion between
frame ``i`` and frame ``i + 1``: a translation and a rotation, both expressed
in the camera's frame at frame ``i`` (so "forward" means where the camera
looked, whatever its heading in the world).

Conventions (the same for every source, and for ``pose`` columns in datasets)
-----------------------------------------------------------------------------
* **World frame**: right-handed, ``z`` up (ViZDoom's ``x, y, z``). Heading 0
  looks along ``+x``; heading 90° looks along ``+y``.
* **Angles** in degrees. ``yaw`` is the heading, positive turning *left*
  (counter-clockwise seen from above, as ViZDoom's ``ANGLE``); ``pitch`` is
  positive looking *up*; ``roll`` is positive when the camera's right side goes
  *down* (clockwise as seen from behind the camera). The orientation is
  ``Rz(yaw) @ Ry(-pitch) @ Rx(roll)`` acting on body axes forward-left-up.
* **Per-frame translation** ``(right, up, forward)`` in the camera frame of
  frame ``i``; **per-frame rotation** ``(yaw, pitch, roll)`` of frame ``i + 1``
  relative to frame ``i``, with the signs above. The last frame of a video has
  no next frame: its motion is zero and it is marked unreliable.

Motion log formats (CSV, one header line, comma separated, ``#`` lines skipped)
------------------------------------------------------------------------------
(a) **6DoF pose**, e.g. from a motion-capture rig, a drone's flight log or a
    phone AR session::

        t,x,y,z,yaw,pitch,roll
        0.000,0.0,0.0,1.6,90.0,0.0,0.0
        0.033,0.0,0.04,1.6,89.5,0.1,0.0

    ``t`` in seconds, ``x, y, z`` in metres in the world frame above, angles in
    degrees with the signs above.

(b) **IMU** (gyroscope + accelerometer)::

        t,gx,gy,gz,ax,ay,az
        0.000,0.01,-0.52,0.00,0.1,-9.79,0.3

    ``t`` in seconds; ``gx, gy, gz`` angular rate in rad/s and ``ax, ay, az``
    specific force in m/s² (reads about +9.81 along the axis pointing *up* when
    still, as phones report), both about the **camera's OpenCV axes**: ``x``
    right, ``y`` down, ``z`` forward along the optical axis. A phone's device
    axes (x right, y up, z out of the screen) become, for its rear camera held
    upright: ``gx, -gy, -gz`` and ``ax, -ay, -az``.

    The gyroscope is integrated for rotation. Translation from the accelerometer
    is **not** computed: double integration turns a 0.01 m/s² bias into metres
    of drift within seconds, and removing gravity needs an orientation better
    than a phone has. So IMU imports have zero translation actions, ``NaN``
    positions and ``translation_unit == "none"``. The accelerometer is used for
    what it is good at: the direction of gravity slowly pulls pitch and roll
    back (a complementary filter), which stops gyroscope drift in them. Yaw has
    no such reference and drifts with the gyroscope's bias.

Columns may come in any order and extra columns are ignored, so logs from apps
that write more fields load as they are. Times must strictly increase. The log
is aligned to the video by timestamp: the frame at video time ``tau`` is looked
up at log time ``tau + offset``; values are interpolated linearly (headings
unwrapped first) and smoothed with a Gaussian of ``smooth_s`` seconds.

Estimated from the pixels instead: ``record/odometry.py`` (visual odometry), which
produces the same ``CameraMotion`` with the same conventions.
"""

from __future__ import annotations

import csv
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from neuralworld.data.store import DatasetError

POSE_COLUMNS = ("t", "x", "y", "z", "yaw", "pitch", "roll")
IMU_COLUMNS = ("t", "gx", "gy", "gz", "ax", "ay", "az")
POSE_NAMES = ("x", "y", "z", "yaw", "pitch", "roll")
GRAVITY = 9.80665

# body axes: OpenCV camera (x right, y down, z forward) -> forward, left, up
CV_TO_FLU = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


class MotionError(DatasetError):
    """A motion log can't be read or doesn't fit the video; the message says why."""


# ---------------------------------------------------------------------------
# rotations
# ---------------------------------------------------------------------------
def euler_to_matrix(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """Degrees (any matching shapes ``S``) → rotation matrices ``(*S, 3, 3)`` in
    forward-left-up axes: ``Rz(yaw) @ Ry(-pitch) @ Rx(roll)``."""
    y, p, r = (np.radians(np.asarray(v, np.float64)) for v in (yaw, pitch, roll))
    cy, sy, cp, sp, cr, sr = np.cos(y), np.sin(y), np.cos(p), np.sin(p), np.cos(r), np.sin(r)
    # Ry(-pitch): rotating by -pitch about "left" lifts the forward axis up
    rows = [
        [cy * cp, -cy * sp * sr - sy * cr, -cy * sp * cr + sy * sr],
        [sy * cp, -sy * sp * sr + cy * cr, -sy * sp * cr - cy * sr],
        [sp, cp * sr, cp * cr],
    ]
    return np.stack([np.stack(row, axis=-1) for row in rows], axis=-2)


def matrix_to_euler(rot: np.ndarray) -> np.ndarray:
    """Rotation matrices ``(..., 3, 3)`` (forward-left-up) → ``(..., 3)`` yaw, pitch, roll in degrees."""
    rot = np.asarray(rot, np.float64)
    yaw = np.arctan2(rot[..., 1, 0], rot[..., 0, 0])
    pitch = np.arcsin(np.clip(rot[..., 2, 0], -1.0, 1.0))
    roll = np.arctan2(rot[..., 2, 1], rot[..., 2, 2])
    return np.degrees(np.stack([yaw, pitch, roll], axis=-1))


def _exp_so3(w: np.ndarray) -> np.ndarray:
    """Rotation vector ``(3,)`` (radians) → matrix (Rodrigues)."""
    theta = float(np.linalg.norm(w))
    k = np.array([[0.0, -w[2], w[1]], [w[2], 0.0, -w[0]], [-w[1], w[0], 0.0]])
    if theta < 1e-9:
        return np.eye(3) + k
    return np.eye(3) + math.sin(theta) / theta * k + (1 - math.cos(theta)) / theta**2 * (k @ k)


# ---------------------------------------------------------------------------
# the result every source produces
# ---------------------------------------------------------------------------
@dataclass
class CameraMotion:
    """Per-frame camera motion for one video (``N`` frames).

    ``rotation[i]`` and ``translation[i]`` take frame ``i`` to frame ``i + 1``
    (the last row is zero); ``pose[i]`` is the camera at frame ``i``.
    """

    times: np.ndarray  # (N,) seconds, frame times on the video's clock
    rotation: np.ndarray  # (N, 3) yaw, pitch, roll in degrees per frame
    translation: np.ndarray  # (N, 3) right, up, forward per frame, in translation_unit
    pose: np.ndarray  # (N, 6) x, y, z, yaw, pitch, roll (NaN where unknown)
    reliable: np.ndarray  # (N,) bool: False where the estimate is suspect
    source: str  # "pose_log", "imu_log" or "visual_odometry"
    translation_unit: str  # "m", "parallax_rad" or "none"
    reasons: dict[str, int] = field(default_factory=dict)  # why frames were flagged: reason -> count
    details: dict[str, Any] = field(default_factory=dict)  # source-specific facts for the episode attrs

    def __post_init__(self) -> None:
        n = len(self.times)
        for name, shape in (("rotation", (n, 3)), ("translation", (n, 3)), ("pose", (n, 6)), ("reliable", (n,))):
            if getattr(self, name).shape != shape:
                raise ValueError(f"CameraMotion.{name} must have shape {shape}, got {getattr(self, name).shape}")

    def __len__(self) -> int:
        return len(self.times)

    @property
    def unreliable_fraction(self) -> float:
        return float(1.0 - self.reliable.mean()) if len(self) else 0.0

    def summary(self) -> dict[str, Any]:
        """JSON-ready facts about the motion (for episode attrs and reports)."""
        return {
            "source": self.source,
            "translation_unit": self.translation_unit,
            "rotation_unit": "deg/frame",
            "unreliable_fraction": round(self.unreliable_fraction, 4),
            "unreliable_reasons": dict(self.reasons),
            **self.details,
        }


def motion_from_poses(
    times: np.ndarray,
    position: np.ndarray,
    angles: np.ndarray,
    *,
    source: str,
    translation_unit: str,
    reliable: np.ndarray | None = None,
) -> CameraMotion:
    """World poses per frame → per-frame deltas in the camera frame.

    ``position`` (N, 3) metres (NaN when unknown: translation becomes 0),
    ``angles`` (N, 3) yaw, pitch, roll in degrees.
    """
    times = np.asarray(times, np.float64)
    position = np.asarray(position, np.float64)
    angles = np.asarray(angles, np.float64)
    n = len(times)
    rot = euler_to_matrix(angles[:, 0], angles[:, 1], angles[:, 2])  # (N, 3, 3)
    rotation = np.zeros((n, 3))
    translation = np.zeros((n, 3))
    if n > 1:
        rel = np.einsum("nji,njk->nik", rot[:-1], rot[1:])  # R_i^T R_{i+1}
        rotation[:-1] = matrix_to_euler(rel)
        step = np.einsum("nji,nj->ni", rot[:-1], position[1:] - position[:-1])  # forward, left, up
        translation[:-1] = np.nan_to_num(np.stack([-step[:, 1], step[:, 2], step[:, 0]], axis=1))
    ok = np.ones(n, bool) if reliable is None else np.asarray(reliable, bool).copy()
    reasons: Counter[str] = Counter()
    if n:
        ok[-1] = False
        reasons["last_frame"] += 1
    return CameraMotion(
        times=times,
        rotation=rotation,
        translation=translation,
        pose=np.concatenate([position, angles], axis=1),
        reliable=ok,
        source=source,
        translation_unit=translation_unit,
        reasons=dict(reasons),
    )


# ---------------------------------------------------------------------------
# motion logs
# ---------------------------------------------------------------------------
@dataclass
class PoseLog:
    """A 6DoF pose log: ``t`` (K,) seconds, ``position`` (K, 3) m, ``angles`` (K, 3) deg."""

    path: str
    t: np.ndarray
    position: np.ndarray
    angles: np.ndarray


@dataclass
class ImuLog:
    """An IMU log: ``t`` (K,) seconds, ``gyro`` (K, 3) rad/s, ``accel`` (K, 3) m/s², camera OpenCV axes."""

    path: str
    t: np.ndarray
    gyro: np.ndarray
    accel: np.ndarray


def read_motion_log(path: str | os.PathLike) -> PoseLog | ImuLog:
    """Read a motion log, telling the two CSV formats apart by their header.

    Raises ``MotionError`` naming the file, line and column of the first problem.
    """
    where = str(path)
    try:
        with open(where, newline="", encoding="utf-8-sig") as f:
            lines = [(i + 1, line) for i, line in enumerate(f) if line.strip() and not line.lstrip().startswith("#")]
    except FileNotFoundError:
        raise MotionError(f"motion log {where}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise MotionError(f"motion log {where}: cannot read it as text ({e})") from None
    if not lines:
        raise MotionError(f"motion log {where} is empty; expected a header {','.join(POSE_COLUMNS)} or {','.join(IMU_COLUMNS)}")
    rows = list(csv.reader(line for _, line in lines))
    header = [h.strip().lower() for h in rows[0]]
    kind, columns = None, ()
    for name, cols in (("pose", POSE_COLUMNS), ("imu", IMU_COLUMNS)):
        if set(cols) <= set(header):
            kind, columns = name, cols
            break
    if kind is None:
        raise MotionError(
            f"motion log {where}: header {','.join(header)!r} has neither the pose columns "
            f"{','.join(POSE_COLUMNS)} nor the IMU columns {','.join(IMU_COLUMNS)} (see neuralworld.record.motion)"
        )
    index = [header.index(c) for c in columns]
    data = np.empty((len(rows) - 1, len(columns)))
    for r, row in enumerate(rows[1:]):
        line_no = lines[r + 1][0]
        if len(row) < len(header):
            raise MotionError(f"motion log {where}, line {line_no}: {len(row)} fields, the header has {len(header)}")
        for c, i in enumerate(index):
            try:
                data[r, c] = float(row[i])
            except ValueError:
                raise MotionError(f"motion log {where}, line {line_no}: {columns[c]} = {row[i]!r} is not a number") from None
            if not math.isfinite(data[r, c]):
                raise MotionError(f"motion log {where}, line {line_no}: {columns[c]} is {row[i]}, must be finite")
    if len(data) < 2:
        raise MotionError(f"motion log {where} has {len(data)} rows; at least 2 are needed to interpolate")
    back = np.flatnonzero(np.diff(data[:, 0]) <= 0)
    if back.size:
        r = int(back[0]) + 1
        raise MotionError(
            f"motion log {where}, line {lines[r + 1][0]}: time {data[r, 0]} does not increase "
            f"(previous {data[r - 1, 0]}); times must strictly increase"
        )
    if kind == "pose":
        return PoseLog(where, data[:, 0], data[:, 1:4], data[:, 4:7])
    return ImuLog(where, data[:, 0], data[:, 1:4], data[:, 4:7])


def gaussian_smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """Smooth ``x`` (T, C) along time with a Gaussian of ``sigma`` samples.

    The ends are padded by point reflection, which keeps a steady trend (a
    constant speed or turn rate) unbent right up to the first and last sample."""
    if sigma <= 0 or len(x) < 2:
        return x
    radius = min(int(math.ceil(3 * sigma)), len(x) - 1)
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    padded = np.pad(x, ((radius, radius), (0, 0)), mode="reflect", reflect_type="odd")
    return np.stack([np.convolve(padded[:, c], k, mode="valid") for c in range(x.shape[1])], axis=1)


def _uniform_grid(t: np.ndarray, start: float, stop: float, fps: float) -> np.ndarray:
    """Sample times covering [start, stop] at the log's own rate or the frame rate,
    whichever is finer (capped at 1 kHz), so smoothing happens before sampling."""
    native = 1.0 / max(float(np.median(np.diff(t))), 1e-6)
    rate = min(max(native, fps), 1000.0)
    n = max(int(math.ceil((stop - start) * rate)) + 1, 2)
    return np.linspace(start, stop, n)


def _check_coverage(log: PoseLog | ImuLog, frame_times: np.ndarray, offset: float, fps: float) -> None:
    need0, need1 = float(frame_times[0] + offset), float(frame_times[-1] + offset)
    tol = 1.0 / fps
    have0, have1 = float(log.t[0]), float(log.t[-1])
    if have0 > need0 + tol or have1 < need1 - tol:
        hint = ""
        if have0 > need1 or have1 < need0:
            hint = (
                f"; they don't overlap at all: if the log's clock starts elsewhere, "
                f"try an offset of {have0 - frame_times[0]:.3f} s (--motion-offset)"
            )
        raise MotionError(
            f"motion log {log.path} covers t = {have0:.3f}..{have1:.3f} s but the video needs "
            f"{need0:.3f}..{need1:.3f} s (frame times + offset {offset:g} s){hint}"
        )


def motion_from_log(
    log: PoseLog | ImuLog,
    frame_times: Sequence[float],
    *,
    fps: float,
    offset: float = 0.0,
    smooth_s: float = 0.05,
    gravity_gain: float = 1.0,
) -> CameraMotion:
    """Align a motion log to the frames by timestamp → per-frame motion.

    ``frame_times`` are the video's frame times in seconds; ``offset`` is added to
    them to read the log's clock. ``smooth_s`` is the Gaussian's sigma in seconds
    (at least half a frame is always applied, as an anti-alias filter).
    ``gravity_gain`` (per second) sets how fast the IMU's accelerometer corrects
    pitch and roll; 0 turns that off.
    """
    times = np.asarray(frame_times, np.float64)
    if len(times) == 0:
        raise MotionError("no frames to align the motion log to")
    _check_coverage(log, times, offset, fps)
    query = np.clip(times + offset, log.t[0], log.t[-1])
    # smooth over a little more of the log than the video needs, so the video's ends are smoothed like its middle
    sigma_s = max(smooth_s, 0.5 / fps)
    start, stop = max(float(log.t[0]), query[0] - 4 * sigma_s), min(float(log.t[-1]), query[-1] + 4 * sigma_s)
    grid = _uniform_grid(log.t, start, stop, fps)
    sigma = sigma_s * (len(grid) - 1) / max(grid[-1] - grid[0], 1e-9)

    def sample(values: np.ndarray) -> np.ndarray:  # (K, C) on log times -> (N, C) at frame times
        on_grid = np.stack([np.interp(grid, log.t, values[:, c]) for c in range(values.shape[1])], axis=1)
        on_grid = gaussian_smooth(on_grid, sigma)
        return np.stack([np.interp(query, grid, on_grid[:, c]) for c in range(values.shape[1])], axis=1)

    details = {"log": os.path.basename(log.path), "offset_s": float(offset), "smooth_s": float(smooth_s)}
    if isinstance(log, PoseLog):
        angles = np.degrees(np.unwrap(np.radians(log.angles), axis=0))
        motion = motion_from_poses(
            times, sample(log.position), sample(angles), source="pose_log", translation_unit="m"
        )
        motion.details = details
        return motion

    gyro = np.stack([np.interp(grid, log.t, log.gyro[:, c]) for c in range(3)], axis=1)
    gyro = gaussian_smooth(gyro, sigma)
    accel = np.stack([np.interp(grid, log.t, log.accel[:, c]) for c in range(3)], axis=1)
    orient = _integrate_gyro(grid, gyro, accel, gravity_gain)  # (G, 3, 3) body->world at grid times
    # orientation at each frame: hold the grid sample's rate for the remaining time
    k = np.clip(np.searchsorted(grid, query, side="right") - 1, 0, len(grid) - 1)
    frame_rot = np.stack(
        [orient[j] @ _exp_so3(CV_TO_FLU @ gyro[j] * (q - grid[j])) for j, q in zip(k, query)]
    )
    motion = motion_from_poses(
        times, np.full((len(times), 3), np.nan), matrix_to_euler(frame_rot), source="imu_log", translation_unit="none"
    )
    motion.details = {**details, "gravity_gain": float(gravity_gain), "translation": "not estimated from an IMU"}
    return motion


def _integrate_gyro(grid: np.ndarray, gyro_cv: np.ndarray, accel_cv: np.ndarray, gravity_gain: float) -> np.ndarray:
    """Body rates on a uniform grid → orientations (G, 3, 3), with a complementary
    filter that nudges the "up" the orientation implies toward the accelerometer's."""
    dt = float(grid[1] - grid[0])
    gyro = gyro_cv @ CV_TO_FLU.T  # rates about forward, left, up
    accel = accel_cv @ CV_TO_FLU.T

    def usable(a: np.ndarray) -> bool:  # near 1 g: the camera isn't accelerating much
        return abs(float(np.linalg.norm(a)) - GRAVITY) < 1.5

    rot = np.eye(3)
    if gravity_gain > 0 and usable(accel[0]):
        rot = _tilt_towards(rot, accel[0], 1.0)  # start level with gravity, heading 0
        rot = euler_to_matrix(0.0, *matrix_to_euler(rot)[1:])  # pitch and roll only
    out = np.empty((len(grid), 3, 3))
    out[0] = rot
    for j in range(1, len(grid)):
        rot = rot @ _exp_so3(gyro[j - 1] * dt)
        if gravity_gain > 0 and usable(accel[j]):
            rot = _tilt_towards(rot, accel[j], min(gravity_gain * dt, 1.0))
        out[j] = rot
    return out


def _tilt_towards(rot: np.ndarray, accel_body: np.ndarray, fraction: float) -> np.ndarray:
    """Rotate ``rot`` (body→world) by ``fraction`` of the tilt that makes the
    measured gravity direction (body frame) agree with world up."""
    predicted = rot.T @ np.array([0.0, 0.0, 1.0])
    measured = accel_body / np.linalg.norm(accel_body)
    axis = np.cross(predicted, measured)
    s = float(np.linalg.norm(axis))
    if s < 1e-12:
        return rot
    angle = math.atan2(s, float(predicted @ measured))
    return rot @ _exp_so3(-axis / s * angle * fraction)

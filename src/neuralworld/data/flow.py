"""The motion between two recorded frames, as a backward flow: where each pixel of the new
frame was in the old one (pixels, x then y: ``new[p] = old[p + flow[p]]``, the warp's convention).

Two sources, and their combination:

* ``optical_flow``: OpenCV's Farneback on grey frames. Works on any video; good for motions of
  a pixel or two, and blind to large ones (a fast turn at 64 px slides the picture 4-9 px a
  frame) and to flat surfaces (a dark ceiling has nothing to track, so it reads as still).
* ``reprojection_flow``: exact geometry where the recording has the engine's depth buffer and
  the player's pose (ViZDoom): each pixel of the new frame is lifted to the world with its depth
  and projected into the old camera. Right for any turn and on flat surfaces; it misses what the
  pose does not say (the view's walking bob) and moves the weapon, which sits still on screen
  (its depth is 0: kept at zero flow).
* ``pair_flow``: the reprojection, then Farneback on what it leaves (the new frame against the
  old one warped by the reprojection, a motion of a pixel or so), composed. Without depth it is
  Farneback alone.

The camera (``Camera``) is what a dataset with depth records in its attributes: the horizontal
field of view, the aspect of the engine's render (frames are resized from it) and the depth
buffer's unit in the pose's units.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import cv2
import numpy as np


@dataclass(frozen=True)
class Camera:
    """A pinhole camera looking along its heading with no pitch (a Doom player's view)."""

    hfov_deg: float = 90.0
    """Horizontal field of view of the engine's render."""
    aspect: float = 4.0 / 3.0
    """Width / height of the engine's render, with square pixels (frames may be resized from it)."""
    depth_unit: float = 100.0 / 14.0
    """Pose units (map units) per step of the depth buffer; ViZDoom's 8-bit buffer is about 14 per 100."""
    depth_offset: float = 0.0
    """Pose units a depth buffer's reading falls short of the distance along the view (measured
    for ViZDoom against its map's lines: ``record.doom.CAMERA``); 0 for a recording that did not say."""

    def to_attrs(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> "Camera":
        return cls(**{k: float(v) for k, v in attrs.items() if k in cls.__dataclass_fields__})

    def distance(self, depth: np.ndarray) -> np.ndarray:
        """Depth buffer steps (any shape; 0: unknown) -> distances along the view in pose units (0: unknown)."""
        d = np.asarray(depth, np.float32)
        return np.where(d > 0, d * np.float32(self.depth_unit) + np.float32(self.depth_offset), np.float32(0))

    def focal(self, height: int, width: int) -> tuple[float, float]:
        """(fx, fy) in pixels of a (height, width) frame resized from the render."""
        t = np.tan(np.radians(self.hfov_deg) / 2.0)
        return (width / 2.0) / t, (height / 2.0) * self.aspect / t


def optical_flow(new: np.ndarray, old: np.ndarray) -> np.ndarray:
    """(H, W, 2) float32 pixels: where each pixel of ``new`` (H, W, 3) uint8 was in ``old``."""
    g_new, g_old = (cv2.cvtColor(np.ascontiguousarray(x), cv2.COLOR_RGB2GRAY) for x in (new, old))
    return cv2.calcOpticalFlowFarneback(g_new, g_old, None, 0.5, 3, 9, 3, 5, 1.1, 0)


def _axes(angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    a = np.radians(angle_deg)
    return np.array([np.cos(a), np.sin(a)]), np.array([np.sin(a), -np.cos(a)])  # forward, right (z up, yaw CCW)


def reprojection_flow(depth_new: np.ndarray, pose_new: np.ndarray, pose_old: np.ndarray, camera: Camera) -> np.ndarray:
    """(H, W, 2) float32 pixels from the new frame's depth buffer (H, W) and the poses
    (x, y, z, angle in degrees, and the eye's height over the feet where both have it) of the new
    and the old frame. Pixels at depth 0 (the weapon,
    drawn over the view) keep zero flow, and so does a point that would be behind the old camera."""
    H, W = depth_new.shape
    fx, fy = camera.focal(H, W)
    cx, cy = (W - 1) / 2.0, (H - 1) / 2.0
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    Z = camera.distance(depth_new).astype(np.float64)  # distance along the view
    X, Y = (u - cx) / fx * Z, -(v - cy) / fy * Z  # right, up
    f1, r1 = _axes(float(pose_new[3]))
    f0, r0 = _axes(float(pose_old[3]))
    dx = pose_new[0] - pose_old[0] + Z * f1[0] + X * r1[0]  # the point, from the old camera
    dy = pose_new[1] - pose_old[1] + Z * f1[1] + X * r1[1]
    eye = float(pose_new[4]) - float(pose_old[4]) if len(pose_new) > 4 and len(pose_old) > 4 else 0.0  # the bob
    dz = pose_new[2] - pose_old[2] + eye + Y
    Z0 = dx * f0[0] + dy * f0[1]
    ok = (depth_new > 0) & (Z0 > 1e-3)
    Z0 = np.where(ok, Z0, 1.0)
    u0 = cx + fx * (dx * r0[0] + dy * r0[1]) / Z0
    v0 = cy - fy * dz / Z0
    flow = np.stack([u0 - u, v0 - v], -1)
    flow[~ok] = 0.0
    return flow.astype(np.float32)


def remap(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """image (H, W, C) sampled at p + flow[p], bilinear, edges clamped."""
    H, W = flow.shape[:2]
    v, u = np.mgrid[0:H, 0:W].astype(np.float32)
    return cv2.remap(image, u + flow[..., 0], v + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def pair_flow(
    new: np.ndarray, old: np.ndarray, *, depth_new: np.ndarray | None = None, pose_new: np.ndarray | None = None,
    pose_old: np.ndarray | None = None, camera: Camera | None = None,
) -> np.ndarray:
    """(H, W, 2) float32: the best flow the recording allows between frames ``new`` and ``old``."""
    if depth_new is None or camera is None or pose_new is None or pose_old is None:
        return optical_flow(new, old)
    if not (np.all(np.isfinite(pose_new)) and np.all(np.isfinite(pose_old))):
        return optical_flow(new, old)
    geo = reprojection_flow(depth_new, pose_new, pose_old, camera)
    rest = optical_flow(new, remap(old, geo))  # what the geometry leaves: new[p] = warped[p + rest[p]]
    return (rest + remap(geo, rest)).astype(np.float32)  # new[p] = old[q + geo[q]], q = p + rest[p]

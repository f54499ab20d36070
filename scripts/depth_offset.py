"""How far ViZDoom's depth buffer falls short of the true distance: each column's reading
(``train.field.column_depth``: the middle rows) against the distance along the view to the first
wall its ray meets among the map's own lines (ViZDoom's sectors info: one-sided lines, and
two-sided ones whose opening does not reach the eye), at a recording's poses.

    .venv/bin/python scripts/depth_offset.py DATA [--env doom/freedoom_map01] [--episodes 8] [--every 7]

Prints one JSON line: per buffer reading (in steps), the median true distance, and the median of
true - reading x depth_unit (what ``Camera.depth_offset`` should be), overall and by distance.
The recording's poses must hold the eye's height (``record`` stores it). For docs/experiments.md;
not the package."""
from __future__ import annotations

import argparse
import json

import numpy as np

from neuralworld.data.store import Dataset
from neuralworld.record.doom import DoomEngine, parse_env
from neuralworld.train.field import column_depth


def map_segments(env: str) -> np.ndarray:
    """The map's lines (L, 8): x1, y1, x2, y2, one-sided, highest floor, lowest ceiling of the
    sectors either side, sides (1: a wall with nothing behind)."""
    _, scenario = parse_env(env)
    engine = DoomEngine(scenario, (64, 64), 2, 0)
    g = engine.game
    g.close()
    g.set_sectors_info_enabled(True)
    g.init()
    g.new_episode()
    sides: dict[tuple, list] = {}
    for sector in g.get_state().sectors:
        for line in sector.lines:
            key = tuple(sorted([(line.x1, line.y1), (line.x2, line.y2)]))
            sides.setdefault(key, []).append((sector.floor_height, sector.ceiling_height))
    engine.close()
    return np.array([(p[0], p[1], q[0], q[1], max(f for f, _ in v), min(c for _, c in v), len(v)) for (p, q), v in sides.items()],
                    np.float64)


def true_depth(seg: np.ndarray, pose: np.ndarray, col_angle: np.ndarray) -> np.ndarray:
    """Distance along the view (W,) from ``pose`` (x, y, z, angle, eye) to the first wall each
    column's ray meets (inf: none)."""
    eye = pose[2] + pose[4]
    a = np.radians(pose[3] + col_angle)
    dx, dy = np.cos(a)[:, None], np.sin(a)[:, None]
    ex, ey = (seg[:, 2] - seg[:, 0])[None], (seg[:, 3] - seg[:, 1])[None]
    den = dx * ey - dy * ex
    den = np.where(np.abs(den) > 1e-9, den, np.nan)
    wx, wy = (seg[:, 0] - pose[0])[None], (seg[:, 1] - pose[1])[None]
    t, u = (wx * ey - wy * ex) / den, (wx * dy - wy * dx) / den
    solid = ((seg[:, 6] == 1) | (seg[:, 4] > eye) | (seg[:, 5] < eye))[None]
    hit = (t > 0) & (u >= 0) & (u <= 1) & solid
    return np.where(hit, t, np.inf).min(1) * np.cos(np.radians(col_angle))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("--env", default="doom/freedoom_map01")
    p.add_argument("--episodes", type=int, default=8)
    p.add_argument("--every", type=int, default=7)
    a = p.parse_args()
    ds = Dataset(a.data)
    names = list(ds.info.pose_names)
    if "eye" not in names or ds.info.camera is None:
        raise SystemExit(f"{a.data}: needs depth buffers and poses with the eye (record them with neuralworld record)")
    cam = ds.info.camera
    W = ds.resolution[1]
    fx = (W / 2) / np.tan(np.radians(cam.hfov_deg) / 2)
    col_angle = -np.degrees(np.arctan((np.arange(W) + 0.5 - W / 2) / fx))  # left of centre: a larger angle
    seg = map_segments(a.env)
    rows = []
    for e in range(min(a.episodes, ds.num_episodes)):
        d = ds.episode(e).load(("poses", "depth"))
        poses = d["poses"][:: a.every][:, [0, 1, 2, 3, names.index("eye")]]
        reading = column_depth(d["depth"][:: a.every])
        for pose, r in zip(poses, reading):
            t = true_depth(seg, pose, col_angle)
            ok = np.isfinite(t) & (r > 0) & (t < 400)
            rows += list(zip(t[ok], r[ok]))
    R = np.array(rows)
    short = R[:, 0] - R[:, 1] * cam.depth_unit
    out = {"columns": len(R), "depth_unit": cam.depth_unit, "offset_median": round(float(np.median(short)), 2),
           "by_distance": {f"{lo}-{hi}": round(float(np.median(short[(R[:, 0] >= lo) & (R[:, 0] < hi)])), 2)
                           for lo, hi in ((0, 32), (32, 64), (64, 128), (128, 256), (256, 400))},
           "true_median_by_step": {int(v): round(float(np.median(R[np.round(R[:, 1]) == v, 0])), 1) for v in (1, 2, 3, 5, 10, 20)}}
    print(json.dumps(out))


if __name__ == "__main__":
    main()

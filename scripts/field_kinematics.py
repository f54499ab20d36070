"""Probe: how well does a linear model of the recorded camera motion play, and does it stay in the place?

    .venv/bin/python scripts/field_kinematics.py DATA [--frames 10000]

Fits, by least squares on the first nine tenths of the episodes, the camera's move between two
frames (forward, left, up in map units and the yaw in degrees, in the earlier camera's frame:
``model.warp.camera_move``) as a linear function of the previous move and the action; prints its
error on the last tenth. Then plays ``--frames`` frames of random held controls (world_check's
policy: a new control every 8 frames, forward with p 0.6, a turn in [-8, 8] degrees) with it from
the first recorded pose, free and kept to the 16-unit cells the recording visited, and prints the
share of frames near a recorded position. For docs/experiments.md; not part of the package."""
from __future__ import annotations

import argparse

import numpy as np
import torch

from neuralworld.data.store import Dataset
from neuralworld.model.warp import POSE_SCALE, camera_move


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("--frames", type=int, default=10_000)
    a = p.parse_args()
    ds = Dataset(a.data)
    eps = [ds.episode(e).load(("poses", "actions")) for e in range(ds.num_episodes)]
    X, Y, E = [], [], []
    for e, d in enumerate(eps):
        pose = torch.from_numpy(d["poses"]).double()
        move = (camera_move(pose[1:], pose[:-1]) * torch.tensor(POSE_SCALE, dtype=torch.float64)).numpy()  # (T-1, 4)
        for t in range(1, len(move)):  # move t: pose t -> t + 1, after action t
            X.append(np.concatenate([move[t - 1][:2], d["actions"][t], [1.0]]))
            Y.append(move[t])
            E.append(e)
    X, Y, E = np.array(X), np.array(Y), np.array(E)
    held = E >= int(len(eps) * 0.9)
    w, *_ = np.linalg.lstsq(X[~held], Y[~held], rcond=None)
    err = np.abs(X[held] @ w - Y[held])
    print("held-out error, median (forward, left, up, yaw):", np.median(err, 0).round(3).tolist(),
          " p90:", np.percentile(err, 90, 0).round(2).tolist(), " mean |move|:", np.abs(Y[held]).mean(0).round(2).tolist())

    where = np.concatenate([d["poses"][:, :2] for d in eps])
    near = set(map(tuple, np.floor(where / 32).astype(int)))
    cells = set(map(tuple, np.floor(where / 16).astype(int)))

    def play(walls: bool) -> np.ndarray:
        rng = np.random.default_rng(0)
        pose, prev, act, inside = eps[0]["poses"][0].astype(np.float64).copy(), np.zeros(2), np.zeros(X.shape[1] - 3), []
        for t in range(a.frames):
            if t % 8 == 0:
                act = np.zeros_like(act)
                act[0], act[-1] = float(rng.random() < 0.6), rng.uniform(-8, 8)  # forward, turn (ActionSpec order)
            mv = np.concatenate([prev, act, [1.0]]) @ w
            r = np.radians(pose[3])
            dx, dy = mv[0] * np.cos(r) - mv[1] * np.sin(r), mv[0] * np.sin(r) + mv[1] * np.cos(r)
            free = lambda x, y: not walls or tuple(np.floor(np.array([x, y]) / 16).astype(int)) in cells  # noqa: E731
            if free(pose[0] + dx, pose[1] + dy):
                pose[:2] += (dx, dy)
                prev = mv[:2]
            else:  # slide along one axis, or stop
                if free(pose[0] + dx, pose[1]):
                    pose[0] += dx
                elif free(pose[0], pose[1] + dy):
                    pose[1] += dy
                prev = np.zeros(2)
            pose[3] = (pose[3] + mv[3]) % 360
            c = np.floor(pose[:2] / 32).astype(int)
            inside.append(any((c[0] + i, c[1] + j) in near for i in (-1, 0, 1) for j in (-1, 0, 1)))
        return np.array(inside)

    for walls in (False, True):
        inside = play(walls)
        print(f"{a.frames} frames of random held controls, {'kept to the recorded cells' if walls else 'free'}: "
              f"{inside.mean():.2f} of the frames within 32-64 units of a recorded position (first 300: {inside[:300].mean():.2f})")


if __name__ == "__main__":
    main()

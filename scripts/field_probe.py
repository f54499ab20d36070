"""Probe a field world against the engine at the recorded poses of held-out episodes: does it
draw what the engine drew there, as sharp, and does a walk forward expand as the engine's does?

    .venv/bin/python scripts/field_probe.py WORLD DATA [--episodes held|A:B] [--strip OUT.png]

Prints one JSON line: the mean PSNR of renders at every recorded pose against the recorded
frames (and copy-last's, for scale), the median sharpness (variance of the Laplacian) of the
renders over the frames', and the radial flow (eval.probes.radial_flow, Farneback, weapon
masked) of runs of 6 frames with forward held and |turn| < 1 degree: the engine's frames and
the renders at the same poses; and the sharpness again over the frames that face a wall nearer
than 48 map units (their columns' median depth; what random play mostly looks at late), with
their PSNR. ``--episodes held`` (the default): the episodes
``neuralworld train`` holds out (``Dataset.split(0.1)``); ``A:B``: episodes A to B - 1.
``--strip``: 8 of those frames above their renders (4 facing a wall). ``--eye standing``: render
at a standing player's eye height, not the recorded one (the view's bob), where the recording
stores it. A world with a weapon bob (``FieldNetConfig.weapon_x``) draws its weapon where its law
puts it at each frame, with the recorded eye. For docs/experiments.md; not the package."""
from __future__ import annotations

import argparse
import json

import cv2
import numpy as np
import torch
from PIL import Image

import neuralworld
from neuralworld.data.store import Dataset
from neuralworld.eval.metrics import psnr, sharpness
from neuralworld.eval.probes import flows, radial_flow
from neuralworld.train.field import column_depth, episode_speeds, faces_a_wall, weapon_columns

CLOSE = 48.0
"""Map units: a frame whose columns' median depth is nearer faces a wall."""


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("world"), p.add_argument("data")
    p.add_argument("--episodes", default="held")
    p.add_argument("--strip", default=None)
    p.add_argument("--eye", choices=("recorded", "standing"), default="recorded",
                   help="render at the recorded eye height (the view's walking bob; where the recording stores it) "
                        "or at a standing player's")
    a = p.parse_args()
    torch.manual_seed(0)
    w = neuralworld.load(a.world)
    ds = Dataset(a.data)
    if a.episodes == "held":
        episodes = ds.split(0.1)[1]
    else:
        first, last = (int(x) for x in a.episodes.split(":"))
        episodes = list(range(first, min(last, ds.num_episodes)))
    names = list(ds.info.pose_names)
    cols = list(range(4)) + ([names.index("eye")] if "eye" in names and a.eye == "recorded" else [])  # with the eye
    fwd = ds.spec.buttons.index("forward")
    turn = len(ds.spec.buttons) + [x.name for x in ds.spec.axes].index("turn")
    real, gen, copy, r_flow, g_flow, near = [], [], [], [], [], []
    for e in episodes:
        d = ds.episode(e).load(("frames", "poses", "actions", "depth"))
        near.append(faces_a_wall(ds.info.camera.distance(column_depth(d["depth"])), CLOSE))
        poses = d["poses"][:, cols].astype(np.float32)
        if len(cols) > 4 and (w.dynamics.config.weapon_x or w.dynamics.config.weapon_y):  # the weapon's bob, by its law
            poses = np.concatenate([poses, weapon_columns(w.dynamics, episode_speeds(w.dynamics, ds.spec, d), len(poses))], 1)
        poses = torch.from_numpy(poses)
        with torch.no_grad():
            g = np.concatenate([to_uint8(w.dynamics.render(poses[i : i + 128])) for i in range(0, len(poses), 128)])
        real.append(d["frames"]), gen.append(g)
        copy.append(psnr(d["frames"][1:], d["frames"][:-1]))
        ok = (d["actions"][:, fwd] > 0.5) & (np.abs(d["actions"][:, turn]) < 1)
        t = 0
        while t < len(ok) - 6:
            if not ok[t : t + 6].all():
                t += 1
                continue
            r_flow += list(flows(d["frames"][t + 1 : t + 7], radial_flow))
            g_flow += list(flows(g[t + 1 : t + 7], radial_flow))
            t += 6
    R, G, N = np.concatenate(real), np.concatenate(gen), np.concatenate(near)
    out = {"frames": len(R), "psnr": round(float(np.mean(psnr(R, G))), 2), "copy_last_psnr": round(float(np.mean(np.concatenate(copy))), 2),
           "sharpness_ratio": round(float(np.median(sharpness(G)) / np.median(sharpness(R))), 3),
           "forward_runs": len(r_flow) // 5, "radial_flow_engine": round(float(np.median(r_flow)), 2),
           "radial_flow_world": round(float(np.median(g_flow)), 2), "close_frames": int(N.sum())}
    if N.any():
        out["close_psnr"] = round(float(np.mean(psnr(R[N], G[N]))), 2)
        out["close_sharpness_ratio"] = round(float(np.median(sharpness(G[N])) / np.median(sharpness(R[N]))), 3)
    print(json.dumps(out))
    if a.strip:
        k = np.linspace(0, len(R) - 1, 4).astype(int)  # four frames spread over the episodes, four facing a wall
        k = np.concatenate([k, np.flatnonzero(N)[np.linspace(0, max(0, N.sum() - 1), 4).astype(int)]]) if N.any() else k
        big = lambda f: cv2.resize(f, (128, 128), interpolation=cv2.INTER_NEAREST)  # noqa: E731
        Image.fromarray(np.concatenate([np.concatenate([big(f) for f in X[k]], 1) for X in (R, G)], 0)).save(a.strip)


if __name__ == "__main__":
    main()

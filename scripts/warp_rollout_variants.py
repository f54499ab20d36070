"""Why a warp world's rollouts melt: a trained warp world (bundle) plays 16 frames from real memory
on 24 held-out windows of data/ship64, its frame made in different ways from the same network
outputs (docs/experiments.md, 2026-12-02, round 2):

  full        mask * warp(last, flow) + (1 - mask) * paint, as it plays
  warp_only   warp(last, flow), bilinear (mask 1: no paint)
  whole_px    warp(last, round(flow)): the same flow in whole pixels (nothing resampled)
  coarse4     warp(last, flow averaged over 4x4 blocks), bilinear

Prints PSNR at t = 1 / 8 / 16 and sharpness at t = 16 (variance of the Laplacian, ratio to the real
frame's); writes a picture: real, then each variant, columns t = 1 / 8 / 16 of 4 windows.

    .venv/bin/python scripts/warp_rollout_variants.py RUN/world OUT.png
"""
import sys

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from neuralworld.bundle import load_bundle
from neuralworld.data.store import Dataset
from neuralworld.model.warp import backward_warp, quantize

torch.set_num_threads(1)
world = load_bundle(sys.argv[1])
net = world.dynamics.eval()
cfg = net.config
M, k, T = cfg.window, cfg.action_frames, 16
ds = Dataset("data/ship64")
_, held = ds.split()
rng = np.random.default_rng(0)
eps = [ds.episode(i).load(["frames", "actions"]) for i in held[:8]]
wins = []
for _ in range(24):
    i = int(rng.integers(len(eps)))
    wins.append((i, int(rng.integers(1, len(eps[i]["frames"]) - M - T - 1))))
fr = torch.from_numpy(np.stack([eps[i]["frames"][s:s + M + T] for i, s in wins])).permute(0, 1, 4, 2, 3).float() / 127.5 - 1
ac = torch.from_numpy(np.stack([ds.spec.normalize(eps[i]["actions"][s - 1:s + M + T - 1]) for i, s in wins])).float()


def u8(x):
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def sharp(x):
    return float(np.median([cv2.Laplacian(cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY), cv2.CV_64F).var() for f in u8(x)]))


def psnr(x, y):
    return float((10 * torch.log10(4 / ((x - y) ** 2).mean(dim=(1, 2, 3)))).mean())


def coarse(flow, p):
    return F.interpolate(F.avg_pool2d(flow, p), scale_factor=p, mode="bilinear", align_corners=False)


variants = {
    "full": lambda o, last: o["frame"],
    "warp_only": lambda o, last: backward_warp(last, o["flow"]),
    "whole_px": lambda o, last: backward_warp(last, o["flow"].round(), mode="nearest"),
    "coarse4": lambda o, last: backward_warp(last, coarse(o["flow"], 4)),
}
pictures = [np.concatenate([np.concatenate(list(u8(fr[:4, M + t])), 0) for t in (0, 7, 15)], 1)]
with torch.no_grad():
    for name, make in variants.items():
        gen, memory, played = torch.Generator().manual_seed(0), quantize(fr[:, :M]), []
        for u in range(T):
            out = net(memory, ac[:, M + u - k + 1:M + u + 1], torch.randn(fr[:, 0].shape, generator=gen))
            played.append(make(out, memory[:, -1]))
            memory = torch.cat([memory[:, 1:], quantize(played[-1])[:, None]], 1)
        figures = " / ".join(f"{psnr(played[t], fr[:, M + t]):.2f}" for t in (0, 7, 15))
        print(f"{name:10s} PSNR t = 1 / 8 / 16: {figures} dB, sharpness at t = 16: {sharp(played[-1]) / sharp(fr[:, -1]):.2f}")
        pictures.append(np.concatenate([np.concatenate(list(u8(played[t])[:4]), 0) for t in (0, 7, 15)], 1))
copy = " / ".join(f"{psnr(fr[:, M - 1], fr[:, M + t]):.2f}" for t in (0, 7, 15))
print(f"{'copy last':10s} PSNR t = 1 / 8 / 16: {copy} dB")
gap = np.full((pictures[0].shape[0], 4, 3), 255, np.uint8)
img = np.concatenate([x for p in pictures for x in (p, gap)][:-1], 1)
cv2.imwrite(sys.argv[2], cv2.cvtColor(img, cv2.COLOR_RGB2BGR))

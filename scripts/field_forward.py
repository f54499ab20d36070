"""Probe: does a field world draw a walk forward's expansion? Renders at the recorded poses of
held-forward runs and measures the radial flow beside the engine's frames at the same poses.

    .venv/bin/python scripts/field_forward.py WORLD DATA [--episodes 90:100]

Runs: 6 consecutive frames with forward held and |turn| < 1 degree. Prints the median and mean
radial flow (eval.probes.radial_flow, Farneback, weapon masked) of the real frames and of the
field's renders at their poses. For docs/experiments.md; not the package."""
from __future__ import annotations

import argparse

import numpy as np
import torch

import neuralworld
from neuralworld.data.store import Dataset
from neuralworld.eval.probes import flows, radial_flow


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("world"), p.add_argument("data")
    p.add_argument("--episodes", default="90:100")
    a = p.parse_args()
    w = neuralworld.load(a.world)
    ds = Dataset(a.data)
    first, last = (int(x) for x in a.episodes.split(":"))
    fwd = ds.spec.buttons.index("forward")
    turn = len(ds.spec.buttons) + [x.name for x in ds.spec.axes].index("turn")
    real, gen = [], []
    for e in range(first, min(last, ds.num_episodes)):
        d = ds.episode(e).load(("frames", "poses", "actions"))
        ok = (d["actions"][:, fwd] > 0.5) & (np.abs(d["actions"][:, turn]) < 1)
        t = 0
        while t < len(ok) - 6:
            if not ok[t : t + 6].all():
                t += 1
                continue
            with torch.no_grad():
                g = w.dynamics.render(torch.from_numpy(d["poses"][t + 1 : t + 7, :4].astype(np.float32)))
            g = ((g.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
            real += list(flows(d["frames"][t + 1 : t + 7], radial_flow))
            gen += list(flows(g, radial_flow))
            t += 6
    print(f"{len(real) // 5} runs: real radial flow median {np.median(real):.2f} mean {np.mean(real):.2f} px/frame; "
          f"the field at the same poses median {np.median(gen):.2f} mean {np.mean(gen):.2f}")


if __name__ == "__main__":
    main()

"""How much a world turns while a turn is held, and whether the turn fades.

    .venv/bin/python benchmarks/turn_hold.py [WORLD ...] [--seeds 8] [--frames 24] [--turn 7.5]

Each world starts from its own start frames (``WorldSession``, the player's sampler) and
holds "turn left", then "turn right", for ``--frames`` frames under several noise seeds.
The picture's horizontal slide between consecutive frames (``eval.control.image_shifts``,
block matching; + = the picture moves right, as it does when turning left) is averaged per
window of frames after the start. The engine slides ~3.7 px/frame at 7.5 deg/frame at 64x64.
A world whose turn fades reads large in the first window and near 0 later. Prints a table
per world; the last line is JSON. WORLD defaults to the shipped one.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

import neuralworld
from neuralworld.eval.control import image_shifts
from neuralworld.play.server import resolve_world

WINDOWS = ((1, 4), (4, 12), (12, 24))
"""Frames after the start (from, to) whose slides are averaged together."""


def held_slides(world, turn: float, seeds: range, frames: int, sampler: str) -> np.ndarray:
    """(seeds, frames) slide of each generated frame against the one before it."""
    rows = []
    for seed in seeds:
        session = world.start(sampler=sampler, seed=seed)
        action = world.spec.make(turn=turn)
        rows.append(image_shifts([session.frame, *[session.step(action) for _ in range(frames)]]))
    return np.asarray(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("worlds", nargs="*", default=[None], help="world bundles or run folders (default: the shipped world)")
    ap.add_argument("--seeds", type=int, default=8, help="noise seeds per direction")
    ap.add_argument("--frames", type=int, default=24, help="frames each turn is held")
    ap.add_argument("--turn", type=float, default=7.5, help="degrees per frame held")
    ap.add_argument("--sampler", default="fast")
    args = ap.parse_args(argv)

    windows = [(a, min(b, args.frames)) for a, b in WINDOWS if a < args.frames]
    results = {}
    for arg in args.worlds:
        path = resolve_world(arg)
        world = neuralworld.load(path)
        row = {}
        for name, turn in (("left", -args.turn), ("right", args.turn)):
            s = held_slides(world, turn, range(args.seeds), args.frames, args.sampler)
            row[name] = {f"{a}-{b}": round(float(s[:, a - 1 : b].mean()), 3) for a, b in windows}
        results[str(path)] = row
        print(f"{path} ({args.sampler}, {args.seeds} seeds, {args.turn} deg/frame held): mean slide px/frame")
        print("  frames  " + "  ".join(f"{k:>7}" for k in row["left"]))
        for name in ("left", "right"):
            print(f"  {name:<6}  " + "  ".join(f"{v:>7.2f}" for v in row[name].values()))
    print(json.dumps({"turn_deg_per_frame": args.turn, "seeds": args.seeds, "sampler": args.sampler, "worlds": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

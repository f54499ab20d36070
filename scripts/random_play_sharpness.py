"""Sharpness under random play, the world beside the engine: both play the same random held
controls (``eval.stability.random_actions``, as the report's long drives) from their start, and
their frames' sharpness (variance of the Laplacian) is read over the whole drive, its first 200
frames, its last 200 and its bluntest 200-frame window.

    .venv/bin/python scripts/random_play_sharpness.py WORLD [WORLD ...] [--frames 10000] [--seeds 0 1]

The report's bar reads one drive's last 200 frames against the real frames' median; this script
says how much of that figure is the controls (the engine's own frames dull when random play
presses it against a wall) and how much is the world. The engine is ViZDoom on the world's
recorded map (``--env``, default doom/freedoom_map01), at the world's resolution. Prints one JSON
line per world and seed, the engine's first. ``--picture PNG`` draws the first seed's drives, the
engine's row first, every ``--every``-th frame of the first ``--shown`` (to look at, beside the
figures). For docs/experiments.md; not the package."""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch

import neuralworld
from neuralworld.eval.metrics import sharpness
from neuralworld.eval.stability import random_actions


def summary(sh: np.ndarray) -> dict[str, float]:
    win = min(float(np.median(sh[i : i + 200])) for i in range(0, max(1, len(sh) - 199), 200))
    return {"all": round(float(np.median(sh)), 1), "first200": round(float(np.median(sh[:200])), 1),
            "last200": round(float(np.median(sh[-200:])), 1), "worst200": round(win, 1)}


def engine_drive(env: str, resolution: tuple[int, int], actions: np.ndarray, seed: int) -> np.ndarray:
    from neuralworld.record.doom import DoomEngine, parse_env

    _, scenario = parse_env(env)
    eng = DoomEngine(scenario, resolution, 2, seed=seed)
    try:
        out = []
        for a in actions:
            if eng.game.is_episode_finished():
                eng.game.new_episode()
            out.append(eng.frame(eng.game.get_state()))
            eng.step(a)
        return np.stack(out)
    finally:
        eng.close()


def world_drive(world: neuralworld.World, actions: np.ndarray) -> np.ndarray:
    session = world.start(seed=0)
    return np.stack([np.asarray(session.step(a)) for a in actions])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("worlds", nargs="+")
    p.add_argument("--env", default="doom/freedoom_map01")
    p.add_argument("--frames", type=int, default=10_000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--picture", help="a PNG of the first seed's drives: the engine's row, then each world's")
    p.add_argument("--every", type=int, default=250)
    p.add_argument("--shown", type=int, default=2000, help="frames of the drive the picture covers")
    a = p.parse_args()
    torch.set_num_threads(2)
    worlds = {path: neuralworld.load(path) for path in a.worlds}
    first = next(iter(worlds.values()))
    rows = []
    for seed in a.seeds:
        actions = random_actions(first.spec, a.frames, seed)
        frames = engine_drive(a.env, tuple(first.resolution), actions, seed)
        engine = summary(sharpness(frames))
        print(json.dumps({"drive": "engine", "seed": seed, **engine}), flush=True)
        shown = [frames[a.every - 1 : a.shown : a.every]] if seed == a.seeds[0] else []
        for path, world in worlds.items():
            frames = world_drive(world, actions)
            mine = summary(sharpness(frames))
            ratio = {f"{k}_vs_engine": round(mine[k] / engine[k], 3) for k in ("all", "worst200") if engine[k] > 0}
            print(json.dumps({"drive": path, "seed": seed, **mine, **ratio}), flush=True)
            shown += [frames[a.every - 1 : a.shown : a.every]] if seed == a.seeds[0] else []
        rows = rows or shown
    if a.picture:
        import cv2

        grid = np.concatenate([np.concatenate(list(r), 1) for r in rows], 0)
        cv2.imwrite(a.picture, cv2.cvtColor(cv2.resize(grid, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST), cv2.COLOR_RGB2BGR))
        print(a.picture)


if __name__ == "__main__":
    main()

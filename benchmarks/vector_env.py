"""Environment steps/s of the batched vector env against B separate envs.

    python benchmarks/vector_env.py [--world PATH | --random warp-tiny] [--sizes 1 16 64] [--steps 30] [--threads 2]

For each B: ``WorldVectorEnv`` (one batched ``WorldSession``: one network call per step
for all B) and ``gymnasium.vector.SyncVectorEnv`` of B ``WorldEnv`` (B calls per step),
the same world, random actions, episodes that never end on their own (threshold 1).
Steps/s counts environment steps: B per vector step. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch


def random_world(name: str, out: Path) -> Path:
    """A world of random weights from 'KIND-PRESET' (warp-tiny, world-tiny) in ViZDoom's controls."""
    from neuralworld import bundle
    from neuralworld.model.config import preset as world_preset
    from neuralworld.model.warp import warp_preset
    from neuralworld.record.doom import doom_action_spec

    kind, _, size = name.partition("-")
    make = {"warp": warp_preset, "world": world_preset}[kind]
    cfg = make(size, doom_action_spec(2), resolution=(64, 64))
    torch.manual_seed(0)
    return bundle.save_bundle(out / name, cfg, *bundle.build_networks(cfg), name=name)


def steps_per_second(env: gym.vector.VectorEnv, steps: int, warmup: int = 3) -> float:
    env.reset(seed=0)
    env.action_space.seed(0)
    actions = [env.action_space.sample() for _ in range(steps + warmup)]
    for a in actions[:warmup]:
        env.step(a)
    t0 = time.perf_counter()
    for a in actions[warmup:]:
        env.step(a)
    return env.num_envs * steps / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--world", help="a world bundle (default: --random)")
    p.add_argument("--random", default="warp-tiny", help="a world of random weights: warp-tiny, world-tiny, ...")
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--steps", type=int, default=30, help="timed vector steps per setting")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--backend", default="eager")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    import neuralworld
    from neuralworld.envs import WorldEnv, WorldVectorEnv

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.world) if args.world else random_world(args.random, Path(tmp))
        world = neuralworld.load(path)  # one set of networks, shared by every env
        kw = dict(termination_threshold=1.0, max_steps=10**9, backend=args.backend)
        rows = []
        for B in args.sizes:
            batched = WorldVectorEnv(world, B, **kw)
            separate = gym.vector.SyncVectorEnv([lambda: WorldEnv(world, **kw) for _ in range(B)])
            fast, slow = steps_per_second(batched, args.steps), steps_per_second(separate, args.steps)
            rows.append({"B": B, "batched_steps_per_s": round(fast, 1), "separate_steps_per_s": round(slow, 1), "speedup": round(fast / slow, 2)})
            separate.close()

    H, W = world.resolution
    print(f"{world.name} ({world.model}, {H}x{W}), {args.threads} threads, backend {args.backend}, {args.steps} steps per setting")
    print(f"{'B':>4} {'batched steps/s':>16} {'B separate envs':>16} {'speedup':>8}")
    for r in rows:
        print(f"{r['B']:>4} {r['batched_steps_per_s']:>16.1f} {r['separate_steps_per_s']:>16.1f} {r['speedup']:>7.2f}x")
    print(json.dumps({"world": world.name, "model": world.model, "resolution": [H, W], "threads": args.threads,
                      "backend": args.backend, "steps": args.steps, "rows": rows}))


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()

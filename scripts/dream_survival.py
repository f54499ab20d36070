"""How kind is a world's dream? Random play (a uniform choice of the actions each step) in each
world given, deaths sampled from the termination head (or, with --threshold, when it passes
it): the mean return, to set beside random play in the real engine (`neuralworld agent eval random --env doom/<scenario>`). A world whose dream lets
random play live longer than the engine does will teach a controller that deaths are rare.

    .venv/bin/python scripts/dream_survival.py worlds/take-cover runs/other/world
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from neuralworld.bundle import load_bundle
from neuralworld.controller import dream
from neuralworld.envs import combination_table, parse_combinations


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("worlds", nargs="+", help="recurrent world bundles (their heads give reward and death)")
    ap.add_argument("--actions", default="noop;strafe_left;strafe_right", help="the actions, as agent train's --actions")
    ap.add_argument("--dreams", type=int, default=512)
    ap.add_argument("--max-steps", type=int, default=1000)
    ap.add_argument("--temperature", type=float, default=1.15, help="the dream's temperature (a recurrent world's)")
    ap.add_argument("--death-scale", type=float, default=1.0, help="each step's death probability times this (as agent train's)")
    ap.add_argument("--threshold", type=float, default=None,
                    help="a dream ends when the termination head passes this (as agent train's --threshold without "
                         "--sample-deaths); default: deaths sampled")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    combos = parse_combinations(args.actions)
    for path in args.worlds:
        world = load_bundle(path)
        if not hasattr(world.dynamics.config, "temperature"):
            ap.error(f"{path}: a {world.model} world; the dream's survival is measured in a recurrent world (--model rnn)")
        world.dynamics.config.temperature = args.temperature
        table = combination_table(world.spec, combos)
        choice = np.random.default_rng([args.seed, 0])
        total, steps = dream(world, lambda session: table[choice.integers(0, len(combos), args.dreams)],
                             batch_size=args.dreams, max_steps=args.max_steps,
                             threshold=1.0 if args.threshold is None else args.threshold, seed=args.seed,
                             sample_deaths=args.threshold is None, death_scale=args.death_scale)
        print(f"{path}: random play in the dream returns {total.mean():.0f} (std {total.std():.0f}) over "
              f"{steps.mean():.0f} steps, {args.dreams} dreams")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Real survival of Take Cover policies, one bar a policy: the mean over every set of episodes
scored (``agent eval ... --seed S``, each line one set), each set's mean a dot, and the bars of
issue 16 (3.5x random over the same sets, and 750) as lines.

    .venv/bin/python scripts/survival_plot.py --out docs/images/experiments/x.png \\
        random=runs/random.eval1.json,runs/random.eval1000.json  "seed 0=runs/a.eval1.json,runs/a.eval1000.json"

The first policy named ``random`` gives the 3.5x line.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("policies", nargs="+", metavar="LABEL=EVAL.json[,EVAL.json...]",
                    help="a policy's label and its agent eval JSON lines, one a set of episodes")
    ap.add_argument("--out", required=True, help="the PNG to write")
    ap.add_argument("--title", default="real ViZDoom Take Cover, mean tics survived")
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for spec in args.policies:
        label, _, files = spec.partition("=")
        if not files:
            ap.error(f"{spec!r}: expected LABEL=EVAL.json[,EVAL.json...]")
        sets = {}
        for f in files.split(","):
            r = json.loads(open(f).read().strip().splitlines()[-1])
            sets[r["seed"]] = float(r["mean_return"])
        rows.append((label, sets))
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(rows), 3.6), dpi=110)
    markers = {}
    for i, (label, sets) in enumerate(rows):
        ax.bar(i, np.mean(list(sets.values())), color="#9bb7d4" if label != "random" else "#cccccc")
        for seed, v in sets.items():
            m = markers.setdefault(seed, "os^Dv"[len(markers) % 5])
            ax.plot(i, v, m, color="k", ms=4, label=f"--seed {seed}" if i == 0 else None)
        ax.text(i, 0.45 * np.mean(list(sets.values())), f"{np.mean(list(sets.values())):.0f}", ha="center", fontsize=9)
    random = next((s for label, s in rows if label == "random"), None)
    if random:
        ax.axhline(3.5 * np.mean(list(random.values())), color="#c0392b", lw=1, ls="--", label="3.5x random")
    ax.axhline(750, color="#7f8c8d", lw=1, ls=":", label="750")
    ax.set_xticks(range(len(rows)), [label for label, _ in rows], fontsize=8, rotation=20)
    ax.set_ylabel("mean tics survived (100 episodes a set)")
    ax.set_title(args.title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

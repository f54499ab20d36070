"""Quality against training time of a ``scripts/field_ab.py`` run, from its kept checkpoints.

    .venv/bin/python scripts/field_curve.py DATA RUN [--every 4] [--out RUN/curve.png]

Reads RUN/snap_*.pt (copies of RUN/checkpoint.pt taken as the run went) and RUN/field.pt (the
end), renders the held-out episodes (field_ab's split: the last tenth) at their recorded poses
(every ``--every``-th frame) with each, and prints one JSON line per checkpoint: training
minutes, step, held-out PSNR and sharpness (variance of the Laplacian, median) as a ratio to the
real frames'. Writes a plot of both against minutes. For docs/experiments.md; not the package."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from field_ab import Field, to_uint8  # noqa: E402

from neuralworld.data.store import Dataset  # noqa: E402
from neuralworld.eval.metrics import psnr, sharpness  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data"), p.add_argument("run")
    p.add_argument("--every", type=int, default=4)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    run = Path(a.run)
    ds = Dataset(a.data)
    n = ds.num_episodes
    held = [ds.episode(e).load(("frames", "poses")) for e in range(n - max(1, n // 10), n)]
    R = np.concatenate([d["frames"][:: a.every] for d in held])
    P = torch.from_numpy(np.concatenate([d["poses"][:: a.every, :4] for d in held]).astype(np.float32))
    real_sharp = float(np.median(sharpness(R)))
    points = []
    for path in sorted(run.glob("snap_*.pt")) + ([run / "field.pt"] if (run / "field.pt").exists() else []):
        state = torch.load(path, weights_only=False)
        weights = state["net"] if "net" in state else state
        net = Field(weights["lo"].numpy(), weights["hi"].numpy())
        net.load_state_dict(weights)
        net.eval()
        with torch.no_grad():
            G = np.concatenate([to_uint8(net(P[i : i + 256])) for i in range(0, len(P), 256)])
        if "seconds" in state:
            minutes, step = state["seconds"] / 60, state["step"]
        else:  # the end: field_ab's metrics.json has its time
            m = json.loads((run / "metrics.json").read_text())
            minutes, step = m["seconds"] / 60, m["steps"]
        pt = {"checkpoint": path.name, "minutes": round(minutes, 1), "step": int(step),
              "heldout_psnr": round(float(np.mean(psnr(R, G))), 2),
              "sharpness_ratio": round(float(np.median(sharpness(G))) / real_sharp, 3)}
        points.append(pt)
        print(json.dumps(pt), flush=True)
    points.sort(key=lambda q: q["minutes"])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    t = [q["minutes"] for q in points]
    ax[0].plot(t, [q["heldout_psnr"] for q in points], "o-")
    ax[0].set(xlabel="training minutes (2-core CPU)", ylabel="held-out PSNR at recorded poses (dB)")
    ax[1].plot(t, [q["sharpness_ratio"] for q in points], "o-")
    ax[1].set(xlabel="training minutes (2-core CPU)", ylabel="sharpness / real")
    fig.tight_layout()
    fig.savefig(a.out or run / "curve.png", dpi=90)


if __name__ == "__main__":
    main()

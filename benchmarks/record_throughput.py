"""Recording throughput and storage cost.

    python benchmarks/record_throughput.py [--env doom/freedoom_map01] [--episodes 8] [--steps 500]

Records the same episodes with 1 worker and with --workers workers into fresh
stores, then prints frames/s per worker and in total, bytes per stored frame and
the explorer's coverage. Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

from neuralworld.data.store import Dataset
from neuralworld.record.doom import RecordConfig, record


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="doom/freedoom_map01", help="scenario to record")
    p.add_argument("--episodes", type=int, default=8, help="episodes per run")
    p.add_argument("--steps", type=int, default=500, help="steps per episode")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="workers of the parallel run")
    p.add_argument("--resolution", default="128x128", help="HxW")
    args = p.parse_args()
    h, w = (int(v) for v in args.resolution.split("x"))

    results = {"env": args.env, "resolution": args.resolution, "cpus": os.cpu_count()}
    for workers in sorted({1, args.workers}):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "d")
            cfg = RecordConfig(env=args.env, episodes=args.episodes, workers=workers, resolution=(h, w), max_steps=args.steps)
            s = record(cfg, out, progress=False)
            ds = Dataset(out)
            bpf = ds.nbytes_stored() / ds.num_frames
            print(f"{workers} worker(s): {s['frames']} frames in {s['seconds']:.1f} s = {s['frames_per_second']:.0f} frames/s "
                  f"({s['frames_per_second_per_worker']:.0f} per worker); {bpf / 1024:.1f} KiB/frame stored "
                  f"({h * w * 3 / bpf:.1f}x smaller than raw); coverage {s['coverage_cells_mean']:.0f} cells/episode")
            results[f"workers_{workers}"] = {
                "frames_per_second": s["frames_per_second"],
                "frames_per_second_per_worker": s["frames_per_second_per_worker"],
                "bytes_per_frame": round(bpf, 1),
                "coverage_cells_mean": s["coverage_cells_mean"],
            }
    print(json.dumps(results))


if __name__ == "__main__":
    main()

"""Milliseconds per cached dynamics step (and decoder call) for a preset, batch 1.

    .venv/bin/python benchmarks/dynamics_step.py [--preset small] [--threads 2]

Builds the preset with random weights, fills the KV cache to its full memory,
then times ``Dynamics.step`` (one sampler call), ``Dynamics.append`` and
``Autoencoder.decode``: eager fp32, fp32 under bf16 autocast, and bf16 weights. Prints figures; the
last line is JSON. Never asserts on time (timings on a shared machine vary).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time

import torch

from neuralworld.actions import ActionSpec, Axis
from neuralworld.model import Autoencoder, Dynamics, preset


def time_ms(fn, repeats: int, warmup: int = 5) -> tuple[float, float]:
    """(median, best) wall time of ``fn()`` in milliseconds. On a shared machine the
    best of many calls is the steadier estimate of what the code costs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return round(times[len(times) // 2], 2), round(times[0], 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", help="model preset to build")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per figure (median reported)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = ActionSpec(buttons=("forward", "back", "left", "right", "attack", "use"), axes=(Axis("turn", -10, 10),), fps=35)
    cfg = preset(args.preset, spec=spec).validate()
    dynamics = Dynamics.from_world(cfg).eval()
    decoder = Autoencoder(cfg.autoencoder).eval()
    with torch.no_grad():  # random, non-zero modulation so every path does real work
        for p in dynamics.parameters():
            p.add_(0.02 * torch.randn_like(p))
    c, (h, w) = cfg.latent_channels, cfg.latent_size
    action = torch.zeros(1, spec.size)
    latent = torch.randn(1, c, h, w)

    results: dict[str, float | int | str] = {
        "preset": args.preset,
        "threads": args.threads,
        "dynamics_params": sum(p.numel() for p in dynamics.parameters()),
        "decoder_params": sum(p.numel() for p in decoder.decoder.parameters()),
        "tokens_per_frame": cfg.tokens_per_frame,
        "memory_frames": cfg.dynamics.memory_frames,
        "full_frames": cfg.dynamics.full_frames,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
    }
    # fp32: eager float32; bf16_autocast: float32 weights under CPU autocast;
    # bf16: weights, cache and activations in bfloat16 (what a session would use)
    for mode in ("fp32", "bf16_autocast", "bf16"):
        dtype = torch.float32 if mode == "fp32" else torch.bfloat16
        dyn, dec = (dynamics, decoder) if mode != "bf16" else (copy.deepcopy(dynamics).bfloat16(), copy.deepcopy(decoder).bfloat16())
        z = latent.to(torch.bfloat16) if mode == "bf16" else latent
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=(mode == "bf16_autocast"))
        with torch.inference_mode(), autocast:
            cache = dyn.new_cache(1, dtype=dtype)
            for _ in range(cfg.dynamics.memory_frames):  # a full memory: every ring slot in use
                dyn.append(z, 0.02, action, cache)
            timed = {
                "step": lambda: dyn.step(z, 0.5, action, cache),
                "append": lambda: dyn.append(z, 0.02, action, cache),
                "decode": lambda: dec.decode(z),
            }
            for name, fn in timed.items():
                results[f"{name}_ms_{mode}"], results[f"{name}_ms_best_{mode}"] = time_ms(fn, args.repeats)
        print(
            f"{args.preset} {mode} ({args.threads} threads, batch 1), median / best ms: "
            + ", ".join(f"{n} {results[f'{n}_ms_{mode}']} / {results[f'{n}_ms_best_{mode}']}" for n in timed)
        )
    results["load_average_1min"] = round(os.getloadavg()[0], 2)  # other work on the machine skews figures
    print(json.dumps(results))


if __name__ == "__main__":
    main()

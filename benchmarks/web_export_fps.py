"""Frames/s of ``neuralworld export --web`` pages in headless Chromium (onnxruntime-web, WASM, CPU).

For each world: export it, serve the folder from a thread on 127.0.0.1, open the page
with every other request refused, then measure
  * ``rollout_fps``: a fixed rollout of no-op frames run in the page's worker
    (``nw.transport.rollout``), sampler + append + decode, no drawing: the world's cost;
  * ``page_fps``: the page's own HUD figure with ``?pace=max`` (frames drawn per second,
    what a player sees when the world is not paced to its fps), with the decoder in a second
    worker (the page's default on >= 2 cores) and, ``page_fps_one_worker``, without.

Worlds: random weights (speed does not depend on training) of the tiny preset at 32x32
(the test world's shape) and 64x64 (a first world), and the ``small`` preset at 128x128 (the shipped
world's shape), each with a random distilled student (so ``fast`` is the shipped
world's 1-step sampler); warp-and-paint worlds (model/warp.py) named ``warp-PRESET``
in ``--random`` (its output layer perturbed, so frames are not copies of the last); or
bundles given on the command line.
Each transformer world is exported with the float step graph and with ``--int8``; a warp
world with the float graph only (its step is convolutions, which int8 leaves float). Last line: JSON.

    .venv/bin/python benchmarks/web_export_fps.py [--frames 30] [--sampler fast] [BUNDLE ...]
    .venv/bin/python benchmarks/web_export_fps.py --random warp-mini@64x64
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def random_world(root: Path, preset_name: str, resolution: tuple[int, int]) -> Path:
    """A bundle with random (slightly perturbed, so adaLN does real work) weights."""
    import torch

    from neuralworld.actions import ActionSpec, Axis
    from neuralworld.bundle import build_networks, save_bundle
    from neuralworld.model.config import preset

    spec = ActionSpec(buttons=("forward", "back", "left", "right", "attack", "use"), axes=(Axis("turn", -15, 15, "deg/frame"),), fps=17.5)
    torch.manual_seed(0)
    cfg = preset(preset_name, spec=spec, resolution=resolution)
    ae, dyn = build_networks(cfg)
    student = build_networks(cfg)[1]
    with torch.no_grad():
        for p in list(dyn.parameters()) + list(ae.parameters()) + list(student.parameters()):
            p.add_(0.02 * torch.randn_like(p))
    name = f"random-{preset_name}-{resolution[0]}x{resolution[1]}"
    return save_bundle(root / name, cfg, ae, dyn, name=name, distilled=student, distilled_steps=1)


def random_warp_world(root: Path, preset_name: str, resolution: tuple[int, int]) -> Path:
    """A warp-world bundle with random weights; the zero-initialised output layer (flow, mask,
    paint) perturbed so the generator does real work."""
    import torch

    from neuralworld.actions import ActionSpec, Axis
    from neuralworld.bundle import build_networks, save_bundle
    from neuralworld.model.warp import warp_preset

    spec = ActionSpec(buttons=("forward", "back", "left", "right", "attack", "use"), axes=(Axis("turn", -15, 15, "deg/frame"),), fps=17.5)
    torch.manual_seed(0)
    cfg = warp_preset(preset_name, spec=spec, resolution=resolution)
    codec, net = build_networks(cfg)
    with torch.no_grad():
        net.out.weight.normal_(0.0, 0.05)
    name = f"random-warp-{preset_name}-{resolution[0]}x{resolution[1]}"
    return save_bundle(root / name, cfg, codec, net, name=name)


def measure(page_url: str, action_size: int, noop: list[float], frames: int, profile: Path) -> dict:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            refused = []
            ctx.route("**/*", lambda route: route.continue_() if route.request.url.startswith(page_url) else (refused.append(route.request.url), route.abort()))
            fps = {}
            for pipeline in ("0", "1"):
                page = ctx.new_page()
                page.goto(page_url + f"?pace=max&pipeline={pipeline}")
                page.wait_for_function("window.nw && nw.stats.framesShown >= 3", timeout=120_000)
                time.sleep(5.0)
                fps[pipeline] = float(page.evaluate("nw.stats.fps"))
                threads = page.evaluate("nw.messages.find(m => m.type === 'hello').threads")
                if pipeline == "0":
                    page.close()
            page.evaluate(f"nw.transport.rollout(Array(5).fill({json.dumps(noop)}), 0)")  # warm-up
            ms = page.evaluate(f"nw.transport.rollout(Array({frames}).fill({json.dumps(noop)}), 0).then(r => r.ms)")
            assert not refused, refused
        finally:
            ctx.close()
    return {"rollout_fps": round(frames / (ms / 1000.0), 2), "ms_per_frame": round(ms / frames, 2), "page_fps": round(fps["1"], 2),
            "page_fps_one_worker": round(fps["0"], 2), "threads": threads}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundles", nargs="*", help="world bundles (default: the random worlds of --random)")
    ap.add_argument("--random", default="tiny@32x32,tiny@64x64,small@128x128",
                    help="random worlds to measure when no bundle is given: PRESET@HxW, comma-separated; "
                         "warp-PRESET for a warp-and-paint world (e.g. warp-mini@64x64)")
    ap.add_argument("--frames", type=int, default=30, help="frames in the timed rollout")
    ap.add_argument("--sampler", default="fast", help="sampler preset of the page (fast, euler2, quality)")
    ap.add_argument("--isolated", action="store_true",
                    help="serve with the COOP/COEP headers (as `neuralworld play EXPORT_DIR` does): WebAssembly threads")
    args = ap.parse_args(argv)

    from neuralworld.bundle import load_bundle
    from neuralworld.play.export import StaticServer, export_web

    results = {}
    with tempfile.TemporaryDirectory(prefix="nw-web-bench-") as tmp:
        root = Path(tmp)
        bundles = [Path(b) for b in args.bundles]
        for item in ([] if bundles else args.random.split(",")):
            name, size = item.strip().split("@")
            resolution = tuple(int(x) for x in size.split("x"))
            make = random_warp_world if name.startswith("warp-") else random_world
            bundles.append(make(root, name.removeprefix("warp-"), resolution))
        for bundle, int8 in [(b, q) for b in bundles for q in (False, True)]:
            world = load_bundle(bundle)
            if int8 and world.model != "world":
                continue  # a warp world's step is convolutions: int8 (MatMul/Gemm only) would change nothing
            key = world.name + (" int8" if int8 else "")
            out = export_web(bundle, root / f"site-{bundle.name}-{int8}", sampler=args.sampler, int8=int8)
            manifest = json.loads((out / "world.json").read_text())
            with StaticServer(out, isolated=args.isolated) as server:
                r = measure(server.url, world.spec.size, manifest["action"]["noop"], args.frames, root / f"profile-{bundle.name}-{int8}")
            H, W = world.resolution
            smp = manifest["sampler"]
            r.update(resolution=f"{H}x{W}", sampler=f"{args.sampler} ({smp['method']} x{smp['steps']} on {smp.get('network', 'dynamics')})",
                     step_graph="int8" if int8 else "float32", onnx_mb=round(sum(f.stat().st_size for f in out.glob("*.onnx")) / 2**20, 2))
            results[key] = r
            print(f"{key:>29}: {r['rollout_fps']:6.1f} frames/s in the worker ({r['ms_per_frame']:.1f} ms/frame), "
                  f"{r['page_fps']:6.1f} frames/s drawn ({r['page_fps_one_worker']:.1f} decoding in the same worker), "
                  f"{r['threads']} WASM thread(s), {r['onnx_mb']} MB of graphs", file=sys.stderr)
    summary = {"chromium": CHROMIUM, "isolated": args.isolated, "cpus": os.cpu_count(), "load": round(os.getloadavg()[0], 2), "worlds": results}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

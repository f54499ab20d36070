"""The README's pictures of a world: what a player sees holding each control.

    .venv/bin/python scripts/readme_images.py [WORLD] [--out docs/images]

Writes ``<name>_controls.png`` (one row per held control: start, then every
``--every``-th generated frame, scaled up) and ``<name>_play.gif`` (a short
scripted walk: look left, look right, walk). With ``--agent AGENT`` it also writes
``<name>_agent.gif``: the agent (``neuralworld agent train``) choosing every action from
the frame on screen, as the page's Autopilot does, the heads' reward and DEAD (termination
probability over 0.5) drawn on each frame; the world plays on past a death, as the page does.
Everything comes from ``WorldSession`` with the player's default sampler, from the world's own
start frames: nothing is picked by hand. WORLD defaults to the shipped one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

import neuralworld
from neuralworld.play.server import resolve_world

ROWS = (("turn left", {"turn": -7.5}), ("turn right", {"turn": 7.5}), ("forward", {"forward": 1}),
        ("forward + turn right", {"forward": 1, "turn": 5.0}))  # fmt: skip


def label(img: np.ndarray, text: str) -> np.ndarray:
    out = img.copy()
    cv2.putText(out, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("world", nargs="?", default=None, help="a world bundle or run folder (default: the shipped world)")
    ap.add_argument("--out", default="docs/images", help="folder for the PNG and the GIF")
    ap.add_argument("--frames", type=int, default=24, help="generated frames per row")
    ap.add_argument("--every", type=int, default=4, help="keep every n-th generated frame in the strip")
    ap.add_argument("--scale", type=int, default=3, help="upscaling of each frame (nearest)")
    ap.add_argument("--sampler", default="fast")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--agent", default=None, help="an agent folder: also write <name>_agent.gif, the agent playing the world")
    ap.add_argument("--agent-frames", type=int, default=150, help="frames of the agent's GIF")
    args = ap.parse_args(argv)

    path = resolve_world(args.world)
    world = neuralworld.load(path)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    H, W = world.resolution
    big = lambda f: cv2.resize(f, (W * args.scale, H * args.scale), interpolation=cv2.INTER_NEAREST)  # noqa: E731

    rows = []
    for name, controls in ROWS:
        session = world.start(sampler=args.sampler, seed=args.seed)
        action = world.spec.make(**controls)
        frames = [session.frame] + [session.step(action) for _ in range(args.frames)]
        strip = [label(big(frames[0]), "start")] + [label(big(f), f"+{i}") for i, f in enumerate(frames) if i and i % args.every == 0]
        rows.append(np.concatenate([label(np.zeros_like(strip[0]), name)] + strip, 1))
    png = out / f"{world.name}_controls.png"
    Image.fromarray(np.concatenate(rows, 0)).save(png)

    session = world.start(sampler=args.sampler, seed=args.seed)
    script = [{"turn": -7.5}] * 24 + [{"turn": 7.5}] * 48 + [{"forward": 1}] * 30 + [{"forward": 1, "turn": -5.0}] * 18
    shots = [big(session.frame)] + [big(session.step(world.spec.make(**c))) for c in script]
    gif = save_gif(out / f"{world.name}_play.gif", shots, world.spec.fps)
    print(f"{png}\n{gif}")
    if args.agent:
        print(agent_gif(world, args, big, out))
    return 0


def agent_gif(world, args, big, out: Path) -> Path:
    """The agent plays the world from its start frames; the heads on a HUD line."""
    from neuralworld.agents import load_agent

    agent = load_agent(args.agent, world.spec, env=str(args.world))
    session = world.start(sampler=args.sampler, seed=args.seed)
    shots = [label(big(session.frame), "start")]
    for t in range(args.agent_frames):
        frame = session.step(agent.act(session.frame))
        dead = session.last_termination > 0.5
        shots.append(label(big(frame), f"{t + 1:3d}  r {session.last_reward:+.2f}" + ("  DEAD" if dead else "")))
    return save_gif(out / f"{world.name}_agent.gif", shots, world.spec.fps)


def save_gif(path: Path, shots: list[np.ndarray], fps: float) -> Path:
    Image.fromarray(shots[0]).save(path, save_all=True, append_images=[Image.fromarray(s) for s in shots[1:]],
                                   duration=int(1000 / fps), loop=0)
    return path


if __name__ == "__main__":
    raise SystemExit(main())

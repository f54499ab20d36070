"""How fast does a field world's camera walk? Forward held from rest: map units per frame, in
ViZDoom itself and in each field world given (its kinematics, ``FieldNet.advance``), and the
laws ``fit_kinematics`` fits to a recording, plain least squares and the free camera's.

    .venv/bin/python scripts/kinematics_from_rest.py --data data/ship64d --env doom/freedoom_map01 \\
        --out docs/images/experiments/x.png worlds/freedoom-map01 runs/Pk/world

Prints one line per curve; with --out, draws them. With --env and worlds, also the picture's
radial flow (``eval.probes.radial_flow``, the forward bar's reading) for the same hold from the map's
start, in the engine and in each world (whose start frames are the recording's first, at the
same pose): the bar's real reference is the recording's pooled pairs, mostly at full pace and in
other places, this is the engine under the same controls. For docs/experiments.md; not part of
the package.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

FRAMES = 12


def engine_from_rest(env: str, frame_skip: int, rounds: int = 3) -> list[float]:
    """Forward held for FRAMES frames after standing still, in the real engine (the first
    round that no wall stops)."""
    from neuralworld.record.doom import DoomEngine, doom_action_spec, parse_env

    spec = doom_action_spec(frame_skip)
    eng = DoomEngine(parse_env(env)[1], (64, 64), frame_skip, seed=0)
    try:
        for _ in range(rounds):
            for _ in range(15):
                eng.step(spec.make())
            p0, out = np.array(eng.game.get_state().game_variables[:2], float), []
            for _ in range(FRAMES):
                eng.step(spec.make(forward=1))
                p = np.array(eng.game.get_state().game_variables[:2], float)
                out.append(float(np.linalg.norm(p - p0)))
                p0 = p
            if min(np.diff(out)) > 0:  # it sped up all the way: nothing stopped it
                return out
            for _ in range(12):
                eng.step(spec.make(turn=15))
        return out
    finally:
        eng.close()


def engine_flow_from_start(env: str, frame_skip: int, frames: int) -> list[float]:
    """The radial flow of each frame of a forward hold from the episode's start, in the engine."""
    from neuralworld.eval.probes import radial_flow
    from neuralworld.record.doom import DoomEngine, doom_action_spec, parse_env

    spec = doom_action_spec(frame_skip)
    eng = DoomEngine(parse_env(env)[1], (64, 64), frame_skip, seed=0)
    try:
        eng.game.new_episode()
        shots = [eng.frame(eng.game.get_state())]
        for _ in range(frames):
            eng.step(spec.make(forward=1))
            shots.append(eng.frame(eng.game.get_state()))
    finally:
        eng.close()
    return [radial_flow(shots[i], shots[i + 1]) for i in range(frames)]


def law_from_rest(K: np.ndarray, forward: int) -> list[float]:
    v, out = np.zeros(2), []
    a = np.zeros(K.shape[0] - 3)
    a[forward] = 1.0
    for _ in range(FRAMES):
        v = (np.concatenate([v, a, [1.0]]) @ K)[:2]
        out.append(float(np.hypot(*v)))
    return out


def world_walk(path: str, frames: int) -> tuple[list[float], list[float]]:
    """Forward held for ``frames`` frames from the world's start: the map units moved in each
    frame, and the picture's radial flow between each two."""
    import neuralworld
    from neuralworld.eval.probes import radial_flow

    w = neuralworld.load(path)
    s, moved, shots = w.start(seed=0), [], []
    shots.append(np.asarray(s.frame))
    for _ in range(frames):
        p = s.cache.pose.clone()
        shots.append(s.step(w.spec.make(forward=1)))
        moved.append(float((s.cache.pose[0, :2] - p[0, :2]).norm()))
    return moved, [radial_flow(shots[i], shots[i + 1]) for i in range(frames)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("worlds", nargs="*", help="field world bundles")
    ap.add_argument("--data", help="a recording with poses: the laws fit_kinematics fits to it (its first 90 episodes)")
    ap.add_argument("--env", help="doom/<scenario>: the engine's own walk from rest")
    ap.add_argument("--frame-skip", type=int, default=2)
    ap.add_argument("--out", help="a PNG of the curves")
    args = ap.parse_args(argv)
    curves: dict[str, list[float]] = {}
    if args.env:
        curves[f"ViZDoom ({args.env})"] = engine_from_rest(args.env, args.frame_skip)
    if args.data:
        from neuralworld.data.store import Dataset
        from neuralworld.model.field import body_move, fit_kinematics, rotation_axes

        ds = Dataset(args.data)
        moves, acts = [], []
        for e in range(min(90, ds.num_episodes)):
            d = ds.episode(e).load(("poses", "actions"))
            p = torch.from_numpy(d["poses"][:, :4]).double()
            moves.append(body_move(p[1:], p[:-1]).numpy())
            acts.append(ds.spec.normalize(d["actions"]))
        fwd = ds.spec.index("forward")
        curves["law: plain least squares"] = law_from_rest(fit_kinematics(moves, acts, blocked_mads=None), fwd)
        curves["law: the free camera"] = law_from_rest(fit_kinematics(moves, acts, turns=rotation_axes(ds.spec)), fwd)
    walks = {w: world_walk(w, 2 * FRAMES) for w in args.worlds}
    for w, (moved, _) in walks.items():
        curves[w] = moved[:FRAMES]
    for name, c in curves.items():
        print(f"{name}: " + " ".join(f"{x:.2f}" for x in c) + f"  (frames 2-{FRAMES} mean {np.mean(c[1:]):.2f})")
    if args.env and args.worlds:
        flows = {f"ViZDoom ({args.env})": engine_flow_from_start(args.env, args.frame_skip, 2 * FRAMES)}
        flows.update({w: flow for w, (_, flow) in walks.items()})
        engine = next(iter(flows.values()))
        for name, f in flows.items():
            a, b = np.mean(f[1:FRAMES]), np.mean(f[FRAMES:])
            print(f"radial flow from the start, forward held: {name}: frames 2-{FRAMES} {a:.3f} px/frame "
                  f"({a / np.mean(engine[1:FRAMES]):.2f} of the engine's), frames {FRAMES + 1}-{2 * FRAMES} {b:.3f} "
                  f"({b / np.mean(engine[FRAMES:]):.2f})")
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.5, 3.4), dpi=110)
        for name, c in curves.items():
            engine, law = name.startswith("ViZDoom"), name.startswith("law")
            ax.plot(range(1, FRAMES + 1), c, "k-" if engine else ("-" if law else "--"), lw=2 if engine else 1.2,
                    marker="o" if engine or law else "x", ms=4, label=name + ("" if engine or law else " (the world, played)"))
        ax.set_xlabel("frame of the hold (forward held from rest)")
        ax.set_ylabel("map units moved in the frame")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.out)
        print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

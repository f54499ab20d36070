"""How well does visual odometry recover the camera's turn? Checked against ViZDoom's truth.

Renders walks through Freedoom's MAP01 (no monsters, 160x120, no HUD or weapon
unless --hud) with a persistent explorer: it holds a turn rate and walks or
stands for a random while, then picks again. The player's true heading comes
from GameVariable.ANGLE; the estimate comes from the pixels alone
(``neuralworld.record.odometry.estimate_camera_motion`` with ViZDoom's 90°
horizontal field of view).

Prints per-walk figures and, last, one JSON line:
    corr            correlation of estimated and true yaw per frame
    mae_deg         mean absolute error, degrees per frame (all frames)
    mae_reliable / mae_unreliable   the same over frames flagged reliable / not
    unreliable      fraction of frames flagged unreliable, and why (reasons)
    sign_ok         sign right on frames that turned more than 1 degree
    scale           median estimated/true yaw on those frames (1 = right FOV)
    forward_ok      walking frames whose detected translation points forward
    ms_per_frame    odometry time per frame

    .venv/bin/python benchmarks/vo_vizdoom.py [--frames 500] [--seeds 0 1 2] [--hud] [--strafe]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections import Counter

import numpy as np
import vizdoom as vzd

from neuralworld.record.odometry import estimate_camera_motion


def render_walk(frames: int, seed: int, *, hud: bool, strafe: bool, frame_skip: int) -> dict[str, np.ndarray]:
    game = vzd.DoomGame()
    game.set_doom_game_path(os.path.join(os.path.dirname(vzd.__file__), "freedoom2.wad"))
    game.set_doom_map("MAP01")
    game.add_game_args("-nomonsters")
    game.set_screen_resolution(vzd.ScreenResolution.RES_160X120)
    game.set_screen_format(vzd.ScreenFormat.RGB24)
    game.set_window_visible(False)
    game.set_render_hud(hud)
    game.set_render_weapon(hud)
    game.set_render_crosshair(False)
    game.set_available_buttons(
        [vzd.Button.TURN_LEFT_RIGHT_DELTA, vzd.Button.MOVE_FORWARD, vzd.Button.MOVE_RIGHT, vzd.Button.MOVE_LEFT]
    )
    game.set_available_game_variables(
        [vzd.GameVariable.ANGLE, vzd.GameVariable.POSITION_X, vzd.GameVariable.POSITION_Y]
    )
    game.set_episode_timeout(1_000_000)
    game.set_mode(vzd.Mode.PLAYER)
    game.init()
    rng = np.random.default_rng(seed)
    out = {"frames": [], "angle": [], "x": [], "y": [], "walk": []}
    try:
        game.new_episode()
        for _ in range(12):  # the first tics after spawning ignore turning
            game.make_action([0.0, 0.0, 0.0, 0.0])
        hold, action = 0, [0.0, 0.0, 0.0, 0.0]
        while len(out["frames"]) < frames:
            if game.is_episode_finished():
                game.new_episode()
            state = game.get_state()
            out["frames"].append(state.screen_buffer.copy())
            angle, x, y = state.game_variables
            out["angle"].append(angle)
            out["x"].append(x)
            out["y"].append(y)
            if hold <= 0:
                turn = float(rng.choice([0, 0, -2, 2, -5, 5, -8, 8, -12, 12])) / frame_skip
                walk = float(rng.random() < 0.6)
                side = float(rng.choice([-1, 0, 0, 0, 1])) if strafe else 0.0
                action = [turn, walk, float(side > 0), float(side < 0)]
                hold = int(rng.integers(5, 30))
            hold -= 1
            out["walk"].append(action[1])
            game.make_action(action, frame_skip)
    finally:
        game.close()
    return {k: np.asarray(v) for k, v in out.items()}


def evaluate(walk: dict[str, np.ndarray], hfov: float) -> dict:
    frames, angle = walk["frames"], walk["angle"]
    truth = (np.diff(angle) + 180) % 360 - 180  # degrees per frame, positive = left
    start = time.perf_counter()
    motion = estimate_camera_motion(frames, fps=35.0, hfov_deg=hfov)
    ms = (time.perf_counter() - start) / len(frames) * 1e3
    est = motion.rotation[:-1, 0]
    reliable = motion.reliable[:-1]
    err = np.abs(est - truth)
    turning = np.abs(truth) > 1.0
    # true step in the camera's frame: did the player move forward?
    heading = np.radians(angle[:-1])
    dx, dy = np.diff(walk["x"]), np.diff(walk["y"])
    forward_true = dx * np.cos(heading) + dy * np.sin(heading)
    moving = forward_true > 1.0  # map units per frame
    seen = moving & (np.linalg.norm(motion.translation[:-1], axis=1) > 0)
    reasons = {k: v for k, v in motion.reasons.items() if k != "last_frame"}
    return {
        "frames": len(frames),
        "corr": float(np.corrcoef(est, truth)[0, 1]),
        "mae_deg": float(err.mean()),
        "mae_reliable": float(err[reliable].mean()) if reliable.any() else None,
        "mae_unreliable": float(err[~reliable].mean()) if (~reliable).any() else None,
        "p95_err_deg": float(np.percentile(err, 95)),
        "unreliable": float(1 - reliable.mean()),
        "reasons": reasons,
        "sign_ok": float(np.mean(np.sign(est[turning]) == np.sign(truth[turning]))),
        "scale": float(np.median(est[turning] / truth[turning])),
        "forward_ok": float(np.mean(motion.translation[:-1][seen, 2] > 0)) if seen.any() else None,
        "translation_seen": float(seen.sum() / max(moving.sum(), 1)),
        "mean_abs_true_yaw": float(np.abs(truth).mean()),
        "ms_per_frame": ms,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=500, help="frames per walk")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one walk per seed")
    ap.add_argument("--hfov", type=float, default=90.0, help="field of view the odometry assumes")
    ap.add_argument("--frame-skip", type=int, default=1, help="engine tics per frame (35 tics/s)")
    ap.add_argument("--hud", action="store_true", help="draw the status bar and the bobbing weapon")
    ap.add_argument("--strafe", action="store_true", help="also step sideways (harder: looks like turning)")
    args = ap.parse_args()

    results = []
    for seed in args.seeds:
        walk = render_walk(args.frames, seed, hud=args.hud, strafe=args.strafe, frame_skip=args.frame_skip)
        r = evaluate(walk, args.hfov)
        results.append(r)
        print(
            f"seed {seed}: corr {r['corr']:.3f}  MAE {r['mae_deg']:.2f} deg/frame (true |yaw| {r['mean_abs_true_yaw']:.2f})"
            f"  reliable {r['mae_reliable']:.2f} / flagged {r['mae_unreliable'] or math.nan:.2f}"
            f"  flagged {r['unreliable']:.1%} {r['reasons']}  sign {r['sign_ok']:.1%}  scale {r['scale']:.3f}"
            f"  forward {r['forward_ok'] if r['forward_ok'] is None else round(r['forward_ok'], 3)}"
            f"  {r['ms_per_frame']:.1f} ms/frame",
            flush=True,
        )
    reasons: Counter[str] = Counter()
    for r in results:
        reasons.update(r["reasons"])

    def mean(key: str) -> float | None:
        vals = [r[key] for r in results if r[key] is not None]
        return round(float(np.mean(vals)), 4) if vals else None

    summary = {
        "benchmark": "vo_vizdoom",
        "walks": len(results),
        "frames_per_walk": args.frames,
        "hud": args.hud,
        "strafe": args.strafe,
        "hfov": args.hfov,
        **{k: mean(k) for k in ("corr", "mae_deg", "mae_reliable", "mae_unreliable", "p95_err_deg", "unreliable",
                               "sign_ok", "scale", "forward_ok", "translation_seen", "mean_abs_true_yaw", "ms_per_frame")},
        "reasons": dict(reasons),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

"""The ``neuralworld`` command: parse typed arguments, call the library, print.

Each verb lives in a ``_cmd_*`` function; none holds logic of its own. Errors the
user can fix (bad paths, wrong arguments, damaged files) print one clear line
and exit 2; anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from neuralworld.train.config import MODELS, PRECISIONS, PRESET_NAMES, SAMPLER_NAMES, STAGES, STUDENT_STEPS


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""


def _resolution(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"resolution must look like 128x128 (HxW), got {text!r}") from None
    if not (8 <= h <= 2048 and 8 <= w <= 2048):
        raise argparse.ArgumentTypeError(f"resolution {h}x{w} out of range (8..2048 each side)")
    return h, w


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"expected a number >= {low}, got {v}")
        return v

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _setting(text: str) -> tuple[str, float]:
    name, eq, value = text.partition("=")
    try:
        if not eq:
            raise ValueError
        return name.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=NUMBER, got {text!r}") from None


# ---------------------------------------------------------------------------
def _cmd_record(args: argparse.Namespace) -> int:
    from neuralworld.record.doom import RecordConfig, record, scenario_help

    if args.env == "list":
        print(f"What neuralworld record --env can record:\n{scenario_help()}")
        return 0
    if args.out is None:
        raise SystemExit("neuralworld record: error: the following arguments are required: --out")
    cfg = RecordConfig(
        env=args.env,
        episodes=args.episodes,
        workers=args.workers,
        resolution=args.resolution,
        max_steps=args.max_steps,
        frame_skip=args.frame_skip,
        seed=args.seed,
        policy=args.policy,
        agent=args.agent,
        epsilon=args.epsilon,
    )
    load = None
    if args.agent is not None:
        import functools

        from neuralworld.agents import AgentError, load_agent
        from neuralworld.record.doom import doom_action_spec

        try:  # refused here, before any engine starts: another ActionSpec, another frame size
            agent = load_agent(args.agent, doom_action_spec(args.frame_skip), env=f"{args.env} at frame skip {args.frame_skip}")
        except AgentError as e:
            raise UserError(str(e)) from None
        if tuple(agent.resolution) != tuple(args.resolution):
            raise UserError(f"agent {args.agent} sees {tuple(agent.resolution)} frames; --resolution records {tuple(args.resolution)}")
        load = functools.partial(load_agent, args.agent)
    summary = record(cfg, args.out, progress=not args.quiet, load_agent=load)
    print(json.dumps(summary))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    import os

    from neuralworld.train import train, train_config

    stages = STAGES if args.stage == "all" else (args.stage,)
    cfg = train_config(
        args.preset,
        stages=stages,
        clip_frames=args.clip_frames,
        grad_accum=args.grad_accum,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        validate_every=args.validate_every,
        log_every=args.log_every,
        precision=args.precision,
        device=args.device,
        model=args.model,
        distill_student_steps=args.distill_calls,
        init_autoencoder=args.init_autoencoder,
        init_world=args.init_world,
        rollout_frames=args.rollout_frames,
        rollout_real_weight=args.rollout_real_weight,
        **{"autoencoder.steps": args.autoencoder_steps, "dynamics.steps": args.dynamics_steps, "distill.steps": args.distill_steps,
           "rollout.steps": args.rollout_steps,
           "autoencoder.batch_size": args.autoencoder_batch, "dynamics.batch_size": args.dynamics_batch,
           "dynamics.lr": args.dynamics_lr, "warp.steps": args.warp_steps, "warp.batch_size": args.warp_batch,
           "field.steps": args.field_steps, "field.batch_size": args.field_batch, "field.lr": args.field_lr,
           "vae.steps": args.vae_steps, "vae.batch_size": args.vae_batch, "rnn.steps": args.rnn_steps,
           "rnn.batch_size": args.rnn_batch},
        rnn_sequence=args.rnn_sequence,
        rnn_death_horizon=args.rnn_death_horizon,
        rnn_hidden=args.rnn_hidden,
        warp_unroll=args.warp_unroll,
        warp_chain=args.warp_chain,
        warp_objective=dict(args.warp_objective) if args.warp_objective else None,
        field_objective=dict(args.field_objective) if args.field_objective else None,
        field_renderer=args.field_renderer,
    )
    summary = train(args.data, args.out, cfg, resume=args.resume, progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary))
    return 0


def _cmd_data_info(args: argparse.Namespace) -> int:
    from neuralworld.data.store import Dataset

    ds = Dataset(args.path)
    nbytes = ds.nbytes_stored()
    h, w = ds.resolution
    info = {
        "path": ds.where,
        "source": ds.info.source,
        "episodes": ds.num_episodes,
        "frames": ds.num_frames,
        "incomplete_episodes": len(ds.incomplete),
        "resolution": f"{h}x{w}",
        "fps": ds.fps,
        "actions": ds.spec.describe(),
        "pose": list(ds.info.pose_names),
        "game_variables": list(ds.info.game_variables),
        "bytes": nbytes,
        "bytes_per_frame": (round(nbytes / ds.num_frames, 1) if nbytes and ds.num_frames else None),
        "raw_bytes_per_frame": h * w * 3,
        "episode_lengths": {
            "min": min(ds.lengths, default=0),
            "mean": round(sum(ds.lengths) / max(ds.num_episodes, 1), 1),
            "max": max(ds.lengths, default=0),
        },
    }
    if args.json:
        print(json.dumps(info))
    else:
        for k, v in info.items():
            print(f"{k:>20}: {v}")
    return 0


def _cmd_data_show(args: argparse.Namespace) -> int:
    from neuralworld.data.view import render_episode

    out = render_episode(args.path, args.episode, args.out, scale=args.scale, max_frames=args.max_frames)
    print(f"wrote {out}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from neuralworld.bundle import BundleError
    from neuralworld.eval import EvalError, evaluate, summarize

    try:
        horizons = tuple(int(h) for h in args.horizons.split(","))
    except ValueError:
        raise UserError(f"--horizons must be whole numbers separated by commas, got {args.horizons!r}") from None
    if args.report is not None:
        from neuralworld.eval.bars import format_bars
        from neuralworld.eval.report import run_report

        skip = [s for s in (args.skip or "").split(",") if s]
        try:
            m = run_report(args.world, args.data, report_dir=args.report, baselines=args.baseline or (), skip=skip,
                           sampler=args.sampler or "fast", seed=args.seed, context=args.context, horizons=horizons,
                           episodes=args.episodes, stability_frames=args.stability_frames, random_rollouts=args.drives, bench_json=args.bench_json,
                           idm_steps=args.idm_steps, idm_seconds=args.idm_seconds, log=lambda s: print(s, file=sys.stderr))
        except (EvalError, BundleError) as e:
            raise UserError(str(e)) from None
        print(format_bars(m["bars"]))
        print(json.dumps({"report": str(Path(args.report) / "report.md"), "metrics": str(Path(args.report) / "metrics.json"),
                          "seconds": m["seconds"]}))
        return 0
    try:
        result = evaluate(args.world, args.data, out=args.out, horizons=horizons, episodes=args.episodes,
                          context=args.context, sampler=args.sampler or "quality", seed=args.seed)
    except (EvalError, BundleError) as e:
        raise UserError(str(e)) from None
    print(json.dumps(summarize(result)))
    return 0


def _cmd_play(args: argparse.Namespace) -> int:
    import os

    import signal
    import threading

    # idle OpenMP threads sleep instead of spinning: ONNX Runtime and torch share 2 cores
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if threading.current_thread() is threading.main_thread():  # Ctrl+C stops it, even when started by a parent that ignores SIGINT
        signal.signal(signal.SIGINT, signal.default_int_handler)
    from neuralworld.play import PlayConfig, PlayError, serve

    config = PlayConfig(sampler=args.sampler, pace=args.pace, max_players=args.max_players, backend=args.backend,
                        allowed_origins=tuple(args.allow_origin or ()), agent=args.agent)
    try:
        serve(args.world, host=args.host, port=args.port, config=config, open_browser=args.open)
    except PlayError as e:
        raise UserError(str(e)) from None
    return 0


def _cmd_import_video(args: argparse.Namespace) -> int:
    from neuralworld.record.video import import_video

    summary = import_video(
        args.videos,
        args.out,
        motion=args.motion,
        motion_offset=args.motion_offset,
        resolution=args.resolution,
        fps=args.fps,
        crop=args.crop,
        max_episode_frames=args.max_episode_frames,
        hfov=args.hfov,
    )
    print(json.dumps(summary))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from neuralworld.bench import format_table, run_bench
    from neuralworld.bundle import BundleError

    try:
        batches = tuple(int(b) for b in args.batch.split(","))
        paths = tuple(p.strip() for p in args.paths.split(",") if p.strip())
    except ValueError:
        raise UserError(f"--batch must be whole numbers separated by commas, got {args.batch!r}") from None
    try:
        summary = run_bench(args.world, threads=args.threads, batches=batches, frames=args.frames,
                            warmup=args.warmup, sampler=args.sampler, paths=paths,
                            log=lambda m: print(m, file=sys.stderr))
    except (BundleError, ValueError) as e:
        raise UserError(str(e)) from None
    print(format_table(summary))
    print(json.dumps(summary))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from neuralworld.play.export import ExportError, export_web

    if not args.web:
        raise UserError("say what to export: --web (a static folder that plays the world in a browser)")
    try:
        out = export_web(args.world, args.out, sampler=args.sampler, force=args.force, onnxruntime_web=args.onnxruntime_web,
                         int8=args.int8)
    except ExportError as e:
        raise UserError(str(e)) from None
    print(f"wrote {out}: play it with neuralworld play {out} (or serve the folder with any static web server)")
    return 0


def _combos(text: str) -> list[dict[str, float]]:
    """--actions "noop;strafe_left=1;strafe_right=1" -> [{}, {"strafe_left": 1.0}, {"strafe_right": 1.0}]."""
    from neuralworld.envs import EnvError, parse_combinations

    try:
        return parse_combinations(text)
    except EnvError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _cmd_agent_train(args: argparse.Namespace) -> int:
    from neuralworld.agents import AgentConfig, AgentError, train_agent

    if args.algorithm == "cma":
        from neuralworld.controller import ControllerConfig, train_controller

        ccfg = ControllerConfig(generations=args.generations, steps=args.steps, population=args.population, rollouts=args.rollouts,
                                max_steps=args.max_steps, termination_threshold=args.threshold, seed=args.seed,
                                temperature=args.temperature, sample_deaths=args.sample_deaths,
                                death_scale=args.death_scale, features=args.features)
        print(json.dumps(train_controller(args.world, args.out, ccfg, combos=args.actions, resume=args.resume,
                                          progress=not args.quiet, sees_through=args.sees_through, resolution=args.resolution,
                                          frame_skip=args.frame_skip, engines=args.envs)))
        return 0
    cfg = AgentConfig(
        steps=args.steps or AgentConfig.steps, envs=args.envs, seed=args.seed, max_steps=args.max_steps,
        termination_threshold=args.threshold, checkpoint_every=args.checkpoint_every,
    )  # fmt: skip
    print(json.dumps(train_agent(args.world, args.out, cfg, resume=args.resume, progress=not args.quiet,
                                 resolution=args.resolution, frame_skip=args.frame_skip, combos=args.actions)))
    return 0


def _cmd_agent_eval(args: argparse.Namespace) -> int:
    from neuralworld.agents import evaluate

    result = evaluate(
        args.agent, args.env, episodes=args.episodes, seed=args.seed, max_steps=args.max_steps,
        deterministic=args.deterministic, termination_threshold=args.threshold, resolution=args.resolution,
        combos=args.actions, codes=args.codes,
    )  # fmt: skip
    if not args.all:
        result = {k: v for k, v in result.items() if k not in ("returns", "lengths")}
    print(json.dumps(result))
    return 0


def _cmd_agent_combine(args: argparse.Namespace) -> int:
    from neuralworld.controller import combine_controllers

    print(json.dumps(combine_controllers(args.members, args.out)))
    return 0


# ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="neuralworld", description="Worlds that exist only as a neural network.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("record", help="record play from a real game engine with per-frame actions")
    r.add_argument("--env", required=True, help="what to record, e.g. doom/freedoom_map01 or doom/basic (--env list prints them all)")
    r.add_argument("--episodes", type=_positive_int, default=20, help="how many episodes to record")
    r.add_argument("--workers", type=_positive_int, default=2, help="parallel engine processes")
    r.add_argument("--resolution", type=_resolution, default=(128, 128), help="stored frame size HxW")
    r.add_argument("--max-steps", type=_positive_int, default=1000, help="steps per episode at most")
    r.add_argument("--frame-skip", type=_positive_int, default=2, help="engine tics per recorded frame (Doom runs 35 tics/s)")
    r.add_argument("--policy", default="explorer", choices=["explorer", "random", "strafe"],
                   help="how the recorded player acts: explorer (walks the map), random (every control at random each "
                        "frame), strafe (no-op / strafe left / right held 1-8 frames, never turning: Take Cover's buttons)")
    r.add_argument("--agent", help="an agent folder (neuralworld agent train) plays instead of --policy: what a trained "
                                   "controller meets, for the next world to learn (World Models' iterative training)")
    r.add_argument("--epsilon", type=float, default=0.0,
                   help="with --agent: the chance each step plays a random choice of the agent's actions instead (exploration)")
    r.add_argument("--seed", type=int, default=0, help="base seed; episode k uses seed+k")
    r.add_argument("--out", help="dataset folder (created, or appended to if it is one); required unless --env list")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=_cmd_record)

    t = sub.add_parser("train", help="train a world (autoencoder, then dynamics) on a dataset; torchrun for many processes")
    t.add_argument("data", help="dataset folder or URL (from neuralworld record / import-video)")
    t.add_argument("--out", required=True, help="run folder: checkpoints, logs, and the world bundle in OUT/world")
    t.add_argument("--preset", default="tiny", choices=PRESET_NAMES, help="model and training sizes")
    t.add_argument("--model", default="world", choices=MODELS,
                   help="our latent world, the warp-and-paint world (pixels: flow + mask + paint, adversarial; "
                        "one stage, --warp-*), the field world (renders the place from the camera pose; needs a "
                        "recording with poses; one stage, --field-*), the recurrent world (World Models' VAE and MDN-LSTM: draws what "
                        "happens at random; two stages, --vae-*, --rnn-*), or the DIAMOND-style frame-stacking U-Net "
                        "baseline (trained with the dynamics' steps and batch)")
    t.add_argument("--stage", default="all", choices=("all", *STAGES),
                   help="train every stage in turn (autoencoder, dynamics, the fast sampler's distilled student, "
                        "that student on its own rollouts), or one")
    t.add_argument("--autoencoder-steps", type=int, default=None, help="override the preset's autoencoder steps")
    t.add_argument("--dynamics-steps", type=int, default=None, help="override the preset's dynamics steps")
    t.add_argument("--distill-steps", type=int, default=None, help="override the preset's distillation steps (0: no fast student)")
    t.add_argument("--rollout-steps", type=int, default=None,
                   help="override the preset's steps of the student on its own rollouts (0: none)")
    t.add_argument("--rollout-frames", type=_positive_int, default=None,
                   help="most frames the student plays itself before the frame it is taught (default 8)")
    t.add_argument("--rollout-real-weight", type=float, default=None,
                   help="rollout stage: weight of the pull towards the recorded frame (default 1; 0: the teacher's frame alone)")
    t.add_argument("--warp-steps", type=int, default=None, help="--model warp: override the preset's steps")
    t.add_argument("--warp-batch", type=_positive_int, default=None, help="--model warp: global batch (windows)")
    t.add_argument("--warp-unroll", type=_positive_int, default=None,
                   help="--model warp: most frames the generator plays itself per sample (default 6; 1: teacher forcing)")
    t.add_argument("--warp-objective", type=_setting, action="append", default=None, metavar="NAME=VALUE",
                   help="--model warp: override a setting of the objective (repeatable): l1_weight, adv_weight, "
                        "flow_weight, mask_weight, context_noise_max, rollout_lowpass, action_flow (1: on), flow_resolution, "
                        "integer_warp (1: on), reveal_paint (1: on)")
    t.add_argument("--warp-chain", type=_non_negative_int, default=None,
                   help="--model warp: most frames a training stream plays itself, step after step, before it "
                        "starts again from recorded memory (default 48; 0: every sample starts from recorded memory)")
    t.add_argument("--vae-steps", type=_non_negative_int, default=None, help="--model rnn: the VAE stage's steps")
    t.add_argument("--vae-batch", type=_positive_int, default=None, help="--model rnn: the VAE's batch (frames)")
    t.add_argument("--rnn-steps", type=_non_negative_int, default=None, help="--model rnn: the MDN-LSTM stage's steps")
    t.add_argument("--rnn-batch", type=_positive_int, default=None, help="--model rnn: the MDN-LSTM's batch (sequences)")
    t.add_argument("--rnn-sequence", type=_positive_int, default=None,
                   help="--model rnn: most steps in one MDN-LSTM training sequence (default 200)")
    t.add_argument("--rnn-hidden", type=_positive_int, default=None,
                   help="--model rnn: the LSTM's memory size (default: the preset's; mini and small 256, base 512)")
    t.add_argument("--rnn-death-horizon", type=_positive_int, default=None,
                   help="--model rnn: the termination head learns 'the episode ends within N steps' (default 1)")
    t.add_argument("--field-steps", type=_non_negative_int, default=None, help="--model field: override the preset's steps")
    t.add_argument("--field-batch", type=_positive_int, default=None, help="--model field: batch (frames)")
    t.add_argument("--field-lr", type=float, default=None, help="--model field: peak learning rate (the grids' is 5x)")
    t.add_argument("--field-objective", type=_setting, action="append", default=None, metavar="NAME=VALUE",
                   help="--model field: override a setting (repeatable): adv_weight (the low-pass critic; start it from "
                        "an L1 field with --init-world), grid_lr_scale, locate_steps, locate_candidates, bank_size, "
                        "exact_hit (1: the ray renderer's depth where a ray enters its wall cell, not the cell's middle), "
                        "texture_cell (the ray renderer's per-pixel surface texture, map units; 0: none), texture_features, "
                        "texture_table, texture_snap (levels read one value per cell along the surface, as Doom's texels)")
    t.add_argument("--field-renderer", choices=("column", "ray"), default=None,
                   help="--model field: how columns become the picture: 'column' (a conv decoder) or 'ray' (each "
                        "column marches a wall map fitted from the recording's depth buffers; the distance places "
                        "its rows and a second grid is read where it meets the wall; needs a recording with depth)")
    t.add_argument("--init-world", default=None, metavar="WORLD",
                   help="start every stage from this trained world (bundle or run folder; same preset and controls): "
                        "each stage's --*-steps then trains on from it (0: keep that network)")
    t.add_argument("--init-autoencoder", default=None, metavar="WORLD",
                   help="start from this trained world's autoencoder (bundle or run folder; same preset): "
                        "--autoencoder-steps then fine-tunes it (0: as it is)")
    t.add_argument("--distill-calls", type=int, default=None, choices=STUDENT_STEPS, help="network calls per frame the student is distilled for (default 1)")
    t.add_argument("--autoencoder-batch", type=_positive_int, default=None, help="global autoencoder batch (frames)")
    t.add_argument("--dynamics-batch", type=_positive_int, default=None, help="global dynamics batch (clips)")
    t.add_argument("--dynamics-lr", type=float, default=None,
                   help="override the preset's peak dynamics learning rate (lower it to train on from --init-world)")
    t.add_argument("--clip-frames", type=_positive_int, default=None, help="frames per dynamics training clip")
    t.add_argument("--grad-accum", type=_positive_int, default=None, help="micro-batches per process per step")
    t.add_argument("--checkpoint-every", type=_positive_int, default=None, help="steps between checkpoints")
    t.add_argument("--validate-every", type=_positive_int, default=None, help="steps between held-out validations")
    t.add_argument("--log-every", type=_positive_int, default=None, help="steps between logged metrics")
    t.add_argument("--precision", default=None, choices=PRECISIONS, help="autocast (auto: bf16 where supported)")
    t.add_argument("--device", default=None, help="auto, cpu or cuda")
    t.add_argument("--seed", type=int, default=None, help="seed of data order, noise and initialisation")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoints")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_cmd_train)

    d = sub.add_parser("data", help="look at a dataset")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    di = dsub.add_parser("info", help="episodes, frames, controls, resolution, bytes per frame")
    di.add_argument("path", help="dataset folder or URL")
    di.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    di.set_defaults(func=_cmd_data_info)
    ds = dsub.add_parser("show", help="render an episode to a video with its actions drawn on")
    ds.add_argument("path", help="dataset folder or URL")
    ds.add_argument("--episode", type=int, default=0, help="episode index (0 = first; -1 = last)")
    ds.add_argument("--out", required=True, help="output file: .mp4 or .gif")
    ds.add_argument("--scale", type=_positive_int, default=3, help="upscale factor for viewing")
    ds.add_argument("--max-frames", type=_positive_int, default=None, help="stop after this many frames")
    ds.set_defaults(func=_cmd_data_show)

    e = sub.add_parser("eval", help="fidelity on held-out episodes (PSNR/SSIM beside copy-last-frame); --report: the full suite with plots")
    e.add_argument("world", help="run folder (from neuralworld train) or world bundle")
    e.add_argument("--data", default=None, help="dataset to evaluate on (default: the one the run was trained on)")
    e.add_argument("--out", default=None, help="folder for metrics.json and rollout.mp4 (default: RUN/eval)")
    e.add_argument("--episodes", type=_positive_int, default=None, help="use at most this many held-out episodes")
    e.add_argument("--sampler", default=None, choices=SAMPLER_NAMES,
                   help="sampler preset (default: quality; with --report fast, the player's, which the bars are defined with)")
    e.add_argument("--horizons", default="1,8,32,128", help="open-loop steps to report, comma-separated")
    e.add_argument("--context", type=_positive_int, default=None, help="real frames before predicting (default: the model's memory)")
    e.add_argument("--seed", type=int, default=0, help="seed of the sampling noise")
    e.add_argument("--report", default=None, help="write the full suite (fidelity, control, stability, memory, speed, probes) and the bars of issue 15 (✓/✗) as DIR/report.md + plots + metrics.json")
    e.add_argument("--baseline", action="append", default=None, help="another world (run folder or bundle) measured beside it; repeat for more (with --report)")
    e.add_argument("--stability-frames", type=_positive_int, default=10_000, help="length of the stability rollouts (with --report)")
    e.add_argument("--drives", type=_positive_int, default=3,
                   help="random drives of the stability rollouts, each from another held-out window (with --report); the long-rollout bar reads their median")
    e.add_argument("--skip", default="", help="parts to leave out of the report, comma-separated: fidelity,control,stability,memory,speed,probes,heads")
    e.add_argument("--bench-json", default=None, help="a file whose last JSON line is neuralworld bench's output: used instead of a short bench run")
    e.add_argument("--idm-steps", type=_positive_int, default=1500, help="training steps of the inverse-dynamics model (with --report)")
    e.add_argument("--idm-seconds", type=float, default=180.0, help="time budget of the inverse-dynamics model's training (with --report)")
    e.set_defaults(func=_cmd_eval)

    pl = sub.add_parser("play", help="play a world in the browser: a page on 127.0.0.1 streams frames over a WebSocket")
    pl.add_argument("world", nargs="?", default=None, help="world bundle or run folder (from neuralworld train)")
    pl.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 shares it with the network)")
    pl.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    pl.add_argument("--sampler", default="fast", choices=SAMPLER_NAMES, help="sampler preset of every session")
    pl.add_argument("--backend", default="auto", help="execution path: auto (onnx if installed, else eager), eager, bf16, compiled, onnx, onnx_int8")
    pl.add_argument("--pace", default="world", choices=["world", "max"], help="a frame per 1/fps of the world, or as fast as it can")
    pl.add_argument("--max-players", type=_positive_int, default=8, help="WebSocket sessions at once; more are refused")
    pl.add_argument("--allow-origin", action="append", default=None, metavar="URL",
                    help="let pages from this origin (http://host:port) play too; repeat for more. The player's own "
                         "page may always; clients that send no Origin (scripts, not browsers) may too")
    pl.add_argument("--open", action="store_true", help="open the page in a web browser")
    pl.add_argument("--agent", default=None, help="an agent folder (neuralworld agent train): the page's Autopilot button (P) lets it play")
    pl.set_defaults(func=_cmd_play)

    v = sub.add_parser("import-video", help="turn videos into a dataset whose actions are the camera's motion")
    v.add_argument("videos", nargs="+", metavar="VIDEO", help="video files (mp4, mov, webm, mkv, ...)")
    v.add_argument("--motion", action="append", default=None, metavar="FILE", help="motion log CSV (t,x,y,z,yaw,pitch,roll or t,gx,gy,gz,ax,ay,az), one per video in order; without it the motion is estimated from the pixels")
    v.add_argument("--motion-offset", type=float, default=0.0, metavar="S", help="seconds added to video time to read the log's clock")
    v.add_argument("--fps", type=float, default=None, help="dataset frame rate (default: the source's, at most 30)")
    v.add_argument("--resolution", type=_resolution, default=(128, 128), help="stored frame size HxW (centre-cropped to its aspect)")
    v.add_argument("--crop", default="center", choices=["center", "stretch"], help="crop to the stored aspect, or stretch the whole frame")
    v.add_argument("--max-episode-frames", type=_positive_int, default=1000, help="longer videos are split into episodes")
    v.add_argument("--hfov", type=float, default=90.0, metavar="DEG", help="horizontal field of view of the video, for visual odometry")
    v.add_argument("--out", required=True, help="dataset folder (created, or appended to if it is one)")
    v.set_defaults(func=_cmd_import_video)

    b = sub.add_parser("bench", help="frames/s, action-to-frame latency and FLOPs/frame per execution path (eager, bf16, compiled, onnx, onnx_int8)")
    b.add_argument("world", help="world bundle folder")
    b.add_argument("--threads", type=_positive_int, default=2, help="torch / ONNX Runtime intra-op threads")
    b.add_argument("--batch", default="1,8", help="batch sizes, comma-separated")
    b.add_argument("--frames", type=_positive_int, default=50, help="timed steps per path and batch size")
    b.add_argument("--warmup", type=int, default=10, help="untimed steps first (fills memory, compiles)")
    b.add_argument("--sampler", default="fast", choices=SAMPLER_NAMES, help="sampler preset")
    b.add_argument("--paths", default="eager,bf16,compiled,onnx,onnx_int8", help="execution paths, comma-separated (onnx_int8 and bf16 approximate the float32 function)")
    b.set_defaults(func=_cmd_bench)

    _add_agent_parser(sub)

    x = sub.add_parser("export", help="export a world: --web writes a static folder that plays it in a browser, no server or network")
    x.add_argument("world", help="world bundle or run folder (from neuralworld train)")
    x.add_argument("out", help="folder to write (absent, empty, or a previous web export)")
    x.add_argument("--web", action="store_true", help="the static web player: ONNX graphs + onnxruntime-web + the player page")
    x.add_argument("--sampler", default="fast", choices=SAMPLER_NAMES, help="sampler preset the page plays with")
    x.add_argument("--force", action="store_true", help="replace OUT even when it holds something else")
    x.add_argument("--int8", action="store_true", help="int8 matmuls in the step graph: 4x smaller, ~1.5x faster in WASM, approximate")
    x.add_argument("--onnxruntime-web", default=None, metavar="DIR", help="onnxruntime-web package or its dist/ (default: $NEURALWORLD_ORT_WEB, else node_modules/)")
    x.set_defaults(func=_cmd_export)
    return p


def _episode_options(p: argparse.ArgumentParser, *, seed: str) -> None:
    """--seed, --max-steps and --threshold: how an agent's episodes run (train and eval alike)."""
    p.add_argument("--seed", type=int, default=0, help=seed)
    p.add_argument("--max-steps", type=_positive_int, default=1000, help="steps per episode before truncation")
    p.add_argument("--threshold", type=float, default=0.5, help="in a world: the termination head's probability that ends an episode")


def _add_agent_parser(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser("agent", help="train an agent in a world (PPO from Stable-Baselines3, or CMA-ES over a controller of a "
                                     "recurrent world); score it in a world or the real game")
    asub = a.add_subparsers(dest="agent_command", required=True, metavar="ACTION")
    at = asub.add_parser("train", help="an agent in the world only (its heads give reward and death): PPO (OUT/agent.zip) or, "
                                       "--algorithm cma, a controller (OUT/controller.safetensors); OUT/action_spec.json")
    at.add_argument("world", help="world bundle folder (its heads give the reward), or doom/<scenario>: PPO in the real game")
    at.add_argument("--out", required=True, help="agent folder: agent.zip, action_spec.json, agent.json, checkpoints/, tensorboard/")
    at.add_argument("--steps", type=_positive_int, default=None,
                    help="environment steps in all (PPO: default 100,000; --algorithm cma: a budget, no generation starts "
                         "once it is spent; default: --generations alone)")
    at.add_argument("--envs", type=_positive_int, default=4, help="copies of the world played at once")
    _episode_options(at, seed="seeds PPO and the worlds' noise")
    at.add_argument("--checkpoint-every", type=int, default=10_000, help="environment steps between checkpoints (0: none)")
    at.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints' newest checkpoint")
    at.add_argument("--resolution", type=_resolution, default=None, help="doom/<scenario> only: frame size HxW (default 64x64)")
    at.add_argument("--frame-skip", type=_positive_int, default=2, help="doom/<scenario> only: engine tics per step, as recorded")
    at.add_argument("--algorithm", choices=("ppo", "cma"), default="ppo",
                    help="ppo: Stable-Baselines3 PPO on frames; cma: World Models' linear controller on a recurrent world's "
                         "code and memory, searched by CMA-ES (the cma library)")
    at.add_argument("--actions", type=_combos, default=None, metavar="COMBOS",
                    help='the Discrete action set, combinations split by ";" (e.g. "noop;strafe_left;strafe_right"); '
                         "default: no-op, each button, each axis half-way either way, forward while turning")
    at.add_argument("--generations", type=_positive_int, default=100, help="--algorithm cma: CMA-ES generations")
    at.add_argument("--population", type=_positive_int, default=32, help="--algorithm cma: candidates per generation")
    at.add_argument("--rollouts", type=_positive_int, default=8, help="--algorithm cma: dreams per candidate per generation")
    at.add_argument("--world", dest="sees_through", default=None, metavar="WORLD",
                    help="--algorithm cma in doom/<scenario>: the recurrent world the controller sees through "
                         "(--envs engines play in lockstep)")
    at.add_argument("--sample-deaths", action="store_true",
                    help="--algorithm cma: a dream ends at each step with the termination head's probability, not at --threshold")
    at.add_argument("--temperature", type=float, default=None,
                    help="--algorithm cma: the dream's temperature (World Models: 1.15); default: the world's own")
    at.add_argument("--death-scale", type=float, default=1.0,
                    help="--algorithm cma with --sample-deaths: each dream step's death probability times this (at "
                         "most 1): calibrates a dream whose random play lives longer than in the engine "
                         "(scripts/dream_survival.py)")
    at.add_argument("--features", choices=("zh", "zhc"), default="zh",
                    help="--algorithm cma: what the controller reads: the code and the LSTM's output [z, h], or with its "
                         "cell state too [z, h, c] (World Models' Doom controller)")
    at.add_argument("--quiet", action="store_true", help="no progress bar")
    at.set_defaults(func=_cmd_agent_train)
    ae = asub.add_parser("eval", help="mean return over episodes in a world or the real game (doom/<scenario>)")
    ae.add_argument("agent", help="agent folder (from agent train), or 'random' for the random baseline")
    ae.add_argument("--env", required=True, help="a world folder, or doom/<scenario> for real ViZDoom (e.g. doom/take_cover)")
    ae.add_argument("--episodes", type=_positive_int, default=100, help="episodes to score")
    _episode_options(ae, seed="seeds the env (and the random baseline)")
    ae.add_argument("--resolution", type=_resolution, default=None, help="frame size HxW for the random baseline (default: the agent's)")
    ae.add_argument("--deterministic", action="store_true", help="the policy's most likely action, not a sample")
    ae.add_argument("--codes", choices=("mean", "sample"), default=None,
                    help="a CMA-ES controller: read each real frame's code as the VAE's posterior mean, or a draw "
                         "from it as the dream's codes are drawn (default: mean)")
    ae.add_argument("--actions", type=_combos, default=None, metavar="COMBOS",
                    help="random baseline only: its Discrete action set (as agent train's --actions)")
    ae.add_argument("--all", action="store_true", help="print every episode's return and length too")
    ae.set_defaults(func=_cmd_agent_eval)
    ac = asub.add_parser("combine", help="an ensemble of CMA-ES controllers of one world: it plays the action most of them chose")
    ac.add_argument("members", nargs="+", help="controller folders (agent train --algorithm cma), searched in the same world")
    ac.add_argument("--out", required=True, help="the ensemble's agent folder")
    ac.set_defaults(func=_cmd_agent_combine)


def main(argv: Sequence[str] | None = None) -> int:
    from neuralworld.actions import ActionError
    from neuralworld.data.store import DatasetError

    args = build_parser().parse_args(argv)
    user_errors: tuple[type[BaseException], ...] = (UserError, DatasetError, ActionError, FileNotFoundError)
    if args.command in ("train",):
        from neuralworld.bundle import BundleError
        from neuralworld.state_io import StateError
        from neuralworld.train import TrainingError

        user_errors += (TrainingError, BundleError, StateError)
    if args.command == "agent":
        from neuralworld.agents import AgentError
        from neuralworld.bundle import BundleError
        from neuralworld.envs import EnvError

        user_errors += (AgentError, BundleError, EnvError)
    try:
        return int(args.func(args) or 0)
    except user_errors as e:
        print(f"neuralworld {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"neuralworld {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

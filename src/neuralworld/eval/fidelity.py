"""Fidelity: how close a world's frames are to the real ones, always beside a baseline.

``evaluate(world, data)`` measures, on the episodes the run held out of training:

* **teacher-forced next frame** — memory holds only real frames; the session
  generates the next one (``step(action, remember=False)``), then ``observe``-s the
  real one. PSNR/SSIM against the real next frame, beside *copy-last-frame* (the
  real previous frame) and the *autoencoder* reconstruction (the ceiling the
  dynamics cannot beat, whatever it learns); and sharpness (``metrics.sharpness``):
  the generated frames' median over the real next frames' median (PSNR rewards blur,
  this does not);
* **open-loop rollout** — start from real context frames, then ``step`` with the
  recorded actions and never look at the real frames again. PSNR/SSIM at t = 1,
  8, 32, 128 (those the episodes are long enough for), beside copy-last-frame
  (the last real context frame held forever), plus the whole PSNR curve.

Both are measured on the same windows: ``context`` real frames then ``T``
frames to predict, cut from held-out episodes (at most ``windows_per_episode``
non-overlapping windows each) and run as ONE batched ``WorldSession`` — the
session's own loop, no second copy of it here.

Output folder::

    OUT/
      metrics.json     the numbers (schema in ``evaluate``'s docstring)
      rollout.mp4      per window a row: real | teacher-forced | open-loop
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch

from neuralworld.bundle import World
from neuralworld.data.view import write_video
from neuralworld.eval.inputs import EvalError, cut_windows, open_inputs
from neuralworld.eval.metrics import psnr, sharpness, ssim
from neuralworld.model.autoencoder import frames_to_tensor, tensor_to_frames
from neuralworld.model.sampler import SamplerPreset
from neuralworld.session import WorldSession, resolve_sampler
from neuralworld.state_io import atomic_write_json

DEFAULT_HORIZONS = (1, 8, 32, 128)


def evaluate(
    world_path: str | os.PathLike,
    data_path: str | os.PathLike | None = None,
    *,
    out: str | os.PathLike | None = None,
    horizons: Sequence[int] = DEFAULT_HORIZONS,
    episodes: int | None = None,
    windows_per_episode: int = 2,
    context: int | None = None,
    sampler: str | SamplerPreset = "quality",
    held_out: float | None = None,
    seed: int = 0,
    device: str | None = None,
    video: bool = True,
) -> dict[str, Any]:
    """Evaluate a world's fidelity on held-out episodes; writes OUT/metrics.json (+ rollout.mp4).

    world_path: a run folder or a bundle. data_path: the dataset (default: the one
    in the run's run.json). out: default RUN/eval, or ./eval/<world name>.
    horizons: open-loop steps to report; those longer than every held-out
    episode allows are listed under ``rollout.skipped_horizons``. episodes: use at
    most this many held-out episodes. context: real frames before predicting
    (default: the dynamics' memory, M - 1). held_out: the fraction the run kept
    out (default: from run.json, else 0.1).

    Returns (and writes) a dict::

        {"world", "data", "out", "held_out": {"fraction", "source", "episodes"},
         "sampler": {...}, "context_frames", "windows", "frames_per_window",
         "teacher_forced": {"psnr", "ssim", "copy_last_psnr", "copy_last_ssim",
                            "autoencoder_psnr", "autoencoder_ssim", "sharpness", "real_sharpness",
                            "sharpness_ratio", "pairs"},
         "rollout": {"horizons": {"1": {"psnr", "ssim", "copy_last_psnr", "copy_last_ssim"}, ...},
                     "skipped_horizons": {"128": "why"}, "psnr_curve", "copy_last_psnr_curve"},
         "seconds", "generated_frames_per_second", "video"}
    """
    t0 = time.perf_counter()
    inp = open_inputs(world_path, data_path, held_out=held_out, device=device or "cpu", need_train=False)
    loc, world, ds, data_path = inp.location, inp.world, inp.data, inp.data_path
    fraction, source, held = inp.held_out_fraction, inp.held_out_source, inp.held_episodes
    preset = resolve_sampler(sampler, world)  # what the preset means for this world (fast: distilled or euler2)
    if episodes is not None:
        held = held[: max(1, int(episodes))]

    horizons = sorted({int(h) for h in horizons})
    if not horizons or horizons[0] < 1:
        raise EvalError(f"horizons must be >= 1, got {horizons}")
    if context is None:
        context = world.config.dynamics.memory_frames - 1
    if context < 1:
        raise EvalError(f"context must be >= 1 real frame, got {context}")
    longest = max(ds.lengths[e] for e in held)
    fitting = [h for h in horizons if context + h <= longest]
    skipped = {str(h): f"held-out episodes have at most {longest} frames; {context} context + {h} needed" for h in horizons if h not in fitting}
    if not fitting:
        raise EvalError(
            f"held-out episodes are too short: the longest has {longest} frames, {context} context + {horizons[0]} "
            f"needed (record longer episodes, or pass a smaller context/horizon)"
        )
    T = fitting[-1]
    win = cut_windows(ds, held, context, T, windows_per_episode)
    B = len(win.frames)
    real = win.frames[:, context:]  # (B, T, H, W, 3): the frames to predict
    actions = win.led_to[:, context:]  # (B, T, A): actions[:, k] led to real[:, k]

    # teacher forcing and the open-loop rollout: one batched session, reset in between
    session = WorldSession(world, win.frames[:, :context], actions=win.led_to[:, :context], sampler=preset, seed=seed)
    t_gen = time.perf_counter()
    forced = np.empty_like(real)  # (B, T, H, W, 3)
    for k in range(T):
        forced[:, k] = session.step(actions[:, k], remember=False)
        session.observe(real[:, k : k + 1], actions[:, k : k + 1])
    session.reset(win.frames[:, :context], actions=win.led_to[:, :context], seed=seed)
    rollout = session.rollout(actions)  # (B, T, H, W, 3)
    gen_seconds = time.perf_counter() - t_gen

    previous = np.concatenate([win.frames[:, context - 1 : context], real[:, :-1]], 1)  # (B, T, ...): real frame before each
    held_last = np.broadcast_to(win.frames[:, context - 1 : context], real.shape)  # (B, T, ...): last context frame forever
    recon = _reconstruct(world, real)
    tf_psnr, tf_ssim = psnr(forced, real), ssim(forced, real)  # (B, T)
    ro_psnr, ro_ssim = psnr(rollout, real), ssim(rollout, real)
    cp_psnr, cp_ssim = psnr(held_last, real), ssim(held_last, real)
    tf_sharp, real_sharp = float(np.median(sharpness(forced))), float(np.median(sharpness(real)))

    result: dict[str, Any] = {
        "world": str(loc.bundle),
        "data": str(data_path),
        "held_out": {"fraction": fraction, "source": source, "episodes": sorted(set(win.episode_ids))},
        "sampler": {"method": preset.method, "steps": preset.steps, "shift": preset.shift,
                    "context_level": preset.context_level, "calls_per_frame": preset.calls},
        "seed": seed,
        "context_frames": context,
        "windows": B,
        "window_starts": [[i, s] for i, s in zip(win.episode_ids, win.starts)],
        "frames_per_window": T,
        "teacher_forced": {
            "psnr": _mean(tf_psnr),
            "ssim": _mean(tf_ssim),
            "copy_last_psnr": _mean(psnr(previous, real)),
            "copy_last_ssim": _mean(ssim(previous, real)),
            "autoencoder_psnr": _mean(psnr(recon, real)),
            "autoencoder_ssim": _mean(ssim(recon, real)),
            "sharpness": round(tf_sharp, 3),
            "real_sharpness": round(real_sharp, 3),
            "sharpness_ratio": round(tf_sharp / real_sharp, 4) if real_sharp > 0 else None,
            "pairs": int(tf_psnr.size),
        },
        "rollout": {
            "horizons": {
                str(h): {
                    "psnr": _mean(ro_psnr[:, h - 1]),
                    "ssim": _mean(ro_ssim[:, h - 1]),
                    "copy_last_psnr": _mean(cp_psnr[:, h - 1]),
                    "copy_last_ssim": _mean(cp_ssim[:, h - 1]),
                }
                for h in fitting
            },
            "skipped_horizons": skipped,
            "psnr_curve": [round(float(v), 3) for v in ro_psnr.mean(0)],
            "copy_last_psnr_curve": [round(float(v), 3) for v in cp_psnr.mean(0)],
        },
        # both passes generate B * T frames; the observes of teacher forcing are included
        "generated_frames_per_second": round(2 * B * T / max(gen_seconds, 1e-9), 2),
    }

    out_dir = Path(out) if out is not None else (loc.run / "eval" if loc.run is not None else Path("eval") / world.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    result["out"] = str(out_dir)
    result["video"] = None
    if video:
        path = write_video(_side_by_side(real, forced, rollout), out_dir / "rollout.mp4", ds.fps)
        result["video"] = str(path)
    result["seconds"] = round(time.perf_counter() - t0, 2)
    atomic_write_json(out_dir / "metrics.json", result)
    return result


@torch.inference_mode()
def _reconstruct(world: World, frames: np.ndarray, chunk: int = 64) -> np.ndarray:
    """Frames (..., H, W, 3) through the autoencoder and back: the fidelity ceiling."""
    ae = world.autoencoder
    device = next(ae.parameters()).device
    flat = frames.reshape(-1, *frames.shape[-3:])
    out = [tensor_to_frames(ae(frames_to_tensor(flat[i : i + chunk]).to(device))) for i in range(0, len(flat), chunk)]
    return np.concatenate(out).reshape(frames.shape)


def _mean(x: np.ndarray) -> float:
    return round(float(np.mean(x)), 4)


_LABELS = ("real", "teacher-forced", "open-loop")


def _side_by_side(*videos: np.ndarray, rows: int = 4):
    """Frames for the video: up to ``rows`` windows stacked, each a row of
    real | teacher-forced | open-loop, upscaled so a 64x64 world is visible."""
    B, T, H, W = videos[0].shape[:4]
    scale = max(1, 192 // W)
    n = min(rows, B)
    head = np.full((16, W * scale * len(videos) + 2 * (len(videos) - 1), 3), 20, np.uint8)
    for j, label in enumerate(_LABELS[: len(videos)]):
        x = j * (W * scale + 2) + 4
        cv2.putText(head, label, (x, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (235, 235, 235), 1, cv2.LINE_AA)
    gap = np.full((H * scale, 2, 3), 20, np.uint8)
    for k in range(T):
        lines = [head]
        for b in range(n):
            panels = [cv2.resize(v[b, k], (W * scale, H * scale), interpolation=cv2.INTER_NEAREST) for v in videos]
            row = [panels[0]]
            for p in panels[1:]:
                row += [gap, p]
            lines.append(np.concatenate(row, 1))
        yield np.concatenate(lines, 0)


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """The few numbers the CLI prints (the rest is in metrics.json)."""
    tf = result["teacher_forced"]
    return {
        "metrics": str(Path(result["out"]) / "metrics.json"),
        "video": result["video"],
        "teacher_forced_psnr": tf["psnr"],
        "copy_last_psnr": tf["copy_last_psnr"],
        "autoencoder_psnr": tf["autoencoder_psnr"],
        "teacher_forced_sharpness_ratio": tf["sharpness_ratio"],
        "rollout_psnr": {h: v["psnr"] for h, v in result["rollout"]["horizons"].items()},
        "rollout_copy_last_psnr": {h: v["copy_last_psnr"] for h, v in result["rollout"]["horizons"].items()},
        "skipped_horizons": sorted(result["rollout"]["skipped_horizons"], key=int),
        "seconds": result["seconds"],
    }


"""The baseline: a DIAMOND-style frame-stacking U-Net (model/unet.py) trained on pixel
windows through the same loop, for ``neuralworld eval`` to measure our world beside."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from neuralworld.bundle import build_networks
from neuralworld.model.autoencoder import tensor_to_frames
from neuralworld.model.sampler import sample_euler
from neuralworld.model.unet import MODEL_KIND, BaselineConfig, PixelCodec, baseline_loss, baseline_preset, count_parameters
from neuralworld.train.config import TrainConfig
from neuralworld.train.data import HELD_OUT_SEED, PixelWindows, TrainData
from neuralworld.train.loop import Dist, RunFolder, mean_psnr, run_stage
from neuralworld.train.run import training_run


def train_baseline(data: str | os.PathLike, out: str | os.PathLike, cfg: TrainConfig, *, resume: bool = False,
                   progress: bool = True) -> dict[str, Any]:
    """Train the frame-stacking U-Net (model/unet.py) on the dataset; its bundle lands in
    ``out/world`` and plays through ``WorldSession`` as a world does.

    Same budget as our world's dynamics: the preset's dynamics steps, global batch and
    learning-rate schedule (``--dynamics-steps`` / ``--dynamics-batch`` set both). A
    dynamics sample is a clip of ``clip_frames`` latents; a baseline sample is one window
    of n + 1 frames in pixels (one target). The same loop (``loop.run_stage``): resume,
    EMA, checkpoints, metrics, torchrun. Our world also spent its autoencoder stage; the
    baseline needs none."""
    with training_run(data, out, cfg, resume=resume, progress=progress, network_config=baseline_preset,
                      model=MODEL_KIND) as r:
        torch.manual_seed(cfg.seed + 1)
        _, unet = build_networks(r.world)
        r.summary["parameters"] = count_parameters(unet)
        unet = train_unet(r.world, cfg, r.data, r.d, r.folder, unet=unet)
        r.save_world(PixelCodec(), unet, training={
            "data": str(data), "model": MODEL_KIND, "preset": cfg.preset, "held_out": cfg.held_out,
            "steps": {"baseline": cfg.dynamics.steps}, "batch_size": cfg.dynamics.batch_size})
    return r.summary


def train_unet(world: BaselineConfig, cfg: TrainConfig, data: TrainData, d: Dist, run: RunFolder, *,
               unet: torch.nn.Module) -> torch.nn.Module:
    """The baseline's one stage. Validation: on held-out windows, the loss and the
    teacher-forced next frame (n clean real frames, the last generated in 8 Euler steps)
    beside copy-last."""
    n = world.dynamics.context_frames
    windows = PixelWindows(data.ds, data.train_episodes, n + 1)
    held_frames, held_actions = PixelWindows(data.ds, data.check_episodes, n + 1).batch(np.random.default_rng(HELD_OUT_SEED), 16)

    def loss_fn(net: torch.nn.Module, rng: np.random.Generator, micro: int) -> tuple[torch.Tensor, dict[str, float]]:
        frames, actions = windows.batch(rng, micro)  # (micro, n+1, 3, H, W), (micro, n+1, A)
        return baseline_loss(net, frames.to(d.device), actions.to(d.device))

    def validate(m: torch.nn.Module, step: int) -> None:
        frames, actions = held_frames.to(d.device), held_actions.to(d.device)
        with torch.no_grad():
            torch.manual_seed(99)
            _, metrics = baseline_loss(m, frames, actions)
            past = frames[:, :-1]
            gen = sample_euler(lambda x, t: m(x, t, past, actions), torch.randn_like(frames[:, -1]), 8)
        fake, real, prev = (tensor_to_frames(x.clamp(-1, 1)) for x in (gen, frames[:, -1], frames[:, -2]))
        run.logger.scalars("baseline", step, {"loss": metrics["loss"], "next_frame_psnr": mean_psnr(fake, real),
                                              "copy_last_psnr": mean_psnr(prev, real)}, kind="held_out")
        run.logger.images("baseline/real_vs_generated", step, [real[:8], fake[:8]])

    return run_stage(stage="baseline", module=unet, cfg=cfg, stage_cfg=cfg.dynamics, d=d, run=run,
                     loss_fn=loss_fn, validate=validate)

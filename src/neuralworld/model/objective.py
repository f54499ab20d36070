"""The dynamics' training objective: rectified flow with per-frame noise levels.

Rectified flow (Liu et al. 2022; Lipman et al. 2022; as in SD3 and minRF):
``x_t = (1 - t) x0 + t eps`` with ``t`` in [0, 1] (0 clean, 1 noise), and the
network predicts the velocity ``v = eps - x0``. Why velocity and not x0: its
target has the same scale at every t, which keeps the loss balanced across noise
levels without a weighting schedule; it is what the Euler/Heun samplers integrate
directly; and the denoised estimate is one line away (``x0 = x_t - t v``), so a
distilled few-step sampler can still be written in x0 terms later.

Per-frame independent levels (Diffusion Forcing, Chen et al. 2024): each frame
of a clip gets its own t, so one network learns to denoise the newest frame while
treating the (slightly noisy) frames before it as memory. Two regimes per clip:

* diffusion forcing (1 - ``autoregressive_prob``): every frame draws t from the
  schedule (logit-normal or uniform), and every frame is a target;
* playing (``autoregressive_prob``): the frames before the last are context with
  t in [0, ``context_noise_max``] -- GameNGen's context noise augmentation, the
  level given to the network so it learns to correct drifted memory -- and the
  last frame draws t from the schedule and is the only flow target (the context
  frames' near-clean velocity targets are mostly unpredictable noise).

Loss = flow MSE + reward MSE + termination BCE, weights from ``model.config``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from neuralworld.model.dynamics import Dynamics

T_BINS = (0.0, 0.25, 0.5, 0.75, 1.0)  # flow loss is also reported per bin of t


@dataclass
class LatentClip:
    """A training batch for the dynamics, aligned so that index t is one frame.

    Alignment with the dataset store (where ``actions[t]`` is applied *after*
    ``frames[t]``): read a window of T+1 steps and take ``frames[1:]`` with
    ``actions[:-1]``, ``rewards[:-1]``, ``terminated[:-1]``: here ``actions[:, t]``
    is the action that led to frame t, and ``rewards[:, t]``, ``terminated[:, t]``
    are that transition's results.
    """

    latents: torch.Tensor  # (B, T, C, h, w) normalised latents (autoencoder.normalize_latents)
    actions: torch.Tensor  # (B, T, A) normalised actions (ActionSpec.normalize)
    rewards: torch.Tensor | None = None  # (B, T) float
    terminated: torch.Tensor | None = None  # (B, T) bool or float

    def to(self, device: torch.device | str) -> "LatentClip":
        move = lambda x: None if x is None else x.to(device)  # noqa: E731
        return LatentClip(move(self.latents), move(self.actions), move(self.rewards), move(self.terminated))


def sample_noise_levels(model: Dynamics, batch_size: int, frames: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame noise levels (B, T) and which frames are flow targets (B, T) bool."""
    cfg = model.config
    shape = (batch_size, frames)
    if cfg.noise_schedule == "logit_normal":
        t = torch.sigmoid(cfg.logit_mean + cfg.logit_std * torch.randn(shape, device=device))  # (B, T)
    else:
        t = torch.rand(shape, device=device)
    target = torch.ones(shape, dtype=torch.bool, device=device)
    playing = torch.rand(batch_size, device=device) < cfg.autoregressive_prob  # (B,)
    if frames > 1:
        context_t = cfg.context_noise_max * torch.rand(batch_size, frames - 1, device=device)  # (B, T-1)
        t[:, :-1] = torch.where(playing[:, None], context_t, t[:, :-1])
        target[:, :-1] = ~playing[:, None]
    return t, target


def dynamics_loss(model: Dynamics, batch: LatentClip) -> tuple[torch.Tensor, dict[str, float]]:
    """One training loss for a clip batch; returns (loss, metrics as floats).

    Metrics: loss, flow, reward, termination, and ``flow_by_t/<lo>-<hi>`` (flow loss
    of target frames whose t falls in that bin; absent when none did).
    """
    cfg = model.config
    x0 = batch.latents  # (B, T, C, h, w)
    B, T = x0.shape[:2]
    t, target = sample_noise_levels(model, B, T, x0.device)  # (B, T), (B, T)
    noise = torch.randn(x0.shape, dtype=x0.dtype, device=x0.device)  # not randn_like: its values would follow the memory layout
    tb = t[:, :, None, None, None].to(x0.dtype)  # (B, T, 1, 1, 1)
    xt = (1 - tb) * x0 + tb * noise  # (B, T, C, h, w)
    out = model(xt, t, batch.actions)

    per_frame = (out.velocity.float() - (noise - x0).float()).pow(2).mean(dim=(2, 3, 4))  # (B, T)
    weight = target.float()
    flow = (per_frame * weight).sum() / weight.sum()
    loss = flow
    metrics: dict[str, float] = {"flow": float(flow.detach())}

    if batch.rewards is not None:
        reward = F.mse_loss(out.reward.float(), batch.rewards.float())
        loss = loss + cfg.reward_weight * reward
        metrics["reward"] = float(reward.detach())
    if batch.terminated is not None:
        termination = F.binary_cross_entropy_with_logits(out.termination.float(), batch.terminated.float())
        loss = loss + cfg.termination_weight * termination
        metrics["termination"] = float(termination.detach())
    metrics["loss"] = float(loss.detach())

    with torch.no_grad():
        for lo, hi in zip(T_BINS[:-1], T_BINS[1:]):
            in_bin = target & (t >= lo) & ((t < hi) if hi < 1.0 else (t <= hi))
            if in_bin.any():
                metrics[f"flow_by_t/{lo:.2f}-{hi:.2f}"] = float(per_frame[in_bin].mean())
    return loss, metrics

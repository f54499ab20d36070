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

``distill_loss`` trains the ``fast`` sampler's network: a copy of the trained
dynamics taught to reach the many-step sampler's frame in 1-2 Euler steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from neuralworld.model.dynamics import Dynamics, DynamicsOutput
from neuralworld.model.memory import Sampler, generate, last_frame_denoiser, noised, prime, remember
from neuralworld.model.sampler import SamplerPreset

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


def with_heads_loss(loss: torch.Tensor, metrics: dict[str, float], out: DynamicsOutput, batch: LatentClip,
                    cfg: Any, frames: int) -> torch.Tensor:
    """``loss`` plus the reward head's MSE and the termination head's BCE over the first
    ``frames`` frames of the clip (weights from the model config), where the batch has
    rewards and terminations; their values and the total's go into ``metrics``."""
    if frames > 0 and batch.rewards is not None:
        reward = F.mse_loss(out.reward[:, :frames].float(), batch.rewards[:, :frames].float())
        loss = loss + cfg.reward_weight * reward
        metrics["reward"] = float(reward.detach())
    if frames > 0 and batch.terminated is not None:
        termination = F.binary_cross_entropy_with_logits(out.termination[:, :frames].float(),
                                                         batch.terminated[:, :frames].float())
        loss = loss + cfg.termination_weight * termination
        metrics["termination"] = float(termination.detach())
    metrics["loss"] = float(loss.detach())
    return loss


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
    xt = noised(x0, t, noise)  # (B, T, C, h, w)
    out = model(xt, t, batch.actions)

    per_frame = (out.velocity.float() - (noise - x0).float()).pow(2).mean(dim=(2, 3, 4))  # (B, T)
    weight = target.float()
    flow = (per_frame * weight).sum() / weight.sum()
    metrics: dict[str, float] = {"flow": float(flow.detach())}
    loss = with_heads_loss(flow, metrics, out, batch, cfg, T)

    with torch.no_grad():
        for lo, hi in zip(T_BINS[:-1], T_BINS[1:]):
            in_bin = target & (t >= lo) & ((t < hi) if hi < 1.0 else (t <= hi))
            if in_bin.any():
                metrics[f"flow_by_t/{lo:.2f}-{hi:.2f}"] = float(per_frame[in_bin].mean())
    return loss, metrics


# ---------------------------------------------------------------------------
# few-step distillation (the ``fast`` sampler's network)
# ---------------------------------------------------------------------------
def teacher_frame(teacher: Dynamics, sampler: Sampler, memory: torch.Tensor, levels: torch.Tensor,
                  actions: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The teacher's frame (B, C, h, w) after ``memory`` (B, T-1, C, h, w) at ``levels``
    (B, T-1) under ``actions`` (B, T, A), sampled from ``noise`` as a session samples it:
    against a KV cache of the memory, so its many calls cost one frame each. No gradient."""
    with torch.no_grad():
        cache = prime(teacher, memory, levels, actions[:, :-1])
        return generate(teacher, sampler, noise, actions[:, -1], cache)  # (B, C, h, w)


def distill_loss(
    student: Dynamics,
    teacher: Dynamics,
    batch: LatentClip,
    *,
    teacher_sampler: Sampler,
    student_steps: int,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Teach ``student`` to land, in ``student_steps`` Euler steps, where the teacher's
    many-step sampler lands from the same noise and memory (knowledge distillation of
    the probability-flow ODE: Luhman & Luhman 2021; the regression target is the
    teacher's deterministic sample, so the student learns one sharp frame per noise
    instead of the blurry average a 1-step flow model predicts).

    Each clip is played as in a session: frames 0..T-2 are memory at a context
    noise level in [0, context_noise_max] (told to both networks, as in training),
    frame T-1 is generated from pure noise under the recorded action. The teacher
    samples as a session does, against a KV cache of the memory (its many calls
    then cost one frame each); the student runs its 1-2 calls through the
    frame-causal ``forward`` (which equals the cached step, tested) so gradients
    reach its memory's keys and values too. The student's reward/termination heads
    keep training on the memory frames.

    Returns (loss, metrics): ``distill`` (MSE of the student's frame to the
    teacher's, latent units), ``teacher_vs_real`` (MSE of the teacher's frame to the
    recorded one, for scale), reward/termination where the batch has them.
    """
    cfg = teacher.config
    x0 = batch.latents  # (B, T, C, h, w)
    B, T = x0.shape[:2]
    levels = cfg.context_noise_max * torch.rand(B, T - 1, device=x0.device)  # (B, T-1): memory's noise levels
    noise = torch.randn(x0.shape, dtype=x0.dtype, device=x0.device)  # (B, T, C, h, w)
    memory = noised(x0[:, :-1], levels, noise[:, :-1])  # (B, T-1, C, h, w)
    outputs: list[DynamicsOutput] = []
    target = teacher_frame(teacher, teacher_sampler, memory, levels, batch.actions, noise[:, -1])  # (B, C, h, w)
    student_sampler = SamplerPreset("euler", student_steps)
    frame = student_sampler(last_frame_denoiser(student, memory, levels, batch.actions, outputs), noise[:, -1])
    distill = (frame.float() - target.float()).pow(2).mean()
    metrics: dict[str, float] = {"distill": float(distill.detach()),
                                 "teacher_vs_real": float((target.float() - x0[:, -1].float()).pow(2).mean())}
    # the student's final call: heads of the memory frames, seen near clean
    loss = with_heads_loss(distill, metrics, outputs[-1], batch, cfg, T - 1)
    return loss, metrics


# ---------------------------------------------------------------------------
# the student on its own rollouts (the ``rollout`` stage)
# ---------------------------------------------------------------------------
def rollout_loss(
    student: Dynamics,
    batch: LatentClip,
    *,
    rollout: int,
    student_steps: int,
    context_level: float,
    teacher: Dynamics | None = None,
    teacher_sampler: Sampler | None = None,
    real_weight: float = 1.0,
    teacher_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Teach the few-step student the frame it should make from the memory it really has
    when playing: its own earlier frames, not recorded ones (Self-Forcing, Huang et al.
    2025, in spirit: train on the model's own rollouts so its errors stop compounding;
    here with regression targets instead of a distribution-matching loss).

    Each clip of T frames is played: the student generates the last ``r`` frames before
    the taught one from noise under the recorded actions (``r`` drawn in [1, rollout] per
    batch; no gradient, against a KV cache, each remembered at ``context_level`` as a
    session does), after T-1-r recorded frames of memory at context noise levels as in
    training. Then it generates the last frame (``student_steps`` Euler calls through the
    frame-causal ``forward``, with gradient) and is pulled towards

    * the recorded frame (``real_weight``): what the world should show, however the
      rollout drifted -- the term that teaches it to correct its own drift;
    * the teacher's many-step frame from the same memory and noise (``teacher_weight``):
      keeps it a sharp sample rather than the blurry mean a regression onto the record
      would give alone.

    Returns (loss, metrics): ``to_real``, ``to_teacher`` (MSE, latent units; the latter
    only with a teacher), ``rolled`` (r), reward/termination on the recorded memory frames.
    """
    cfg = student.config
    x0 = batch.latents  # (B, T, C, h, w)
    B, T = x0.shape[:2]
    if not 1 <= rollout <= T - 2:
        raise ValueError(f"rollout must be in [1, T-2] = [1, {T - 2}] for clips of {T} frames, got {rollout}")
    r = int(torch.randint(1, rollout + 1, ()))
    n_real = T - 1 - r  # recorded frames of memory before the student's own
    levels = cfg.context_noise_max * torch.rand(B, n_real, device=x0.device)  # (B, n_real)
    noise = torch.randn(x0.shape, dtype=x0.dtype, device=x0.device)  # (B, T, C, h, w): memory noise, then each frame's draw
    memory = [noised(x0[:, :n_real], levels, noise[:, :n_real])]  # (B, n_real, C, h, w)
    extra = torch.randn(B, r, *x0.shape[2:], dtype=x0.dtype, device=x0.device)  # context noise of the rolled frames
    student_sampler = SamplerPreset("euler", student_steps)

    with torch.no_grad():
        cache = prime(student, memory[0], levels, batch.actions[:, :n_real])
        for j in range(r):
            k = n_real + j  # the frame the student makes now
            z = generate(student, student_sampler, noise[:, k], batch.actions[:, k], cache)  # (B, C, h, w)
            z, _ = remember(student, z, context_level, batch.actions[:, k], cache, noise=extra[:, j])
            memory.append(z[:, None])
    memory_t = torch.cat(memory, 1).detach()  # (B, T-1, C, h, w)
    all_levels = torch.cat([levels, torch.full((B, r), context_level, device=x0.device)], 1)  # (B, T-1)
    outputs: list[DynamicsOutput] = []
    frame = student_sampler(last_frame_denoiser(student, memory_t, all_levels, batch.actions, outputs),
                            noise[:, -1]).float()  # (B, C, h, w)
    to_real = (frame - x0[:, -1].float()).pow(2).mean()
    loss = real_weight * to_real
    metrics: dict[str, float] = {"to_real": float(to_real.detach()), "rolled": float(r)}
    if teacher is not None and teacher_weight > 0:
        if teacher_sampler is None:
            raise ValueError("a teacher needs its sampler")
        target = teacher_frame(teacher, teacher_sampler, memory_t, all_levels, batch.actions, noise[:, -1])
        to_teacher = (frame - target.float()).pow(2).mean()
        loss = loss + teacher_weight * to_teacher
        metrics["to_teacher"] = float(to_teacher.detach())
    loss = with_heads_loss(loss, metrics, outputs[-1], batch, cfg, n_real)
    return loss, metrics

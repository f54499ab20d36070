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
from typing import Any, Callable

import torch
import torch.nn.functional as F

from neuralworld.model.dynamics import Dynamics
from neuralworld.model.sampler import sample_euler

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


# ---------------------------------------------------------------------------
# few-step distillation (the ``fast`` sampler's network)
# ---------------------------------------------------------------------------
def distill_loss(
    student: Dynamics,
    teacher: Dynamics,
    batch: LatentClip,
    *,
    teacher_sampler: Callable[[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], torch.Tensor], torch.Tensor],
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
    lv = levels[:, :, None, None, None].to(x0.dtype)
    memory = (1 - lv) * x0[:, :-1] + lv * noise[:, :-1]  # (B, T-1, C, h, w)
    outputs: list[Any] = []

    def velocity_of(net: Dynamics) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # x (B, C, h, w), t (B,)
            out = net(torch.cat([memory, x[:, None]], 1), torch.cat([levels, t[:, None]], 1), batch.actions)
            outputs.append(out)
            return out.velocity[:, -1]  # (B, C, h, w)

        return denoise

    with torch.no_grad():
        cache = teacher.new_cache(B, device=x0.device, dtype=teacher.pos_embed.dtype)
        for i in range(T - 1):
            teacher.append(memory[:, i], levels[:, i], batch.actions[:, i], cache)
        action = batch.actions[:, -1]  # (B, A): the action that leads to the new frame
        target = teacher_sampler(lambda x, t: teacher.step(x, t, action, cache).velocity, noise[:, -1])  # (B, C, h, w)
    frame = sample_euler(velocity_of(student), noise[:, -1], student_steps)  # (B, C, h, w)
    distill = (frame.float() - target.float()).pow(2).mean()
    loss = distill
    metrics: dict[str, float] = {"distill": float(distill.detach()),
                                 "teacher_vs_real": float((target.float() - x0[:, -1].float()).pow(2).mean())}
    last = outputs[-1]  # the student's final call: heads of the memory frames, seen near clean
    if batch.rewards is not None:
        reward = F.mse_loss(last.reward[:, :-1].float(), batch.rewards[:, :-1].float())
        loss = loss + cfg.reward_weight * reward
        metrics["reward"] = float(reward.detach())
    if batch.terminated is not None:
        termination = F.binary_cross_entropy_with_logits(last.termination[:, :-1].float(), batch.terminated[:, :-1].float())
        loss = loss + cfg.termination_weight * termination
        metrics["termination"] = float(termination.detach())
    metrics["loss"] = float(loss.detach())
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
    teacher_sampler: Callable[[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], torch.Tensor], torch.Tensor] | None = None,
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
    lv = levels[:, :, None, None, None].to(x0.dtype)
    memory = [(1 - lv) * x0[:, :n_real] + lv * noise[:, :n_real]]  # (B, n_real, C, h, w)
    extra = torch.randn(B, r, *x0.shape[2:], dtype=x0.dtype, device=x0.device)  # context noise of the rolled frames

    with torch.no_grad():
        cache = student.new_cache(B, device=x0.device, dtype=student.pos_embed.dtype)
        for i in range(n_real):
            student.append(memory[0][:, i], levels[:, i], batch.actions[:, i], cache)
        for j in range(r):
            k = n_real + j  # the frame the student makes now
            action = batch.actions[:, k]
            z = sample_euler(lambda x, t: student.step(x, t, action, cache).velocity, noise[:, k], student_steps)
            z = (1 - context_level) * z + context_level * extra[:, j]
            student.append(z, context_level, action, cache)
            memory.append(z[:, None])
    memory_t = torch.cat(memory, 1).detach()  # (B, T-1, C, h, w)
    all_levels = torch.cat([levels, torch.full((B, r), context_level, device=x0.device)], 1)  # (B, T-1)
    outputs: list[Any] = []

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # x (B, C, h, w), t (B,)
        out = student(torch.cat([memory_t, x[:, None]], 1), torch.cat([all_levels, t[:, None]], 1), batch.actions)
        outputs.append(out)
        return out.velocity[:, -1]

    frame = sample_euler(denoise, noise[:, -1], student_steps).float()  # (B, C, h, w)
    to_real = (frame - x0[:, -1].float()).pow(2).mean()
    loss = real_weight * to_real
    metrics: dict[str, float] = {"to_real": float(to_real.detach()), "rolled": float(r)}
    if teacher is not None and teacher_weight > 0:
        if teacher_sampler is None:
            raise ValueError("a teacher needs its sampler")
        with torch.no_grad():
            tcache = teacher.new_cache(B, device=x0.device, dtype=teacher.pos_embed.dtype)
            for i in range(T - 1):
                teacher.append(memory_t[:, i], all_levels[:, i], batch.actions[:, i], tcache)
            action = batch.actions[:, -1]
            target = teacher_sampler(lambda x, t: teacher.step(x, t, action, tcache).velocity, noise[:, -1])
        to_teacher = (frame - target.float()).pow(2).mean()
        loss = loss + teacher_weight * to_teacher
        metrics["to_teacher"] = float(to_teacher.detach())
    last = outputs[-1]
    if batch.rewards is not None and n_real > 0:
        reward = F.mse_loss(last.reward[:, :n_real].float(), batch.rewards[:, :n_real].float())
        loss = loss + cfg.reward_weight * reward
        metrics["reward"] = float(reward.detach())
    if batch.terminated is not None and n_real > 0:
        termination = F.binary_cross_entropy_with_logits(last.termination[:, :n_real].float(), batch.terminated[:, :n_real].float())
        loss = loss + cfg.termination_weight * termination
        metrics["termination"] = float(termination.detach())
    metrics["loss"] = float(loss.detach())
    return loss, metrics

"""How a frame is made and joins memory: the one rollout loop, as five small functions.

``WorldSession`` playing, the objectives that play a clip before the frame they teach
(``objective.distill_loss``, ``objective.rollout_loss``) and training's validation all
make and remember frames through these, so the rollout loop is written once (STYLE
habit 3); ``play/static/world-worker.js`` mirrors ``generate`` and ``remember`` in the
browser. ``net`` is anything with ``step`` and ``append`` (see ``backends``): a
``Dynamics``, the U-Net baseline, or an execution backend.

* ``noised(x0, level, noise)``: rectified flow's ``x_t = (1 - t) x0 + t eps``. A frame
  joins memory noised to a context level it is told (GameNGen's augmentation), as
  training noised its context frames.
* ``generate(net, sampler, noise, action, cache)``: the next frame's latent, every
  sampler call a ``net.step`` against the cache, which stays as it is.
* ``remember(net, latent, level, action, cache)``: a finished latent noised to
  ``level`` and appended (its keys and values join the cache).
* ``prime(net, memory, levels, actions)``: a fresh cache holding frames already noised
  to their levels, in order (the teacher's memory in distillation and rollouts).
* ``last_frame_denoiser(net, memory, levels, actions)``: what ``generate`` integrates,
  through the frame-causal ``forward`` over the whole clip instead of a cache (equal,
  tested), where gradients must reach memory's keys and values, or no cache is kept.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from neuralworld.model.dynamics import DynamicsOutput
from neuralworld.model.sampler import DenoiseFn

Sampler = Callable[[DenoiseFn, torch.Tensor], torch.Tensor]
"""``sampler(denoise_fn, x_noise) -> x0``: a ``SamplerPreset``, or any sampler with its steps bound."""


def noised(x0: torch.Tensor, level: float | torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``x0`` at noise ``level``: a float, or a tensor ((B,), (B, T)) broadcast over x0's
    trailing dimensions."""
    if isinstance(level, torch.Tensor):
        level = level.reshape(*level.shape, *[1] * (x0.dim() - level.dim())).to(x0.dtype)  # (B[, T], 1, 1, 1)
    return (1 - level) * x0 + level * noise


def generate(net: Any, sampler: Sampler, noise: torch.Tensor, action: torch.Tensor, cache: Any) -> torch.Tensor:
    """The latent (B, C, h, w) of the frame ``action`` (B, A) leads to, sampled from
    ``noise`` (B, C, h, w) against the memory in ``cache`` (read, never changed)."""
    return sampler(lambda x, t: net.step(x, t, action, cache).velocity, noise)


def remember(net: Any, latent: torch.Tensor, level: float | torch.Tensor, action: torch.Tensor, cache: Any, *,
             noise: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, DynamicsOutput]:
    """Append a finished latent (B, C, h, w), led to by ``action`` (B, A), to memory at
    context ``level``, noised with ``noise``, or else (at a float level above 0) with one
    (B, C, h, w) draw from ``generator``: that order of draws is ``WorldSession``'s
    contract. Returns (the latent as remembered, the heads' output for it)."""
    if noise is None and level > 0:
        noise = torch.randn(latent.shape, generator=generator, device=latent.device)  # (B, C, h, w)
    if noise is not None:
        latent = noised(latent, level, noise)
    return latent, net.append(latent, level, action, cache)


def prime(net: Any, memory: torch.Tensor, levels: torch.Tensor, actions: torch.Tensor) -> Any:
    """A new cache of the ``Dynamics`` ``net`` holding ``memory`` (B, T, C, h, w), frames
    already noised to their ``levels`` (B, T), each led to by ``actions[:, t]`` (B, T, A)."""
    cache = net.new_cache(memory.shape[0], device=memory.device, dtype=net.pos_embed.dtype)
    for t in range(memory.shape[1]):
        net.append(memory[:, t], levels[:, t], actions[:, t], cache)
    return cache


def last_frame_denoiser(net: Any, memory: torch.Tensor, levels: torch.Tensor, actions: torch.Tensor,
                        outputs: list[DynamicsOutput] | None = None) -> DenoiseFn:
    """``denoise(x, t)``: the velocity of a new frame x (B, C, h, w) at level t (B,) after
    ``memory`` (B, n, C, h, w) at ``levels`` (B, n), through ``net``'s forward over the clip
    [memory, x] under ``actions`` (B, n + 1, A). Each call's whole output is appended to
    ``outputs`` when given (its heads read every frame of the clip)."""

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = net(torch.cat([memory, x[:, None]], 1), torch.cat([levels, t[:, None]], 1), actions)  # (B, n+1, ...)
        if outputs is not None:
            outputs.append(out)
        return out.velocity[:, -1]  # (B, C, h, w)

    return denoise

"""Stateless samplers for rectified flow, one signature for all.

``sampler(denoise_fn, x_noise, steps, *, shift=1.0) -> x0``

* ``denoise_fn(x, t) -> velocity``: x (B, ...) at noise level t (B,) in [0, 1];
  it closes over whatever conditions the prediction (for the world: the
  dynamics, its KV cache and the action), so samplers know nothing of models.
* ``x_noise``: pure noise at t = 1; the sampler integrates dx/dt = v from t = 1
  to t = 0 and returns the sample.
* ``steps``: integration steps; ``shift`` spends them nearer t = 1 (SD3's
  time shift) where few-step sampling loses most.

Presets (``SAMPLERS``) are config: the method, steps and shift, the network
they drive, and the noise level at which a session appends finished frames to
memory (``context_level``, inside the training range [0, context_noise_max]).

* ``quality``: Heun, 8 steps (15 calls) on the world's dynamics: the reference.
* ``fast``: Euler on the world's *distilled* dynamics (``network="distilled"``,
  trained by ``objective.distill_loss`` to land, in 1 or 2 Euler steps, where the
  ``quality`` sampler lands from the same noise). A world trained without
  distillation plays ``fast`` as ``euler2`` (``WorldSession`` says so).
* ``euler2``: plain Euler, 2 steps on the world's dynamics: fast, but a
  flow model's 1-2 step samples are blurry averages of the possible frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def flow_times(steps: int, shift: float = 1.0) -> list[float]:
    """steps + 1 times from 1 to 0: uniform, then warped by t' = s t / (1 + (s - 1) t)
    (Esser et al. 2024, SD3, eq. 23): s > 1 takes smaller steps at high noise."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    ts = [1.0 - i / steps for i in range(steps + 1)]
    return [shift * t / (1.0 + (shift - 1.0) * t) for t in ts]


def _level(x: torch.Tensor, t: float) -> torch.Tensor:
    return torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)  # (B,)


def sample_euler(denoise_fn: DenoiseFn, x_noise: torch.Tensor, steps: int, *, shift: float = 1.0) -> torch.Tensor:
    """Euler's method on the probability-flow ODE dx/dt = v(x, t) from t = 1 to 0,
    as rectified flow samples (Liu et al. 2022, "Flow Straight and Fast", sec. 2).
    One network call per step; one step returns x1 - v(x1, 1), the mean prediction."""
    ts = flow_times(steps, shift)
    x = x_noise
    for t, t_next in zip(ts[:-1], ts[1:]):
        x = x + (t_next - t) * denoise_fn(x, _level(x, t))
    return x


def sample_heun(denoise_fn: DenoiseFn, x_noise: torch.Tensor, steps: int, *, shift: float = 1.0) -> torch.Tensor:
    """Heun's second-order method (Karras et al. 2022, "Elucidating the Design Space
    of Diffusion-Based Generative Models", Algorithm 1) in flow time: an Euler
    predictor, then the trapezoidal corrector with the slope at the step's end.
    The final step to t = 0 is plain Euler, as in Algorithm 1. 2 * steps - 1 calls."""
    ts = flow_times(steps, shift)
    x = x_noise
    for t, t_next in zip(ts[:-1], ts[1:]):
        dt = t_next - t
        v = denoise_fn(x, _level(x, t))
        x_pred = x + dt * v
        if t_next > 0.0:
            v_next = denoise_fn(x_pred, _level(x, t_next))
            x = x + dt * 0.5 * (v + v_next)
        else:
            x = x_pred
    return x


METHODS: dict[str, Callable[..., torch.Tensor]] = {"euler": sample_euler, "heun": sample_heun}
NETWORKS = ("dynamics", "distilled")


@dataclass(frozen=True)
class SamplerPreset:
    """A sampler recipe as config; calling it samples."""

    method: str
    steps: int
    shift: float = 1.0
    context_level: float = 0.06
    """Noise level a session gives frames it appends to memory (training saw [0, context_noise_max],
    0.1 in every preset). Noisier memory tells the network to trust its fine detail less, so its
    own errors compound less: 0.06 beat 0.02 open-loop on the shipped world (docs/experiments.md)."""
    network: str = "dynamics"
    """Which network the sampler drives: the world's ``dynamics``, or its ``distilled`` student."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown sampler method {self.method!r}; choose from {sorted(METHODS)}")
        flow_times(self.steps, self.shift)
        if self.network not in NETWORKS:
            raise ValueError(f"unknown sampler network {self.network!r}; choose from {NETWORKS}")

    @property
    def calls(self) -> int:
        """Network calls per generated frame (not counting the append)."""
        return 2 * self.steps - 1 if self.method == "heun" else self.steps

    def __call__(self, denoise_fn: DenoiseFn, x_noise: torch.Tensor) -> torch.Tensor:
        return METHODS[self.method](denoise_fn, x_noise, self.steps, shift=self.shift)


SAMPLERS: dict[str, SamplerPreset] = {
    "quality": SamplerPreset("heun", steps=8, shift=1.0),
    "fast": SamplerPreset("euler", steps=1, shift=1.0, network="distilled"),
    "euler2": SamplerPreset("euler", steps=2, shift=1.0),
}
"""``fast``'s steps are those the world's student was distilled for (``World.distilled_steps``);
``WorldSession`` reads them from the bundle."""

"""The recurrent world: World Models' V and M (Ha & Schmidhuber, 2018) as a neuralworld world.

V, a convolutional VAE, squeezes a frame to a code of ``latent`` numbers. M, an LSTM, reads each
code with the action that followed it and gives, for every number of the next code, a mixture of
``mixtures`` Gaussians, and the step's reward and the logit that it ended the episode. Playing
draws the next code from those mixtures and decodes it, so what happens at random in the
recording (a monster firing) happens in the dream about as often: a network that maps memory to
one frame draws the average of "it fires" and "it does not", which is "it does not"
(docs/agents.md). What the LSTM carries is the world's memory of everything seen, with no window:
a hit taken long ago is still there when the next one decides the episode.

As a world, the session's latent is the code (B, latent, 1, 1), V is the "autoencoder" (``VAE``:
encode gives the posterior mean, decode the frame), and M is a one-step generator (``one_step``):
``step`` turns the session's noise into a draw from M's mixtures by each number's inverse CDF at
the noise's normal CDF, so the same seed gives the same dream, and its velocity lands on it in the
one Euler step a one-step generator is played with. ``append`` feeds M the code and the action
that led to it, and hands back the heads for that step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from neuralworld.actions import ActionSpec
from neuralworld.model.config import ConfigError
from neuralworld.model.dynamics import CacheRows, DynamicsOutput, check_batch, run_cached_step
from neuralworld.model.pixel import PixelWorldConfig, pixel_preset

MODEL_KIND = "rnn"
SILENT = -30.0
"""The termination logit of an element that has seen one frame and no step: it is alive."""


@dataclass
class RNNNetConfig:
    latent: int = 32
    """Numbers in a frame's code (World Models: 32)."""
    hidden: int = 256
    """The LSTM's memory (World Models: 256)."""
    mixtures: int = 5
    """Gaussians in each number's mixture (World Models: 5)."""
    channels: tuple[int, ...] = (32, 64, 128, 256)
    """The VAE's convolutions, each halving the frame (World Models': 32, 64, 128, 256)."""
    temperature: float = 1.0
    """The dream's temperature: mixture weights softened by it and spreads widened by its square
    root (World Models played Doom at 1.15: a harder dream than the recording)."""
    kl_tolerance: float = 0.5
    """Nats per code number below which the VAE's KL term costs nothing (World Models')."""
    death_horizon: int = 1
    """The termination head says the episode ends within this many steps (1: at this one). A
    death is often announced a few frames ahead (a fireball growing) and not in the last frame
    (it has passed the view's edge): a longer horizon is a better-posed question."""

    def levels(self) -> int:
        return len(self.channels)

    @property
    def memory_frames(self) -> int:
        """Frames a session needs to start (eval's context is this minus one): the LSTM's memory has
        no window; it begins with the first frame it is shown and grows with every frame after."""
        return 2

    def validate(self) -> "RNNNetConfig":
        if self.latent < 1 or self.hidden < 1 or self.mixtures < 1 or not self.channels or min(self.channels) < 1:
            raise ConfigError("rnn: latent, hidden, mixtures and every channel count must be >= 1")
        if self.temperature <= 0 or self.kl_tolerance < 0 or self.death_horizon < 1:
            raise ConfigError("rnn: temperature must be > 0, kl_tolerance >= 0 and death_horizon >= 1")
        return self


@dataclass
class RNNConfig(PixelWorldConfig):
    NAME: ClassVar[str] = "recurrent world"
    dynamics: RNNNetConfig = field(default_factory=RNNNetConfig)
    """A recurrent bundle's config.json holds ``PixelWorldConfig``'s fields, with this network."""

    @property
    def latent_size(self) -> tuple[int, int]:
        return (1, 1)  # a code, not a picture

    @property
    def latent_channels(self) -> int:
        return self.dynamics.latent


RNN_PRESETS: dict[str, RNNNetConfig] = {
    "tiny": RNNNetConfig(latent=16, hidden=64, mixtures=3, channels=(8, 16, 32, 32)),
    "mini": RNNNetConfig(channels=(16, 32, 64, 128)),
    "small": RNNNetConfig(),
    "base": RNNNetConfig(latent=64, hidden=512),
}


def rnn_preset(name: str, spec: ActionSpec | None = None, resolution: tuple[int, int] = (64, 64)) -> RNNConfig:
    return pixel_preset(RNNConfig, RNN_PRESETS, name, spec, resolution)


# ---------------------------------------------------------------------------
# V: the frame's code
# ---------------------------------------------------------------------------
class VAE(nn.Module):
    """Frames in [-1, 1] (B, 3, H, W) <-> codes (B, latent, 1, 1): the session's autoencoder.
    ``posterior`` gives the code's mean and log-variance (training samples from them); ``encode``
    the mean; ``decode`` the frame. Codes need no normalising (the KL keeps them near N(0, 1))."""

    def __init__(self, config: RNNNetConfig, resolution: tuple[int, int]):
        super().__init__()
        self.config = config
        ch, (H, W) = config.channels, resolution
        h, w = H >> len(ch), W >> len(ch)
        down: list[nn.Module] = []
        for c_in, c_out in zip((3,) + tuple(ch[:-1]), ch):
            down += [nn.Conv2d(c_in, c_out, 4, 2, 1), nn.ReLU()]
        self.encoder = nn.Sequential(*down, nn.Flatten(), nn.Linear(ch[-1] * h * w, 2 * config.latent))
        up: list[nn.Module] = [nn.Linear(config.latent, ch[-1] * h * w), nn.Unflatten(1, (ch[-1], h, w))]
        for c_in, c_out in zip(ch[::-1], tuple(ch[::-1][1:]) + (3,)):
            up += [nn.ReLU(), nn.ConvTranspose2d(c_in, c_out, 4, 2, 1)]
        self.decoder = nn.Sequential(*up, nn.Tanh())

    def posterior(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_var = self.encoder(frames).chunk(2, -1)
        return mean, log_var.clamp(-12.0, 6.0)  # (B, latent) each

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        return self.posterior(frames)[0][..., None, None]  # (B, latent, 1, 1)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(latents.flatten(1).to(self.decoder[0].weight.dtype))  # (B, 3, H, W)

    def normalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def denormalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(frames))


def vae_loss(vae: VAE, frames: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """World Models' objective on frames in [-1, 1] (B, 3, H, W): the squared error summed over a
    frame's pixels (in [0, 1] units) plus its KL to N(0, I), which costs nothing below
    ``kl_tolerance`` nats a number. Returns (loss, figures)."""
    mean, log_var = vae.posterior(frames)
    eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    recon = vae.decode(mean + eps * (0.5 * log_var).exp())
    sq = (((recon - frames) * 0.5) ** 2).flatten(1).sum(1).mean()
    kl = (-0.5 * (1 + log_var - mean**2 - log_var.exp()).sum(1)).mean()
    floor = vae.config.kl_tolerance * vae.config.latent
    loss = sq + torch.clamp(kl, min=floor)
    return loss, {"reconstruction": sq.item(), "kl": kl.item()}


# ---------------------------------------------------------------------------
# M: the memory and what comes next
# ---------------------------------------------------------------------------
def sample_mixture(logits: torch.Tensor, mean: torch.Tensor, log_sigma: torch.Tensor, noise: torch.Tensor,
                   temperature: float = 1.0, iterations: int = 24) -> torch.Tensor:
    """One draw of each number from its 1-D Gaussian mixture (weights' ``logits``, ``mean``,
    ``log_sigma``: (..., K)) made from a standard normal ``noise`` (...,): the mixture's inverse CDF
    at Phi(noise), found by bisection (the CDF rises monotonically). Exact in distribution, and
    one normal a number, so the session's noise (the latent's shape) is all it takes."""
    w = torch.softmax(logits / temperature, -1)
    sigma = log_sigma.exp() * math.sqrt(temperature)
    u = (0.5 * (1 + torch.erf(noise / math.sqrt(2)))).clamp(1e-6, 1 - 1e-6)
    lo = (mean - 8 * sigma).amin(-1)
    hi = (mean + 8 * sigma).amax(-1)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        cdf = (w * 0.5 * (1 + torch.erf((mid[..., None] - mean) / (sigma * math.sqrt(2))))).sum(-1)
        below = cdf < u
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return 0.5 * (lo + hi)


def mixture_nll(logits: torch.Tensor, mean: torch.Tensor, log_sigma: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-log p(target) (...,) under each number's mixture (..., K)."""
    z = (target[..., None] - mean) / log_sigma.exp()
    log_normal = -0.5 * z**2 - log_sigma - 0.5 * math.log(2 * math.pi)
    return -torch.logsumexp(F.log_softmax(logits, -1) + log_normal, -1)


@dataclass
class RNNCache(CacheRows):
    """M's state per element: the LSTM's (h, c) after the codes and actions seen, and the last
    code. After ``reset`` an element has seen nothing; its first appended code starts it."""

    h: torch.Tensor  # (B, hidden)
    c: torch.Tensor  # (B, hidden)
    z: torch.Tensor  # (B, latent) the last code appended
    valid: torch.Tensor  # (B,) bool: has seen a code
    frames_seen: int = 0

    FORGET: ClassVar[tuple[str, ...]] = ("valid", "h", "c", "z")

    def step_inputs(self) -> tuple[torch.Tensor, ...]:
        return (self.h, self.c, self.z)


class MemoryRNN(nn.Module):
    """M: an LSTM over [code, action] with a mixture head for the next code and the two heads."""

    one_step = True

    def __init__(self, config: RNNNetConfig, *, action_size: int):
        super().__init__()
        self.config = config
        self.latent_size, self.latent_channels, self.action_size = (1, 1), config.latent, action_size
        self.pos_embed = nn.Parameter(torch.zeros(0), requires_grad=False)  # a device anchor (sessions read its .device)
        Z, K = config.latent, config.mixtures
        self.lstm = nn.LSTM(Z + action_size, config.hidden, batch_first=True)
        self.mixture = nn.Linear(config.hidden, 3 * Z * K)
        self.heads = nn.Linear(config.hidden, 3)  # reward, termination logit, health (a fraction of full)

    @classmethod
    def from_world(cls, world: RNNConfig) -> "MemoryRNN":
        return cls(world.dynamics, action_size=world.action_size)

    def run(self, codes: torch.Tensor, actions: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
            ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Codes (B, T, latent), each with the action that followed it (B, T, A) -> the LSTM's
        outputs (B, T, hidden), each knowing what comes next, and its final (h, c) (B, hidden)."""
        x = torch.cat([codes, actions.to(codes.dtype)], -1)
        state = None if state is None else (state[0][None].contiguous(), state[1][None].contiguous())
        out, (h, c) = self.lstm(x, state)
        return out, (h[0], c[0])

    def predict(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """LSTM outputs (..., hidden) -> the next code's mixtures (logits, mean, log_sigma: (..., latent, K)),
        the step's reward and termination logit (...,)."""
        Z, K = self.config.latent, self.config.mixtures
        logits, mean, log_sigma = self.mixture(out).reshape(*out.shape[:-1], 3, Z, K).unbind(-3)
        reward, term = self.heads(out)[..., :2].unbind(-1)
        return logits, mean, log_sigma.clamp(-7.0, 3.0), reward, term

    def health(self, out: torch.Tensor) -> torch.Tensor:
        """LSTM outputs (..., hidden) -> the player's health (...,) as a fraction of full, where the
        recording has it: learnt beside the other heads, so the memory carries the damage taken
        (a hit kills or not by the hits before it, long out of sight)."""
        return self.heads(out)[..., 2]

    # -- the session's interface -------------------------------------------------------------
    def new_cache(self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> RNNCache:
        device = device if device is not None else self.pos_embed.device
        H, Z = self.config.hidden, self.config.latent
        return RNNCache(h=torch.zeros(batch_size, H, device=device, dtype=dtype), c=torch.zeros(batch_size, H, device=device, dtype=dtype),
                        z=torch.zeros(batch_size, Z, device=device, dtype=dtype),
                        valid=torch.zeros(batch_size, dtype=torch.bool, device=device))

    def step_with_cache_tensors(self, latent: torch.Tensor, noise_level: torch.Tensor, action: torch.Tensor,
                                h: torch.Tensor, c: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The pure step: the noise ``latent`` (B, latent, 1, 1) -> (velocity = noise - the drawn next
        code, so one Euler step from t = 1 lands on it; reward (B,); termination logit (B,))."""
        out, _ = self.run(z[:, None], action[:, None], (h, c))
        logits, mean, log_sigma, reward, term = self.predict(out[:, 0])
        code = sample_mixture(logits, mean, log_sigma, latent.flatten(1).to(mean.dtype), self.config.temperature)
        return latent - code.reshape(latent.shape).to(latent.dtype), reward, term

    def step(self, latent: torch.Tensor, noise_level: torch.Tensor | float, action: torch.Tensor, cache: RNNCache) -> DynamicsOutput:
        """The next code that ``action`` (B, A) leads to, drawn with the noise ``latent``; the cache is read."""
        out, _ = run_cached_step(self, latent, noise_level, action, cache)
        return out

    def append(self, latent: torch.Tensor, noise_level: torch.Tensor | float, action: torch.Tensor, cache: RNNCache) -> DynamicsOutput:
        """The code (B, latent, 1, 1), led to by ``action`` (B, A), joins memory: M reads the last code
        with the action, and its heads say the step's reward and termination. An element's first
        code only starts it (heads 0 and "alive")."""
        check_batch(cache, latent)
        with torch.no_grad():
            out, (h, c) = self.run(cache.z[:, None], action[:, None], (cache.h, cache.c))
            _, _, _, reward, term = self.predict(out[:, 0])
            fresh = ~cache.valid
            keep = (~fresh)[:, None].to(h.dtype)
            cache.h.copy_(h * keep)
            cache.c.copy_(c * keep)
            cache.z.copy_(latent.flatten(1).to(cache.z.dtype))
            cache.valid.fill_(True)
            cache.frames_seen += 1
            reward = torch.where(fresh, torch.zeros_like(reward), reward)
            term = torch.where(fresh, torch.full_like(term, SILENT), term)
        return DynamicsOutput(torch.zeros_like(latent), reward, term)

    def features(self, cache: RNNCache, cell: bool = False) -> torch.Tensor:
        """What a controller reads (World Models' C): the last code and M's memory, (B, latent + hidden);
        ``cell`` adds the LSTM's cell state (B, latent + 2 hidden), as World Models' Doom controller read."""
        return torch.cat([cache.z, cache.h, cache.c] if cell else [cache.z, cache.h], 1)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

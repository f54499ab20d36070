"""The baseline: a DIAMOND-style frame-stacking U-Net diffusion model in pixel space.

What our world must beat (DESIGN, "What good means"): the same data, the same
training budget, a different and simpler idea. As in DIAMOND (Alonso et al.
2024), the next frame is denoised directly in pixels at the dataset's
resolution by a small U-Net that sees

* the noisy next frame concatenated channel-wise with the last n real or
  generated frames (n = ``context_frames``, 4 as in DIAMOND): 3 (n + 1) input
  channels, so "the next frame is nearly the last one" is a local map;
* the noise level, the n + 1 actions (each past frame's and the one that leads
  to the new frame) and the past frames' own noise levels, summed into one
  conditioning vector that scales and shifts every group norm (adaptive group
  norm, as DIAMOND does).

It differs from DIAMOND where our comparison needs it to: it is trained with our
objective (rectified flow, ``x_t = (1 - t) x0 + t eps``, predict ``v = eps - x0``,
logit-normal t; DIAMOND uses EDM) and sampled by our samplers, so the only thing
compared is the architecture; the context frames are noised to a level in
[0, ``context_noise_max``] that the network is told (GameNGen's augmentation,
also what a session does with the frames it remembers). It has no reward or
termination heads (DIAMOND trains a separate model for them): ``step`` returns
zeros there.

Playing through ``WorldSession`` unchanged
    The session speaks latents, an autoencoder and a cached dynamics. Here the
    "latent" is the frame itself in [-1, 1] (``PixelCodec``: identity maps) and
    the cache is a shift register of the last n frames, their actions and noise
    levels (``FrameStackCache``), so ``new_cache`` / ``step`` / ``append`` mean what
    they mean for the transformer and every surface (play, eval, bench, gym)
    runs the baseline through the one rollout loop.

Shapes: B batch, n context frames, A action size, H x W the frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from neuralworld.actions import ActionSpec
from neuralworld.model.config import ConfigError
from neuralworld.model.dynamics import CacheRows, DynamicsOutput, check_batch, run_cached_step, timestep_embedding
from neuralworld.model.pixel import PixelCodec, PixelWorldConfig, pixel_preset, shift_in  # PixelCodec: re-exported for callers

MODEL_KIND = "unet-baseline"
"""The bundle's ``"model"`` value for this network (absent means the transformer world)."""


@dataclass
class UNetConfig:
    """The frame-stacking U-Net and its training objective."""

    context_frames: int = 4
    """n: past frames stacked beside the noisy one (DIAMOND: 4)."""
    channels: tuple[int, ...] = (64, 128, 128)
    """Widths per level, full resolution first; each level after the first halves H and W."""
    blocks: int = 2
    """Residual blocks per level (down path; the up path has one more, as in DDPM)."""
    attention: bool = True
    """Self-attention after each block of the lowest-resolution level only."""
    heads: int = 4
    cond_dim: int = 128
    """Width of the conditioning vector (noise level + actions + context levels) that feeds adaptive GN."""
    groups: int = 8
    """Group-norm groups (every width must divide by it)."""
    # -- training objective (the same numbers as the world's dynamics) ----------------
    noise_schedule: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    context_noise_max: float = 0.1
    """Context frames are noised to a level in [0, context_noise_max], given to the network
    (the world's ``DynamicsConfig.context_noise_max``, so both forgive the same drift)."""

    @property
    def memory_frames(self) -> int:
        """Frames the model sees, the new one included (what eval uses as its default context + 1)."""
        return self.context_frames + 1

    def levels(self) -> int:
        """Halvings of H and W: one per width after the first."""
        return len(self.channels) - 1

    def validate(self) -> "UNetConfig":
        if self.context_frames < 1:
            raise ConfigError(f"unet.context_frames must be >= 1, got {self.context_frames}")
        if not self.channels or min(self.channels) < 1 or self.blocks < 1 or self.cond_dim < 1:
            raise ConfigError("unet channels, blocks and cond_dim must be positive")
        if any(c % self.groups for c in self.channels):
            raise ConfigError(f"unet channels {list(self.channels)} must all divide by groups={self.groups}")
        if self.attention and self.channels[-1] % self.heads:
            raise ConfigError(f"unet.channels[-1]={self.channels[-1]} must divide by heads={self.heads}")
        if self.noise_schedule not in ("logit_normal", "uniform"):
            raise ConfigError(f"unet.noise_schedule must be 'logit_normal' or 'uniform', got {self.noise_schedule!r}")
        if not 0.0 <= self.context_noise_max <= 1.0:
            raise ConfigError("unet.context_noise_max must be in [0, 1]")
        return self


@dataclass
class BaselineConfig(PixelWorldConfig):
    """What a baseline bundle's config.json holds under "world" (``PixelWorldConfig``)."""

    dynamics: UNetConfig = field(default_factory=UNetConfig)

    NAME: ClassVar[str] = "baseline"


# parameters at 64x64 with Doom's 7 controls, beside our dynamics of the same preset:
#   tiny 0.71M (dynamics 0.72M), mini 2.07M (2.07M), small 5.32M (5.39M), base 47.9M (48.1M)
BASELINE_PRESETS: dict[str, UNetConfig] = {
    "tiny": UNetConfig(channels=(16, 32, 48), blocks=2, cond_dim=64, groups=8),
    "mini": UNetConfig(channels=(32, 48, 88), blocks=2, cond_dim=96, groups=8),
    "small": UNetConfig(channels=(64, 96, 128), blocks=2, cond_dim=128, groups=16, heads=4),
    "base": UNetConfig(channels=(128, 256, 320, 320), blocks=2, cond_dim=256, groups=32, heads=8),
}


def baseline_preset(name: str, spec: ActionSpec | None = None, resolution: tuple[int, int] = (64, 64)) -> BaselineConfig:
    return pixel_preset(BaselineConfig, BASELINE_PRESETS, name, spec, resolution)


# ---------------------------------------------------------------------------
# the memory: a shift register of the last n frames
# ---------------------------------------------------------------------------
@dataclass
class FrameStackCache(CacheRows):
    """The last n frames (oldest first), the actions that led to them and their noise levels.

    After ``reset`` an element holds nothing; the first frame appended fills every
    slot (a world that stood still before it), so a session may start from one
    image. ``valid`` records which slots were really appended."""

    frames: torch.Tensor  # (B, n, 3, H, W)
    actions: torch.Tensor  # (B, n, A) normalised
    levels: torch.Tensor  # (B, n) float
    valid: torch.Tensor  # (B, n) bool
    frames_seen: int = 0

    FORGET: ClassVar[tuple[str, ...]] = ("valid", "frames", "actions", "levels")

    def step_inputs(self) -> tuple[torch.Tensor, ...]:
        """The cache's part of ``FrameStackUNet.step_with_cache_tensors``'s inputs."""
        return (self.frames, self.actions, self.levels)

    def push(self, action: torch.Tensor, level: torch.Tensor, memory_frames: int = 0, *, latent: torch.Tensor) -> None:
        """Shift in one frame (B, 3, H, W) with its action (B, A) and level (B,).
        (``memory_frames`` is unused: the signature is ``DynamicsCache.push``'s, so a
        backend can push what the pure step returned without knowing the model.)"""
        empty = ~self.valid.any(dim=1)  # (B,): nothing appended since reset
        for ring, new in ((self.frames, latent), (self.actions, action), (self.levels, level)):
            shift_in(ring, new, empty)
        shift_in(self.valid, torch.ones_like(empty), torch.zeros_like(empty))  # only the slot really appended
        self.frames_seen += 1


# ---------------------------------------------------------------------------
# the network
# ---------------------------------------------------------------------------
class AdaGroupNorm(nn.Module):
    """Group norm whose scale and shift come from the conditioning vector (zero-initialised:
    an untrained layer is a plain group norm)."""

    def __init__(self, channels: int, cond_dim: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, affine=False)
        self.modulation = nn.Linear(cond_dim, 2 * channels)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        scale, shift = self.modulation(c)[:, :, None, None].chunk(2, dim=1)  # each (B, C, 1, 1)
        return self.norm(x) * (1 + scale) + shift


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, cond_dim: int, groups: int, attention: bool = False, heads: int = 4):
        super().__init__()
        self.norm1 = AdaGroupNorm(c_in, cond_dim, groups)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = AdaGroupNorm(c_out, cond_dim, groups)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # the block starts as its skip path
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.attn = SelfAttention(c_out, groups, heads) if attention else None

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x, c)))  # (B, C_out, H, W)
        h = self.conv2(F.silu(self.norm2(h, c)))
        x = self.skip(x) + h
        return x if self.attn is None else self.attn(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the pixels of a (low-resolution) feature map."""

    def __init__(self, channels: int, groups: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W).transpose(-1, -2).unbind(1)  # each (B, h, HW, hd)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, h, HW, hd)
        return x + self.out(y.transpose(-1, -2).reshape(B, C, H, W))


class FrameStackUNet(nn.Module):
    """velocity = f(noisy frame, t, last n frames, their levels, n + 1 actions)."""

    def __init__(self, config: UNetConfig, *, resolution: tuple[int, int], action_size: int):
        super().__init__()
        config.validate()
        self.config = config
        n, ch, cd, g = config.context_frames, config.channels, config.cond_dim, config.groups
        self.latent_channels = 3
        self.latent_size = (int(resolution[0]), int(resolution[1]))
        self.action_size = action_size

        self.level_embed = nn.Sequential(nn.Linear(256, cd), nn.SiLU(), nn.Linear(cd, cd))
        self.context_level_embed = nn.Linear(n * 32, cd)
        self.action_embed = nn.Sequential(nn.Linear((n + 1) * action_size, cd), nn.SiLU(), nn.Linear(cd, cd))

        self.conv_in = nn.Conv2d(3 * (n + 1), ch[0], 3, padding=1)
        last = len(ch) - 1
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips, c = [ch[0]], ch[0]
        for i, width in enumerate(ch):
            for _ in range(config.blocks):
                self.down.append(ResBlock(c, width, cd, g, attention=config.attention and i == last, heads=config.heads))
                c = width
                skips.append(c)
            if i < last:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, width in reversed(list(enumerate(ch))):
            for _ in range(config.blocks + 1):
                self.up.append(ResBlock(c + skips.pop(), width, cd, g, attention=config.attention and i == last, heads=config.heads))
                c = width
            if i > 0:
                self.upsample.append(nn.Conv2d(c, c, 3, padding=1))
        self.norm_out = nn.GroupNorm(g, c)
        self.conv_out = nn.Conv2d(c, 3, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # an untrained model predicts v = 0
        nn.init.zeros_(self.conv_out.bias)

    @classmethod
    def from_world(cls, world: BaselineConfig) -> "FrameStackUNet":
        world.validate()
        return cls(world.dynamics, resolution=world.resolution, action_size=world.action_size)

    @property
    def pos_embed(self) -> torch.Tensor:
        """A parameter whose device and dtype are the model's (the session and backends read
        ``dynamics.pos_embed.device``; the U-Net has no position embedding)."""
        return self.conv_in.weight

    def _condition(self, t: torch.Tensor, actions: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        B = t.shape[0]
        dtype = self.conv_in.weight.dtype
        c = self.level_embed(timestep_embedding(t.float(), 256).to(dtype))  # (B, cd)
        ctx = timestep_embedding(levels.float().reshape(-1), 32).reshape(B, -1).to(dtype)  # (B, n*32)
        c = c + self.context_level_embed(ctx) + self.action_embed(actions.reshape(B, -1).to(dtype))
        return F.silu(c)  # (B, cd)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        past_frames: torch.Tensor,
        actions: torch.Tensor,
        past_levels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, 3, H, W) at noise level t (B,); past_frames (B, n, 3, H, W) oldest first at
        past_levels (B,n) (None: clean); actions (B, n+1, A) normalised, the last one leads to x.
        Returns the velocity (B, 3, H, W)."""
        B, n = past_frames.shape[:2]
        if n != self.config.context_frames:
            raise ValueError(f"the U-Net stacks {self.config.context_frames} past frames, got {n}")
        if past_levels is None:
            past_levels = torch.zeros(B, n, device=x.device)
        c = self._condition(t, actions, past_levels)  # (B, cd)
        dtype = self.conv_in.weight.dtype
        h = self.conv_in(torch.cat([x[:, None], past_frames], 1).flatten(1, 2).to(dtype))  # (B, ch0, H, W)
        skips = [h]
        blocks = iter(self.down)
        for i in range(len(self.config.channels)):
            for _ in range(self.config.blocks):
                h = next(blocks)(h, c)
                skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)  # (B, C, H/2, W/2)
                skips.append(h)
        blocks = iter(self.up)
        for j in range(len(self.config.channels)):
            for _ in range(self.config.blocks + 1):
                h = next(blocks)(torch.cat([h, skips.pop()], 1), c)
            if j < len(self.upsample):
                h = self.upsample[j](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, 3, H, W)

    # -- the playing interface of ``Dynamics``, as WorldSession and the backends use it ----------
    def new_cache(self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> FrameStackCache:
        n, (H, W) = self.config.context_frames, self.latent_size
        device = device if device is not None else self.pos_embed.device
        return FrameStackCache(
            frames=torch.zeros(batch_size, n, 3, H, W, device=device, dtype=dtype),
            actions=torch.zeros(batch_size, n, self.action_size, device=device, dtype=dtype),
            levels=torch.zeros(batch_size, n, device=device, dtype=torch.float32),
            valid=torch.zeros(batch_size, n, dtype=torch.bool, device=device),
        )

    def step_with_cache_tensors(
        self, latent: torch.Tensor, noise_level: torch.Tensor, action: torch.Tensor,
        frames: torch.Tensor, actions: torch.Tensor, levels: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        """The pure step (what ``backends`` compiles): (velocity (B, 3, H, W), reward (B,),
        termination (B,) -- zeros, no heads --, then what ``FrameStackCache.push`` takes:
        the action (B, A) and noise level (B,) of this frame)."""
        B = latent.shape[0]
        all_actions = torch.cat([actions, action[:, None].to(actions.dtype)], 1)  # (B, n+1, A)
        v = self(latent, noise_level, frames.to(latent.dtype), all_actions, levels)
        zeros = torch.zeros(B, device=latent.device, dtype=v.dtype)
        return v, zeros, zeros, action, noise_level

    def _run_step(self, latent, noise_level, action, cache: FrameStackCache) -> tuple[DynamicsOutput, tuple[torch.Tensor, ...]]:
        return run_cached_step(self, latent, noise_level, action, cache)

    def step(self, latent: torch.Tensor, noise_level: torch.Tensor | float, action: torch.Tensor, cache: FrameStackCache) -> DynamicsOutput:
        """Velocity of the new frame (B, 3, H, W) at ``noise_level`` led to by ``action`` (B, A);
        the cache is read, never changed. Reward and termination are zeros (no heads)."""
        return self._run_step(latent, noise_level, action, cache)[0]

    def append(self, latent: torch.Tensor, noise_level: torch.Tensor | float, action: torch.Tensor, cache: FrameStackCache) -> DynamicsOutput:
        """The frame (B, 3, H, W) at its noise level, led to by ``action`` (B, A), joins the stack.

        No network call: a frame stack has no keys/values to compute and the U-Net no heads,
        so where the transformer's append costs a step this costs a copy (the session reads
        only reward and termination from it: zeros, and a zero velocity)."""
        check_batch(cache, latent)
        B = latent.shape[0]
        level = torch.as_tensor(noise_level, dtype=torch.float32, device=latent.device).expand(B)  # (B,)
        with torch.no_grad():
            cache.push(action, level, latent=latent)
        zeros = torch.zeros(B, device=latent.device)
        return DynamicsOutput(torch.zeros_like(latent), zeros, zeros)


# ---------------------------------------------------------------------------
# the objective: the world's rectified flow, one target frame per window
# ---------------------------------------------------------------------------
def baseline_loss(model: FrameStackUNet, frames: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """frames (B, n+1, 3, H, W) in [-1, 1], the last one the target; actions (B, n+1, A)
    normalised, ``actions[:, k]`` led to ``frames[:, k]``. Returns (loss, metrics).

    The target draws t from the schedule (as ``objective.sample_noise_levels`` does
    for the world); context frames get GameNGen's noise at a level in
    [0, context_noise_max] that the network is told."""
    from neuralworld.model.objective import T_BINS

    cfg = model.config
    B, n = frames.shape[0], frames.shape[1] - 1
    x0, past = frames[:, -1], frames[:, :-1]  # (B, 3, H, W), (B, n, 3, H, W)
    dev = frames.device
    if cfg.noise_schedule == "logit_normal":
        t = torch.sigmoid(cfg.logit_mean + cfg.logit_std * torch.randn(B, device=dev))  # (B,)
    else:
        t = torch.rand(B, device=dev)
    levels = cfg.context_noise_max * torch.rand(B, n, device=dev)  # (B, n)
    lv = levels[:, :, None, None, None]
    past = (1 - lv) * past + lv * torch.randn(past.shape, device=dev)
    noise = torch.randn(x0.shape, device=dev)
    tb = t[:, None, None, None]
    xt = (1 - tb) * x0 + tb * noise  # (B, 3, H, W)
    v = model(xt, t, past, actions, levels)
    per_sample = (v.float() - (noise - x0)).pow(2).mean(dim=(1, 2, 3))  # (B,)
    loss = per_sample.mean()
    metrics: dict[str, float] = {"flow": float(loss.detach()), "loss": float(loss.detach())}
    with torch.no_grad():
        for lo, hi in zip(T_BINS[:-1], T_BINS[1:]):
            in_bin = (t >= lo) & ((t < hi) if hi < 1.0 else (t <= hi))
            if in_bin.any():
                metrics[f"flow_by_t/{lo:.2f}-{hi:.2f}"] = float(per_sample[in_bin].mean())
    return loss, metrics


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _check_shapes() -> None:  # pragma: no cover - a quick manual check: python -m neuralworld.model.unet
    spec_size = 7
    for name in BASELINE_PRESETS:
        cfg = baseline_preset(name)
        cfg.action_size = spec_size
        m = FrameStackUNet.from_world(cfg)
        print(name, count_parameters(m), math.prod(cfg.resolution))


if __name__ == "__main__":  # pragma: no cover
    _check_shapes()

"""The dynamics: an action-conditioned, frame-causal latent diffusion transformer.

Given the latents of a clip, a noise level per frame and the action that led to
each frame, it predicts the flow-matching velocity of every frame, plus the
reward and termination of the transition into it.

Token layout
    A frame's latent (C, h, w) is cut into p x p patches: N = (h/p)(w/p) tokens
    (64 at 128x128 with a 16x16 latent and p = 2), each with a learned spatial
    position embedding. A clip is T frames x N tokens, frame-major.

Conditioning
    Per frame: embed(noise level) + embed(action) -> c, injected into every block
    by adaLN with zero-initialised modulation and a zero-initialised output layer
    (DiT), so an untrained block is the identity and an untrained model predicts 0.

Frame stacking (``prev_frame``)
    Each token also gets the same patch of the previous frame's latent, embedded
    by its own linear layer and added to the token (zeros for the first frame of
    a clip or after a reset). Attention can find the previous frame too, but it
    must learn where to look; given beside the noisy patch, "the next frame is
    nearly the last one" is a linear map instead of an attention pattern to discover
    (DIAMOND's frame stacking; what it gained: docs/experiments.md). The previous
    latent is the one the clip holds at that index (noisy at its own level in
    diffusion-forcing clips, near-clean context in playing clips), and in a rollout
    the latent last appended to memory: the same input in training and play.

Attention, memory and time
    A token sees every token of its own frame and of past frames, never the
    future (frame-causal). Memory is M frames at bounded cost: the last K frames
    (the current one included) at full token resolution, frames K..M-1 back only
    through keys/values average-pooled over memory_pool x memory_pool tokens
    (16 tokens per frame instead of 64). In a clip, every layer attends to
    [full keys of all frames] ++ [pooled keys of all frames] under a mask that
    picks, for query frame i, full keys of frames i-K+1..i and pooled keys of
    frames i-M+1..i-K. Time between frames is a learned bias per head and frame
    distance (0..M-1): nothing depends on an absolute frame index, so a rollout
    can run for any number of frames.

KV cache (training == inference)
    A frame's keys and values depend only on it and its past, so they are
    computed once. ``DynamicsCache`` holds, per layer, a ring of the last K-1
    frames' full keys/values and a ring of the last M-1 frames' pooled
    keys/values, with the age of each slot and a validity mask. ``step`` predicts
    one new frame from the cache without changing it; ``append`` runs the same
    computation and writes the frame's keys/values into the rings. The attention
    a query sees is exactly the one it sees in a clip, so cached rollouts equal
    full recomputation (tested). ``step_with_cache_tensors`` is the pure function
    underneath (cache tensors in, the new frame's keys/values out): what the ONNX
    export traces; the host writes the returned keys/values into its own ring.

Rollout::

    cache = model.new_cache(batch_size=1)
    for z, a in zip(context_latents, context_actions):      # (1, C, h, w), (1, A)
        model.append(z, level(context), a, cache)
    v = lambda x, t: model.step(x, t, action, cache).velocity
    z = sampler(v, torch.randn(1, C, h, w))                   # the new frame's latent
    out = model.append(z, level(context), action, cache)      # out.reward, out.termination
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from neuralworld.model.config import DynamicsConfig, WorldConfig


class DynamicsOutput(NamedTuple):
    velocity: torch.Tensor  # (B, T, C, h, w) for a clip, (B, C, h, w) for a step
    reward: torch.Tensor  # (B, T) or (B,): reward of the transition into the frame
    termination: torch.Tensor  # (B, T) or (B,): logit that the episode ended at the frame


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x (B, T, N, D), shift/scale (B, T, D) per frame."""
    return x * (1 + scale.unsqueeze(2)) + shift.unsqueeze(2)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of noise levels t (...,) in [0, 1] -> (..., dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (t.float() * 1000.0).unsqueeze(-1) * freqs  # (..., half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (..., dim)


def pool_tokens(x: torch.Tensor, grid: tuple[int, int], factor: int) -> torch.Tensor:
    """Average-pool tokens laid out on a grid: (B, H, T, gh*gw, hd) -> (B, H, T, gh*gw/factor^2, hd)."""
    B, H, T, _, hd = x.shape
    gh, gw = grid
    x = x.reshape(B, H, T, gh // factor, factor, gw // factor, factor, hd)
    return x.mean(dim=(4, 6)).reshape(B, H, T, (gh // factor) * (gw // factor), hd)


class Block(nn.Module):
    """Pre-norm transformer block with adaLN-zero: attention over (own + given) keys, then MLP."""

    def __init__(self, config: DynamicsConfig):
        super().__init__()
        d = config.d_model
        self.n_heads = config.n_heads
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        hidden = int(d * config.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, d))
        # shift, scale, gate for attention and for the MLP; zero-initialised by Dynamics
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(config.cond_dim, 6 * d))
        # learned bias per head and frame distance 0..M-1: the only notion of time
        self.frame_bias = nn.Parameter(torch.zeros(config.n_heads, config.memory_frames))

    def forward(
        self,
        x: torch.Tensor,
        c: torch.Tensor,
        attn_bias: torch.Tensor,
        pool: tuple[tuple[int, int], int] | None = None,
        extra_k: tuple[torch.Tensor, ...] = (),
        extra_v: tuple[torch.Tensor, ...] = (),
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, N, D) tokens of T frames; c (B, T, cond) their conditioning.

        Keys are [full keys of these T frames] ++ [their pooled keys, if ``pool``
        = (grid, factor) is given] ++ ``extra_k`` (each (B, H, S_i, hd): a cache);
        ``attn_bias`` (..., T*N, keys) holds the frame-distance bias and -inf
        where a query may not look. Returns (x, k, v) with k, v (B, H, T, N, hd)
        of these frames, for caching.
        """
        B, T, N, D = x.shape
        H = self.n_heads
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c).chunk(6, dim=-1)  # each (B, T, D)

        h = modulate(self.norm1(x), shift1, scale1)  # (B, T, N, D)
        q, k, v = self.qkv(h).reshape(B, T, N, 3, H, D // H).permute(3, 0, 4, 1, 2, 5)  # each (B, H, T, N, hd)
        keys, values = [k.flatten(2, 3)], [v.flatten(2, 3)]  # (B, H, T*N, hd)
        if pool is not None:
            keys.append(pool_tokens(k, *pool).flatten(2, 3))  # (B, H, T*Np, hd)
            values.append(pool_tokens(v, *pool).flatten(2, 3))
        keys += [k_i.to(q.dtype) for k_i in extra_k]  # each (B, H, S_i, hd)
        values += [v_i.to(q.dtype) for v_i in extra_v]
        attn = F.scaled_dot_product_attention(
            q.flatten(2, 3), torch.cat(keys, 2), torch.cat(values, 2), attn_mask=attn_bias.to(q.dtype)
        )  # (B, H, T*N, hd)
        attn = attn.reshape(B, H, T, N, D // H).permute(0, 2, 3, 1, 4).reshape(B, T, N, D)  # (B, T, N, D)
        x = x + gate1.unsqueeze(2) * self.proj(attn)  # (B, T, N, D)
        x = x + gate2.unsqueeze(2) * self.mlp(modulate(self.norm2(x), shift2, scale2))  # (B, T, N, D)
        return x, k, v


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm + linear to patch values; zero-initialised so the
    untrained model predicts zero velocity."""

    def __init__(self, config: DynamicsConfig, patch_dim: int):
        super().__init__()
        d = config.d_model
        self.norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(config.cond_dim, 2 * d))
        self.linear = nn.Linear(d, patch_dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(c).chunk(2, dim=-1)  # each (B, T, D)
        return self.linear(modulate(self.norm(x), shift, scale))  # (B, T, N, patch_dim)


class CacheRows:
    """What every network's cache (``DynamicsCache``, the pixel worlds' shift registers) does
    per batch element: ``reset`` zeroes the tensors named in ``FORGET`` for some rows (all when
    None: a new episode there), and ``batch_size`` is their first axis."""

    FORGET: ClassVar[tuple[str, ...]] = ()

    @property
    def batch_size(self) -> int:
        return getattr(self, self.FORGET[0]).shape[0]

    def reset(self, batch_index: int | torch.Tensor | None = None) -> None:
        index = slice(None) if batch_index is None else batch_index
        for name in self.FORGET:
            getattr(self, name)[index] = 0


def check_batch(cache: CacheRows, latent: torch.Tensor) -> None:
    if cache.batch_size != latent.shape[0]:
        raise ValueError(f"cache is for batch {cache.batch_size}, latent has batch {latent.shape[0]}")


def run_cached_step(net: Any, latent: torch.Tensor, noise_level: torch.Tensor | float, action: torch.Tensor,
                    cache: Any) -> tuple[DynamicsOutput, tuple[torch.Tensor, ...]]:
    """``net.step_with_cache_tensors`` against ``cache`` (any network's: the pure step every
    backend compiles or exports), split into the frame's outputs and what ``cache.push`` takes."""
    check_batch(cache, latent)
    level = torch.as_tensor(noise_level, dtype=torch.float32, device=latent.device).expand(latent.shape[0])  # (B,)
    velocity, reward, term, *kv = net.step_with_cache_tensors(latent, level, action, *cache.step_inputs())
    return DynamicsOutput(velocity, reward, term), tuple(kv)


@dataclass
class DynamicsCache(CacheRows):
    """Keys/values of past frames for every layer, in two fixed-size rings.

    full_*    the last K-1 frames at full token resolution
    pooled_*  the last M-1 frames with pooled tokens (only those K..M-1 back are looked at)
    *_age     frames between a slot and the next frame to generate (1 = the previous frame)
    *_valid   whether a slot holds a frame of this batch element (False after ``reset``)
    prev      the latent of the last frame appended, as the ``prev_frame`` input (zeros after ``reset``)

    Fixed shapes and explicit tensors, so the same layout can be an ONNX graph's inputs.
    """

    prev: torch.Tensor  # (B, C, h, w): the latent last appended (zeros when none), for frame stacking
    full_k: torch.Tensor  # (L, B, H, K-1, N, hd)
    full_v: torch.Tensor  # (L, B, H, K-1, N, hd)
    full_age: torch.Tensor  # (K-1,) int64
    full_valid: torch.Tensor  # (B, K-1) bool
    pooled_k: torch.Tensor  # (L, B, H, M-1, Np, hd)
    pooled_v: torch.Tensor  # (L, B, H, M-1, Np, hd)
    pooled_age: torch.Tensor  # (M-1,) int64
    pooled_valid: torch.Tensor  # (B, M-1) bool
    full_next: int = 0  # ring slot the next append writes
    pooled_next: int = 0
    frames_seen: int = 0  # frames appended so far (informational only: never used by the model)

    FORGET: ClassVar[tuple[str, ...]] = ("full_valid", "pooled_valid", "prev")
    """What ``reset`` clears (the rings' contents stay: invalid slots are masked)."""

    def step_inputs(self) -> tuple[Any, ...]:
        """The cache's part of ``Dynamics.step_with_cache_tensors``'s inputs, in its order."""
        return (
            self.prev, self.full_k, self.full_v, self.full_age, self.full_valid,
            self.pooled_k, self.pooled_v, self.pooled_age, self.pooled_valid,
        )  # fmt: skip

    def push(self, k: Any, v: Any, pooled_k: Any, pooled_v: Any, memory_frames: int, *, latent: Any) -> None:
        """Write one frame into memory: its keys/values into both rings (the oldest slot is
        overwritten) and its latent as the next frame's ``prev``.

        k, v (L, B, H, N, hd); pooled_k, pooled_v (L, B, H, Np, hd); latent (B, C, h, w).
        Only indexing and in-place arithmetic, so the same code serves torch rings
        (``Dynamics.append``) and numpy rings (the ONNX Runtime backend)."""
        self.prev[...] = latent
        if self.full_k.shape[3] > 0:
            s = self.full_next
            self.full_k[:, :, :, s] = k  # (L, B, H, N, hd); assignment casts to the ring's dtype
            self.full_v[:, :, :, s] = v
            self.full_age += 1
            self.full_age[s] = 1
            self.full_valid[:, s] = True
            self.full_next = (s + 1) % self.full_k.shape[3]
        if self.pooled_k.shape[3] > 0:
            s = self.pooled_next
            self.pooled_k[:, :, :, s] = pooled_k  # (L, B, H, Np, hd)
            self.pooled_v[:, :, :, s] = pooled_v
            self.pooled_age += 1
            self.pooled_age[s] = 1
            self.pooled_valid[:, s] = True
            self.pooled_next = (s + 1) % self.pooled_k.shape[3]
        # ages only grow while a slot waits to be overwritten; keep them bounded for 10^9 frames
        self.full_age[self.full_age > memory_frames] = memory_frames
        self.pooled_age[self.pooled_age > memory_frames] = memory_frames
        self.frames_seen += 1


class Dynamics(nn.Module):
    def __init__(self, config: DynamicsConfig, *, latent_channels: int, latent_size: tuple[int, int], action_size: int):
        super().__init__()
        config.validate()
        self.config = config
        p, d = config.patch_size, config.d_model
        h, w = latent_size
        if h % (p * config.memory_pool) or w % (p * config.memory_pool):
            raise ValueError(f"latent {h}x{w} must be divisible by patch_size * memory_pool = {p * config.memory_pool}")
        self.latent_channels = latent_channels
        self.latent_size = (h, w)
        self.action_size = action_size
        self.grid = (h // p, w // p)  # token grid per frame
        self.tokens_per_frame = self.grid[0] * self.grid[1]  # N
        self.pooled_per_frame = self.tokens_per_frame // config.memory_pool**2  # Np
        self.patch_dim = latent_channels * p * p

        self.patch_embed = nn.Linear(self.patch_dim, d)
        # frame stacking: the previous frame's patch beside each token (None in worlds trained without it)
        self.prev_embed = nn.Linear(self.patch_dim, d) if config.prev_frame else None
        self.pos_embed = nn.Parameter(torch.zeros(1, 1, self.tokens_per_frame, d))
        self.level_embed = nn.Sequential(nn.Linear(256, config.cond_dim), nn.SiLU(), nn.Linear(config.cond_dim, config.cond_dim))
        self.action_embed = nn.Sequential(
            nn.Linear(action_size, config.cond_dim), nn.SiLU(), nn.Linear(config.cond_dim, config.cond_dim)
        )
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.final = FinalLayer(config, self.patch_dim)
        # reward and termination of the transition into a frame, from its mean final token
        self.head_norm = nn.LayerNorm(d)
        self.heads = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, 2))
        self._init_weights()

    @classmethod
    def from_world(cls, world: WorldConfig) -> "Dynamics":
        world.validate()
        return cls(
            world.dynamics,
            latent_channels=world.latent_channels,
            latent_size=world.latent_size,
            action_size=world.action_size,
        )

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.pos_embed, std=0.02)
        # DiT's small init for the noise level's MLP, whose 256 sinusoidal inputs are O(1). The
        # action MLP keeps Xavier: its few inputs are mostly 0 or +-1, and two std-0.02 layers
        # on them start its output ~10x below the level's, where gradients through the product
        # of two tiny layers barely move it: with that init the world ignored its controls
        # (docs/experiments.md, "the action embedding's initialisation").
        nn.init.normal_(self.level_embed[0].weight, std=0.02)
        nn.init.normal_(self.level_embed[2].weight, std=0.02)
        # adaLN-zero: every block starts as the identity, the output as zero
        for block in self.blocks:
            nn.init.zeros_(block.modulation[-1].weight)
            nn.init.zeros_(block.modulation[-1].bias)
        nn.init.zeros_(self.final.modulation[-1].weight)
        nn.init.zeros_(self.final.modulation[-1].bias)
        nn.init.zeros_(self.final.linear.weight)
        nn.init.zeros_(self.final.linear.bias)

    # -- pieces shared by the clip and the step paths ---------------------------------
    @property
    def _head_dim(self) -> int:
        return self.config.d_model // self.config.n_heads

    def _pool(self) -> tuple[tuple[int, int], int] | None:
        """(grid, factor) when older frames are pooled; None when K == M (no pooled memory)."""
        return (self.grid, self.config.memory_pool) if self.config.memory_frames > self.config.full_frames else None

    def _patches(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, T, C, h, w) -> (B, T, N, C*p*p) in the weights' dtype (fp32 or bf16)."""
        B, T, C, h, w = latents.shape
        p = self.config.patch_size
        x = latents.to(self.pos_embed.dtype).reshape(B, T, C, h // p, p, w // p, p).permute(0, 1, 3, 5, 2, 4, 6)  # (B, T, gh, gw, C, p, p)
        return x.reshape(B, T, self.tokens_per_frame, self.patch_dim)  # (B, T, N, C*p*p)

    def _embed(
        self, latents: torch.Tensor, noise_level: torch.Tensor, actions: torch.Tensor, prev: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """latents (B, T, C, h, w), noise_level (B, T), actions (B, T, A), prev (B, T, C, h, w)
        the latent before each frame -> tokens (B, T, N, D), cond (B, T, cond)."""
        dtype = self.pos_embed.dtype
        x = self.patch_embed(self._patches(latents)) + self.pos_embed  # (B, T, N, D)
        if self.prev_embed is not None:
            x = x + self.prev_embed(self._patches(prev))  # (B, T, N, D)
        levels = timestep_embedding(noise_level, 256).to(dtype)  # (B, T, 256)
        c = self.level_embed(levels) + self.action_embed(actions.to(dtype))  # (B, T, cond)
        return x, c

    def _outputs(self, x: torch.Tensor, c: torch.Tensor) -> DynamicsOutput:
        """Final tokens (B, T, N, D) -> velocity (B, T, C, h, w), reward (B, T), termination (B, T)."""
        B, T = x.shape[:2]
        p, (gh, gw) = self.config.patch_size, self.grid
        out = self.final(x, c)  # (B, T, N, C*p*p)
        out = out.reshape(B, T, gh, gw, self.latent_channels, p, p).permute(0, 1, 4, 2, 5, 3, 6)  # (B, T, C, gh, p, gw, p)
        velocity = out.reshape(B, T, self.latent_channels, gh * p, gw * p)  # (B, T, C, h, w)
        heads = self.heads(self.head_norm(x.mean(dim=2)))  # (B, T, 2)
        return DynamicsOutput(velocity, heads[..., 0], heads[..., 1])

    # -- a whole clip (training) -----------------------------------------------------------
    def _clip_pool(self, T: int) -> tuple[tuple[int, int], int] | None:
        """Pooled keys are needed in a clip only when some frame is K or more back."""
        return self._pool() if T > self.config.full_frames else None

    def _clip_bias(self, table: torch.Tensor, T: int) -> torch.Tensor:
        """Frame-distance bias with the causal memory mask for a clip: (H, T*N, T*N [+ T*Np])."""
        K, M = self.config.full_frames, self.config.memory_frames
        N, Np = self.tokens_per_frame, self.pooled_per_frame
        H = table.shape[0]
        idx = torch.arange(T, device=table.device)
        dist = idx[:, None] - idx[None, :]  # (T, T): query frame i - key frame j
        bias = table[:, dist.clamp(0, M - 1)]  # (H, T, T)
        neg_inf = torch.tensor(float("-inf"), dtype=bias.dtype, device=bias.device)
        full = torch.where((dist >= 0) & (dist < K), bias, neg_inf)  # (H, T, T)
        full = full[:, :, None, :, None].expand(H, T, N, T, N).reshape(H, T * N, T * N)
        if self._clip_pool(T) is None:
            return full
        pooled = torch.where((dist >= K) & (dist < M), bias, neg_inf)  # (H, T, T)
        pooled = pooled[:, :, None, :, None].expand(H, T, N, T, Np).reshape(H, T * N, T * Np)
        return torch.cat([full, pooled], dim=-1)  # (H, T*N, T*(N+Np))

    def forward(self, latents: torch.Tensor, noise_level: torch.Tensor, actions: torch.Tensor) -> DynamicsOutput:
        """A clip at once (training, evaluation).

        latents (B, T, C, h, w): normalised latents, each frame noised to its own level;
        noise_level (B, T) in [0, 1] (flow-matching time: 0 clean, 1 pure noise);
        actions (B, T, A): normalised; actions[:, t] is the action that led to frame t.
        """
        T = latents.shape[1]
        prev = torch.cat([torch.zeros_like(latents[:, :1]), latents[:, :-1]], dim=1)  # (B, T, C, h, w): nothing before frame 0
        x, c = self._embed(latents, noise_level, actions, prev)  # (B, T, N, D), (B, T, cond)
        for block in self.blocks:
            bias = self._clip_bias(block.frame_bias, T)  # (H, T*N, keys)
            x, _, _ = block(x, c, bias, self._clip_pool(T))  # (B, T, N, D)
        return self._outputs(x, c)

    # -- one frame against a cache (playing) -------------------------------------------------
    def new_cache(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
    ) -> DynamicsCache:
        """An empty cache for ``batch_size`` parallel rollouts."""
        cfg = self.config
        L, H, hd = cfg.n_layers, cfg.n_heads, self._head_dim
        sf = cfg.full_frames - 1
        sp = cfg.memory_frames - 1 if self._pool() is not None else 0
        N, Np = self.tokens_per_frame, self.pooled_per_frame
        device = device if device is not None else self.pos_embed.device
        zeros = lambda *shape: torch.zeros(*shape, device=device, dtype=dtype)  # noqa: E731
        return DynamicsCache(
            prev=zeros(batch_size, self.latent_channels, *self.latent_size),
            full_k=zeros(L, batch_size, H, sf, N, hd),
            full_v=zeros(L, batch_size, H, sf, N, hd),
            full_age=torch.arange(1, sf + 1, device=device),  # ages of empty slots don't matter
            full_valid=torch.zeros(batch_size, sf, dtype=torch.bool, device=device),
            pooled_k=zeros(L, batch_size, H, sp, Np, hd),
            pooled_v=zeros(L, batch_size, H, sp, Np, hd),
            pooled_age=torch.arange(1, sp + 1, device=device),
            pooled_valid=torch.zeros(batch_size, sp, dtype=torch.bool, device=device),
        )

    def _step_bias(
        self,
        tables: torch.Tensor,
        full_age: torch.Tensor,
        full_valid: torch.Tensor,
        pooled_age: torch.Tensor,
        pooled_valid: torch.Tensor,
    ) -> torch.Tensor:
        """Bias of one new frame against the cache for every layer at once, from the stacked
        frame-bias tables (L, H, M); keys ordered [own, full ring, pooled ring]: (L, B, H, 1, keys)."""
        K, M = self.config.full_frames, self.config.memory_frames
        N, Np = self.tokens_per_frame, self.pooled_per_frame
        L, H = tables.shape[:2]
        B = full_valid.shape[0]
        neg_inf = torch.tensor(float("-inf"), dtype=tables.dtype, device=tables.device)
        own = tables[:, None, :, :1].expand(L, B, H, N)  # (L, B, H, N): distance 0
        full_ok = full_valid & (full_age < K)  # (B, K-1)
        full = torch.where(full_ok[None, :, None], tables[:, None, :, full_age.clamp(0, M - 1)], neg_inf)  # (L, B, H, K-1)
        pooled_ok = pooled_valid & (pooled_age >= K) & (pooled_age < M)  # (B, M-1)
        pooled = torch.where(pooled_ok[None, :, None], tables[:, None, :, pooled_age.clamp(0, M - 1)], neg_inf)  # (L, B, H, M-1)
        full = full[..., None].expand(L, B, H, full.shape[-1], N).flatten(3)  # (L, B, H, (K-1)*N)
        pooled = pooled[..., None].expand(L, B, H, pooled.shape[-1], Np).flatten(3)  # (L, B, H, (M-1)*Np)
        return torch.cat([own, full, pooled], dim=-1).unsqueeze(3)  # (L, B, H, 1, keys)

    def step_with_cache_tensors(
        self,
        latent: torch.Tensor,
        noise_level: torch.Tensor,
        action: torch.Tensor,
        prev_latent: torch.Tensor,
        full_k: torch.Tensor,
        full_v: torch.Tensor,
        full_age: torch.Tensor,
        full_valid: torch.Tensor,
        pooled_k: torch.Tensor,
        pooled_v: torch.Tensor,
        pooled_age: torch.Tensor,
        pooled_valid: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        """The pure step: one frame against explicit cache tensors (see ``DynamicsCache``).

        latent (B, C, h, w), noise_level (B,), action (B, A), prev_latent (B, C, h, w)
        the latent appended last (``DynamicsCache.prev``; unused without ``prev_frame``). Returns
        (velocity (B, C, h, w), reward (B,), termination (B,),
         new_full_k, new_full_v (L, B, H, N, hd), new_pooled_k, new_pooled_v (L, B, H, Np, hd)):
        the frame's own keys/values, for the caller to write into its rings.
        """
        B = latent.shape[0]
        L, pool = self.config.n_layers, self._pool()
        x, c = self._embed(latent[:, None], noise_level[:, None], action[:, None], prev_latent[:, None])  # (B, 1, N, D), (B, 1, cond)
        tables = torch.stack([block.frame_bias for block in self.blocks])  # (L, H, M)
        bias = self._step_bias(tables, full_age, full_valid, pooled_age, pooled_valid)  # (L, B, H, 1, keys)
        new_k, new_v = [], []
        for layer, block in enumerate(self.blocks):
            past_k = (full_k[layer].flatten(2, 3), pooled_k[layer].flatten(2, 3))  # (B, H, (K-1)*N | (M-1)*Np, hd)
            past_v = (full_v[layer].flatten(2, 3), pooled_v[layer].flatten(2, 3))
            x, k, v = block(x, c, bias[layer], None, past_k, past_v)  # (B, 1, N, D), k/v (B, H, 1, N, hd)
            new_k.append(k[:, :, 0])  # (B, H, N, hd)
            new_v.append(v[:, :, 0])
        out = self._outputs(x, c)
        k_all, v_all = torch.stack(new_k), torch.stack(new_v)  # (L, B, H, N, hd)
        if pool is not None:
            H, hd = k_all.shape[2], k_all.shape[-1]
            pooled_new_k = pool_tokens(k_all.reshape(L * B, H, 1, -1, hd), *pool).reshape(L, B, H, -1, hd)  # (L, B, H, Np, hd)
            pooled_new_v = pool_tokens(v_all.reshape(L * B, H, 1, -1, hd), *pool).reshape(L, B, H, -1, hd)
        else:
            pooled_new_k = pooled_new_v = k_all[:, :, :, :0]  # (L, B, H, 0, hd)
        return out.velocity[:, 0], out.reward[:, 0], out.termination[:, 0], k_all, v_all, pooled_new_k, pooled_new_v

    def _run_step(self, latent, noise_level, action, cache: DynamicsCache) -> tuple[DynamicsOutput, tuple[torch.Tensor, ...]]:
        return run_cached_step(self, latent, noise_level, action, cache)

    def step(
        self, latent: torch.Tensor, noise_level: torch.Tensor | float, action: torch.Tensor, cache: DynamicsCache
    ) -> DynamicsOutput:
        """Predict one new frame against the cache, leaving the cache as it is.

        latent (B, C, h, w) at ``noise_level`` (B,) or a float; action (B, A), the
        action that leads to this frame. Returns velocity (B, C, h, w), reward (B,),
        termination (B,). Call it once per sampler evaluation.
        """
        return self._run_step(latent, noise_level, action, cache)[0]

    def append(
        self, latent: torch.Tensor, noise_level: torch.Tensor | float, action: torch.Tensor, cache: DynamicsCache
    ) -> DynamicsOutput:
        """Push a finished frame into memory: the same computation as ``step``, and the
        frame's keys/values are written into the cache rings (the oldest slot is overwritten).

        Give the clean (or lightly noised, at the context level used in training)
        latent and the action that led to it. The returned reward and termination are
        the best estimates for that frame (they see it clean).
        """
        out, (k, v, pk, pv) = self._run_step(latent, noise_level, action, cache)
        with torch.no_grad():
            cache.push(k, v, pk, pv, self.config.memory_frames, latent=latent)
        return out

"""The warp-and-paint world: a one-step, adversarially trained generator in pixel space.

Why this network (DESIGN, "World recipe for this CPU"): in a first-person world
most of each frame is the last one moved. So the network does not draw the next
frame from nothing; it predicts

* a **flow** field (2, H, W), in pixels: where each pixel of the new frame comes
  from in the last frame (a backward warp, ``grid_sample``);
* a **mask** m (1, H, W) in [0, 1]: how far to trust the warped pixels;
* **paint** (3, H, W) in [-1, 1]: new content where warping cannot explain the
  frame (what turning or walking reveals, what moves on its own);

and composites ``next = m * warp(last, flow) + (1 - m) * paint`` (vid2vid,
SDC-Net). Warped pixels are real pixels moved, so they stay sharp; the paint is
trained with an adversarial loss so that what is generated is detail, not the
average of the possible details (Ollin Boer Bohan's largest gain).

What it sees (a multi-resolution memory, as in Ollin's pyramid, at a fixed cost):
the last ``full_frames`` frames at full resolution, the last ``memory_frames``
frames pooled 4x, the last ``action_frames`` actions (Doom has momentum: what
was pressed before still moves the player) and a noise map (the generator's
randomness: monsters and the unseen are not determined by the past).

Playing through ``WorldSession`` unchanged (as the U-Net baseline does): the
"latent" is the frame in [-1, 1] (``PixelCodec``); the cache is a shift register
of the last frames and actions (``WarpCache``), stored 8-bit-quantised as every
fed-back frame is (what the network was trained on, so a rollout's frames are
inputs it knows). The sampler is one Euler step from the noise ``x``: ``step``
returns ``v = x - G(memory, action, noise=x)`` so ``x - v`` is the generated
frame (``ONE_STEP``: every preset of a session is that one call here).
Reward and termination heads read the bottleneck of the same call; ``append``
hands back the last ``step``'s heads (a cache of one value, no second call).

Shapes: B batch, n full-resolution frames, M memory frames, A action size, H x W the frame.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from neuralworld.actions import ActionSpec
from neuralworld.model.config import ConfigError
from neuralworld.model.dynamics import CacheRows, DynamicsOutput, check_batch, run_cached_step
from neuralworld.model.pixel import PixelWorldConfig, pixel_preset, shift_in

MODEL_KIND = "warp"
"""The bundle's ``"model"`` value for this network."""

ONE_STEP_PRESET = dict(method="euler", steps=1, context_level=0.0)
"""What every sampler preset means for a one-step generator (read by the session)."""


@dataclass
class WarpNetConfig:
    """The warp-and-paint generator, its discriminator and their training objective."""

    full_frames: int = 4
    """n: the last frames seen at full resolution (the last one is the one warped)."""
    memory_frames: int = 16
    """M: the last frames seen pooled 4x (M >= n), beside the bottleneck's 1/4 resolution."""
    action_frames: int = 4
    """Actions the generator reads: the one that leads to the new frame and the ones before it."""
    channels: tuple[int, int, int, int] = (16, 32, 64, 128)
    """Widths at full, 1/2, 1/4 and 1/8 resolution."""
    cond_dim: int = 128
    noise_channels: int = 3
    """Channels of the noise map given at 1/4 resolution."""
    action_flow: bool = True
    """The flow starts from ego-motion: a per-pixel linear map of the last ``action_frames``
    actions (at 1/4 resolution, upsampled), fitted by least squares to optical flow on the
    training data before the first step (``fit_action_flow``); the network adds to it. A held
    turn then slides the picture whatever the picture has become."""
    flow_resolution: int = 4
    """The flow is smooth at 1/flow_resolution of the frame: averaged over blocks of that side,
    upsampled bilinearly (a coarse field moves surfaces; it cannot shred them into streaks)."""
    integer_warp: bool = True
    """Pixels move by whole pixels: the flow is rounded stochastically, floor(flow + u) with one
    u ~ U[0, 1) per frame (from the noise), so a fraction of a pixel per frame moves on average
    but no frame is resampled; gradients pass straight through the bilinear warp. A bilinear
    warp blurs a little at every step, and a rollout warps its own output every step."""
    reveal_paint: bool = False
    """Where the flow samples from outside the last frame (what a turn or a step reveals at the
    edges), the frame is paint alone: the mask is cut to 0 there (the warp would only repeat the
    edge's pixels into streaks), and ``mask_weight`` pulls toward the warp only inside. False in
    bundles saved before it existed."""
    overlay: bool = False
    """What the engine draws over the view (the weapon, the HUD: where the recording's depth is 0 in
    most frames, ``overlay_from_depth``) stays out of the scene: it does not move (zero flow) and
    no pixel of the scene is warped from it: where the flow samples the overlay, the frame is paint.
    Without it a step forward drags the weapon's pixels into the walls around it. The overlay is a
    buffer of the network, set by the trainer from the recording (ViZDoom recordings with depth)."""
    max_flow: float = 16.0
    """Flow is bounded to +-max_flow pixels (tanh) at 64 px wide, scaled with the width."""
    geometry_flow: bool = False
    """The flow is the camera's: the generator predicts the new frame's depth (a seventh output
    channel, taught by the engine's depth buffer) and the camera's move since the last frame
    (``pose_head``, taught by the recorded poses), and the flow is the one reprojects into the
    other (``reprojection_flow``: each new pixel lifted by its depth, moved by the pose, projected
    into the last camera), plus the network's own flow bounded to +-``residual_flow`` pixels (the
    walking bob; things that move on their own). A turn or a step then moves every surface as the
    engine's camera would, whatever the picture has become; only what that leaves is the network's.
    Needs a dataset with depth and a camera (ViZDoom recordings); ``action_flow`` is not used with it."""
    residual_flow: float = 2.0
    """With ``geometry_flow``: bound (pixels at 64 px wide) of the network's flow on top of the geometry."""
    camera_hfov: float = 90.0
    """With ``geometry_flow``: the recording's camera (``data.flow.Camera``), set from the dataset by the trainer."""
    camera_aspect: float = 4.0 / 3.0
    depth_unit: float = 100.0 / 14.0
    depth_offset: float = 0.0
    depth_weight: float = 1.0
    """With ``geometry_flow``: weight of the depth's L1 (depth buffer / 255) to the recorded frame's."""
    pose_weight: float = 1.0
    """With ``geometry_flow``: weight of the camera move's L1 (``POSE_SCALE`` units) to the recorded one."""
    groups: int = 8
    # -- training objective ----------------------------------------------------------------
    l1_weight: float = 1.0
    adv_weight: float = 0.1
    """Weight of the generator's hinge loss against the patch discriminator (0: L1 alone)."""
    flow_weight: float = 0.1
    """Weight of the flow's L1 to optical flow (OpenCV) on real pairs; 0 switches it off."""
    mask_weight: float = 0.0
    """Weight of the mask's pull towards 1 (mean of 1 - mask on every frame): warped pixels are
    the place itself moved, paint is new; a world that paints what it could move loses the
    place over a rollout. 0: no pull."""
    rollout_lowpass: int = 4
    """Frames the generator played from its own memory are pulled to the record only through
    their 1/rollout_lowpass-resolution average (layout, colour, motion): the record's fine
    detail is not what a rollout that drifted should regress to (that is blur); the critic
    asks for detail instead. 1: full-resolution L1 on every frame."""
    context_noise_max: float = 0.05
    """Memory frames are noised by N(0, s^2), s ~ U[0, max], before 8-bit quantisation (GameNGen)."""
    disc_channels: tuple[int, int, int] = (32, 64, 128)

    def levels(self) -> int:
        """Halvings of H and W: full, 1/2, 1/4, 1/8."""
        return 3

    @property
    def window(self) -> int:
        """Frames of memory a step needs."""
        return max(self.full_frames, self.memory_frames)

    def validate(self) -> "WarpNetConfig":
        if self.full_frames < 1 or self.memory_frames < self.full_frames:
            raise ConfigError(f"warp: need 1 <= full_frames <= memory_frames, got {self.full_frames}, {self.memory_frames}")
        if not 1 <= self.action_frames <= self.window + 1:
            raise ConfigError(f"warp.action_frames must be in [1, {self.window + 1}], got {self.action_frames}")
        if len(self.channels) != 4 or min(self.channels) < 1 or any(c % self.groups for c in self.channels):
            raise ConfigError(f"warp.channels must be 4 widths divisible by groups={self.groups}, got {list(self.channels)}")
        if self.flow_resolution < 1:
            raise ConfigError(f"warp.flow_resolution must be >= 1, got {self.flow_resolution}")
        if self.rollout_lowpass < 1:
            raise ConfigError(f"warp.rollout_lowpass must be >= 1, got {self.rollout_lowpass}")
        for name in ("l1_weight", "adv_weight", "flow_weight", "mask_weight", "context_noise_max", "max_flow",
                     "residual_flow", "depth_weight", "pose_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"warp.{name} must be >= 0")
        return self


@dataclass
class WarpConfig(PixelWorldConfig):
    NAME: ClassVar[str] = "warp world"
    dynamics: WarpNetConfig = field(default_factory=WarpNetConfig)
    """A warp bundle's config.json holds ``PixelWorldConfig``'s fields, with this network."""


WARP_PRESETS: dict[str, WarpNetConfig] = {
    "tiny": WarpNetConfig(channels=(16, 32, 48, 64), cond_dim=64, memory_frames=8, disc_channels=(16, 32, 64)),
    "mini": WarpNetConfig(),
    "small": WarpNetConfig(channels=(32, 64, 128, 192), cond_dim=192, memory_frames=32),
    "base": WarpNetConfig(channels=(48, 96, 192, 256), cond_dim=256, memory_frames=32, disc_channels=(64, 128, 256)),
}


def warp_preset(name: str, spec: ActionSpec | None = None, resolution: tuple[int, int] = (64, 64)) -> WarpConfig:
    return pixel_preset(WarpConfig, WARP_PRESETS, name, spec, resolution)


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Frames in [-1, 1] rounded to the 256 levels a uint8 frame has (what play feeds back)."""
    return torch.round((x.clamp(-1.0, 1.0) + 1.0) * 127.5) / 127.5 - 1.0


def backward_warp(frame: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """frame (B, C, H, W), flow (B, 2, H, W) in pixels (x, y): out[p] = frame[p + flow[p]],
    bilinear (or "nearest": whole pixels, for a flow of whole pixels), edges clamped."""
    B, _, H, W = frame.shape
    ys = torch.linspace(-1.0, 1.0, H, device=frame.device, dtype=frame.dtype)
    xs = torch.linspace(-1.0, 1.0, W, device=frame.device, dtype=frame.dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")  # (H, W) each
    scale = torch.tensor([2.0 / max(W - 1, 1), 2.0 / max(H - 1, 1)], device=frame.device, dtype=frame.dtype)
    grid = torch.stack([gx, gy], -1)[None] + flow.permute(0, 2, 3, 1) * scale  # (B, H, W, 2)
    return F.grid_sample(frame, grid, mode=mode, padding_mode="border", align_corners=True)


POSE_SCALE = (32.0, 32.0, 32.0, 10.0)
"""A camera move (forward, left, up in map units, yaw in degrees, in the last camera's frame)
as the network predicts it: divided by these (a step of Doom running is some tens of units)."""


MAX_MOVE = 4.0
"""Bound of each of a predicted camera move's four numbers (tanh), in ``POSE_SCALE`` units."""


def camera_move(pose_new: torch.Tensor, pose_old: torch.Tensor) -> torch.Tensor:
    """Recorded poses (..., 4): x, y, z, angle in degrees (yaw counter-clockwise), and a fifth
    column, the eye's height over the feet, where both have it -> the move
    (..., 4) from the old camera to the new one in the old camera's frame (forward, left, up,
    yaw turned, wrapped to [-180, 180)), divided by ``POSE_SCALE``."""
    a0 = pose_old[..., 3] * (math.pi / 180.0)
    dx, dy = pose_new[..., 0] - pose_old[..., 0], pose_new[..., 1] - pose_old[..., 1]
    fwd = dx * torch.cos(a0) + dy * torch.sin(a0)
    left = -dx * torch.sin(a0) + dy * torch.cos(a0)
    yaw = torch.remainder(pose_new[..., 3] - pose_old[..., 3] + 180.0, 360.0) - 180.0
    up = pose_new[..., 2] - pose_old[..., 2]
    if pose_new.shape[-1] > 4 and pose_old.shape[-1] > 4:  # the eye's height over the feet: the view's bob
        up = up + pose_new[..., 4] - pose_old[..., 4]
    move = torch.stack([fwd, left, up, yaw], -1)
    return move / move.new_tensor(POSE_SCALE)


def reprojection_flow(depth: torch.Tensor, move: torch.Tensor, *, hfov_deg: float, aspect: float, depth_unit: float,
                      depth_offset: float = 0.0) -> torch.Tensor:
    """The backward flow (B, 2, H, W) pixels from the new frame's depth (B, 1, H, W) in depth-buffer
    units / 255 and the camera's move (B, 4) (``camera_move``'s units): each new pixel lifted by
    its depth, moved into the last camera and projected (``data.flow.reprojection_flow``'s geometry,
    in torch and differentiable). Depth under one buffer step (the weapon, drawn over the view)
    fades to zero flow, and so does a point behind the last camera."""
    B, _, H, W = depth.shape
    t = torch.tan(depth.new_tensor(math.radians(hfov_deg)) / 2.0)
    fx, fy = (W / 2.0) / t, (H / 2.0) * aspect / t
    cx, cy = (W - 1) / 2.0, (H - 1) / 2.0
    v = torch.arange(H, device=depth.device, dtype=depth.dtype)[:, None].expand(H, W)
    u = torch.arange(W, device=depth.device, dtype=depth.dtype)[None, :].expand(H, W)
    d = depth[:, 0] * 255.0  # (B, H, W) buffer units
    Z = d * depth_unit + depth_offset  # distance along the view (``data.flow.Camera.distance``)
    X, Y = (u - cx) / fx * Z, -(v - cy) / fy * Z  # right, up
    m = move * move.new_tensor(POSE_SCALE)
    tf, tl, tz = (m[:, i, None, None] for i in range(3))
    a = (m[:, 3] * (math.pi / 180.0))[:, None, None]
    ca, sa = torch.cos(a), torch.sin(a)
    dx = tf + Z * ca + X * sa  # the point in the last camera's frame: forward, left, up
    dy = tl + Z * sa - X * ca
    dz = tz + Y
    ok = ((d - 0.5) * 2.0).clamp(0.0, 1.0) * (dx > 1e-2).to(depth.dtype)  # (B, H, W): 0 at depth 0, 1 from one step
    Z0 = torch.where(dx > 1e-2, dx, torch.ones_like(dx))
    flow = torch.stack([cx - fx * dy / Z0 - u, cy - fy * dz / Z0 - v], 1)  # (B, 2, H, W)
    return flow * ok[:, None]


# ---------------------------------------------------------------------------
# the memory: a shift register of the last frames and actions
# ---------------------------------------------------------------------------
@dataclass
class WarpCache(CacheRows):
    """The last ``window`` frames (oldest first, 8-bit-quantised), the actions that led to
    them, and the heads of the last ``step``. After ``reset`` an element holds nothing;
    the first frame appended fills every slot (a world that stood still before it)."""

    frames: torch.Tensor  # (B, M, 3, H, W)
    actions: torch.Tensor  # (B, M, A) normalised
    valid: torch.Tensor  # (B, M) bool
    reward: torch.Tensor  # (B,) the last step's heads, handed back by append
    termination: torch.Tensor  # (B,)
    frames_seen: int = 0

    FORGET: ClassVar[tuple[str, ...]] = ("valid", "frames", "actions", "reward", "termination")

    def step_inputs(self) -> tuple[torch.Tensor, ...]:
        """The cache's part of ``WarpNet.step_with_cache_tensors``'s inputs."""
        return (self.frames, self.actions)

    def push(self, action: torch.Tensor, level: torch.Tensor | None = None, memory_frames: int = 0, *, latent: torch.Tensor) -> None:
        """Shift in one frame (B, 3, H, W), quantised, with the action (B, A) that led to it.
        (The signature is ``DynamicsCache.push``'s, so a backend can push without knowing the model.)"""
        empty = ~self.valid.any(dim=1)  # (B,)
        shift_in(self.frames, quantize(latent), empty)
        shift_in(self.actions, action, empty)
        shift_in(self.valid, torch.ones_like(empty), torch.zeros_like(empty))  # only the slot really appended
        self.frames_seen += 1


# ---------------------------------------------------------------------------
# the generator
# ---------------------------------------------------------------------------
class FiLMBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, twice, with the condition scaling and shifting the second
    norm (zero-initialised, so it starts as a plain residual block)."""

    def __init__(self, channels: int, cond_dim: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.film = nn.Linear(cond_dim, 2 * channels)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C, h, w)
        scale, shift = self.film(c)[:, :, None, None].chunk(2, dim=1)  # (B, C, 1, 1) each
        h = self.norm2(h) * (1.0 + scale) + shift
        return x + self.conv2(F.silu(h))


class WarpNet(nn.Module):
    """The generator G(memory, actions, noise) -> (frame, flow, mask, reward, termination)."""

    one_step = True
    """Sessions play it with one call per frame (``ONE_STEP_PRESET``)."""

    def __init__(self, config: WarpNetConfig, *, resolution: tuple[int, int], action_size: int):
        super().__init__()
        self.config = config
        self.latent_size = tuple(resolution)
        self.latent_channels = 3
        self.action_size = action_size
        c0, c1, c2, c3 = config.channels
        cfg, g = config, config.groups
        self.pos_embed = nn.Parameter(torch.zeros(0), requires_grad=False)  # a device anchor (sessions read its .device)
        self.action_mlp = nn.Sequential(nn.Linear(cfg.action_frames * action_size, cfg.cond_dim), nn.SiLU(), nn.Linear(cfg.cond_dim, cfg.cond_dim))
        self.stem = nn.Conv2d(3 * cfg.full_frames, c0, 3, padding=1)
        self.down1 = nn.Conv2d(c0, c1, 3, stride=2, padding=1)
        self.block1 = FiLMBlock(c1, cfg.cond_dim, g)
        self.down2 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.memory_in = nn.Conv2d(c2 + 3 * cfg.memory_frames + cfg.noise_channels, c2, 1)
        self.block2 = FiLMBlock(c2, cfg.cond_dim, g)
        self.down3 = nn.Conv2d(c2, c3, 3, stride=2, padding=1)
        self.mid = nn.ModuleList([FiLMBlock(c3, cfg.cond_dim, g) for _ in range(2)])
        self.up2 = nn.Conv2d(c3, c2, 3, padding=1)
        self.block2u = FiLMBlock(c2, cfg.cond_dim, g)
        self.up1 = nn.Conv2d(c2, c1, 3, padding=1)
        self.block1u = FiLMBlock(c1, cfg.cond_dim, g)
        self.up0 = nn.Conv2d(c1, c0, 3, padding=1)
        self.out = nn.Conv2d(c0, 7 if cfg.geometry_flow else 6, 3, padding=1)  # flow (2), mask (1), paint (3)[, depth (1)]
        nn.init.zeros_(self.out.weight)
        with torch.no_grad():
            self.out.bias.zero_()
            self.out.bias[2] = 3.0  # the mask starts near 1: the untrained world is copy-last, not grey
        self.heads = nn.Sequential(nn.Linear(c3 + cfg.cond_dim, cfg.cond_dim), nn.SiLU(), nn.Linear(cfg.cond_dim, 2))
        if cfg.geometry_flow:  # the camera's move (POSE_SCALE units): what the actions and the memory say
            self.pose_head = nn.Sequential(nn.Linear(c3 + cfg.cond_dim, cfg.cond_dim), nn.SiLU(), nn.Linear(cfg.cond_dim, 4))
            nn.init.zeros_(self.pose_head[-1].weight)  # no move: the untrained world is still copy-last
            nn.init.zeros_(self.pose_head[-1].bias)
        if cfg.action_flow:  # (k*A + 1, 2, H/4, W/4): flow per unit of each action, and a constant
            H, W = self.latent_size
            self.register_buffer("action_flow", torch.zeros(cfg.action_frames * action_size + 1, 2, H // 4, W // 4))
        if cfg.overlay:  # (1, 1, H, W) in {0, 1}: drawn over the view (overlay_from_depth)
            self.register_buffer("overlay", torch.zeros(1, 1, *self.latent_size))

    @classmethod
    def from_world(cls, world: WarpConfig) -> "WarpNet":
        return cls(world.dynamics, resolution=world.resolution, action_size=world.action_size)

    def _memory_map(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (B, M, 3, H, W) -> (B, 3M, H/4, W/4): every memory frame at 1/4 resolution."""
        B, M, C, H, W = frames.shape
        return F.avg_pool2d(frames.reshape(B, M * C, H, W), 4)  # (B, 3M, H/4, W/4)

    def forward(self, frames: torch.Tensor, actions: torch.Tensor, noise: torch.Tensor) -> dict[str, torch.Tensor]:
        """frames (B, M, 3, H, W) in [-1, 1], oldest first, the last the one warped;
        actions (B, action_frames, A) normalised, the last the one leading to the new frame;
        noise (B, 3, H, W) standard normal (only its 1/4-resolution average is used)."""
        cfg = self.config
        B, M, _, H, W = frames.shape
        n = cfg.full_frames
        c = self.action_mlp(actions.reshape(B, -1))  # (B, cond)
        x = F.silu(self.stem(frames[:, M - n :].reshape(B, 3 * n, H, W)))  # (B, c0, H, W)
        e1 = self.block1(F.silu(self.down1(x)), c)  # (B, c1, H/2, W/2)
        z = F.avg_pool2d(noise[:, : cfg.noise_channels], 4) * 4.0  # (B, k, H/4, W/4), unit variance again
        h = F.silu(self.down2(e1))  # (B, c2, H/4, W/4)
        h = self.memory_in(torch.cat([h, self._memory_map(frames[:, M - cfg.memory_frames :]), z], 1))  # (B, c2, H/4, W/4)
        e2 = self.block2(h, c)
        h = F.silu(self.down3(e2))  # (B, c3, H/8, W/8)
        for block in self.mid:
            h = block(h, c)
        pooled = torch.cat([h.mean(dim=(2, 3)), c], 1)  # (B, c3 + cond)
        heads = self.heads(pooled)  # (B, 2)
        h = self.block2u(self.up2(F.interpolate(h, scale_factor=2.0, mode="nearest")) + e2, c)  # (B, c2, H/4, W/4)
        h = self.block1u(self.up1(F.interpolate(h, scale_factor=2.0, mode="nearest")) + e1, c)  # (B, c1, H/2, W/2)
        h = F.silu(self.up0(F.interpolate(h, scale_factor=2.0, mode="nearest")) + x)  # (B, c0, H, W)
        out = self.out(h)  # (B, 6 or 7, H, W)
        bound = cfg.residual_flow if cfg.geometry_flow else cfg.max_flow
        flow = torch.tanh(out[:, :2] / bound) * bound * (W / 64.0)  # (B, 2, H, W) pixels
        if cfg.flow_resolution > 1:
            flow = F.interpolate(F.avg_pool2d(flow, cfg.flow_resolution), size=(H, W), mode="bilinear", align_corners=False)
        geometry = {}
        if cfg.geometry_flow:
            depth = torch.sigmoid(out[:, 6:7])  # (B, 1, H, W)
            move = torch.tanh(self.pose_head(pooled) / MAX_MOVE) * MAX_MOVE  # (B, 4)
            # the geometry learns from the record's depth and poses alone: the frame's loss, through
            # a projection that divides by depth, would tear it apart (the residual flow is the frame's)
            flow = flow + reprojection_flow(depth.detach(), move.detach(), hfov_deg=cfg.camera_hfov, aspect=cfg.camera_aspect,
                                            depth_unit=cfg.depth_unit, depth_offset=cfg.depth_offset)
            geometry = {"depth": depth, "move": move}
        elif cfg.action_flow:
            flow = flow + self.ego_flow(actions)
        mask = torch.sigmoid(out[:, 2:3])  # (B, 1, H, W)
        inside = torch.ones_like(mask)
        if cfg.overlay:  # the overlay stays put, and the scene is never warped from it
            over = self.overlay.to(flow.dtype)
            flow = flow * (1.0 - over)
            from_overlay = backward_warp(over.expand(B, 1, H, W), flow, mode="nearest")  # (B, 1, H, W)
            inside = 1.0 - from_overlay * (1.0 - over)
            mask = mask * inside
        if cfg.reveal_paint:  # a sample from outside the frame has nothing to warp: paint it
            outside = self._inside(flow).to(mask.dtype)
            inside = inside * outside
            mask = mask * outside
        paint = torch.tanh(out[:, 3:6])  # (B, 3, H, W)
        if cfg.integer_warp:
            u = 0.5 * (1.0 + torch.erf(noise[:, :1, :1, :1] / math.sqrt(2.0)))  # (B, 1, 1, 1) ~ U[0, 1): the normal's CDF
            warped = backward_warp(frames[:, -1], torch.floor(flow + u), mode="nearest")
            if torch.is_grad_enabled():  # values of the whole-pixel warp, gradients of the bilinear one
                soft = backward_warp(frames[:, -1], flow)
                warped = soft + (warped - soft).detach()
        else:
            warped = backward_warp(frames[:, -1], flow)
        frame = mask * warped + (1.0 - mask) * paint  # (B, 3, H, W)
        return {"frame": frame, "flow": flow, "mask": mask, "paint": paint, "warped": warped, "inside": inside,
                "reward": heads[:, 0], "termination": heads[:, 1], **geometry}

    @staticmethod
    def _inside(flow: torch.Tensor) -> torch.Tensor:
        """flow (B, 2, H, W) -> (B, 1, H, W) bool: the pixels whose source p + flow[p] lies in the frame."""
        H, W = flow.shape[-2:]
        x = torch.arange(W, device=flow.device, dtype=flow.dtype)[None, None, :] + flow[:, 0]  # (B, H, W)
        y = torch.arange(H, device=flow.device, dtype=flow.dtype)[None, :, None] + flow[:, 1]
        return ((x > -0.5) & (x < W - 0.5) & (y > -0.5) & (y < H - 0.5))[:, None]

    def ego_flow(self, actions: torch.Tensor) -> torch.Tensor:
        """actions (B, action_frames, A) -> (B, 2, H, W) pixels: the flow the actions alone explain."""
        B = actions.shape[0]
        x = torch.cat([actions.reshape(B, -1), actions.new_ones(B, 1)], 1)  # (B, k*A + 1)
        low = torch.einsum("bi,ichw->bchw", x, self.action_flow.to(x.dtype))  # (B, 2, H/4, W/4)
        return F.interpolate(low, size=self.latent_size, mode="bilinear", align_corners=False)

    # -- the session's interface (as FrameStackUNet's) -------------------------------------
    def new_cache(self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> WarpCache:
        (H, W), M = self.latent_size, self.config.window
        device = device if device is not None else self.pos_embed.device
        return WarpCache(
            frames=torch.zeros(batch_size, M, 3, H, W, device=device, dtype=dtype),
            actions=torch.zeros(batch_size, M, self.action_size, device=device, dtype=dtype),
            valid=torch.zeros(batch_size, M, dtype=torch.bool, device=device),
            reward=torch.zeros(batch_size, device=device),
            termination=torch.zeros(batch_size, device=device),
        )

    def step_with_cache_tensors(
        self, latent: torch.Tensor, noise_level: torch.Tensor, action: torch.Tensor,
        frames: torch.Tensor, actions: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        """The pure step: (velocity (B, 3, H, W) = latent - frame, so one Euler step from
        t = 1 lands on the frame; reward (B,); termination logit (B,))."""
        k = self.config.action_frames
        acts = torch.cat([actions[:, actions.shape[1] - (k - 1) :], action[:, None].to(actions.dtype)], 1) if k > 1 else action[:, None]
        out = self(frames.to(latent.dtype), acts.to(latent.dtype), latent)
        return latent - out["frame"], out["reward"], out["termination"]

    def step(self, latent: torch.Tensor, noise_level: torch.Tensor | float, action: torch.Tensor, cache: WarpCache) -> DynamicsOutput:
        """One call: the new frame led to by ``action`` (B, A), as a velocity from the noise
        ``latent`` (B, 3, H, W). The cache is read; only its record of the heads changes."""
        out, _ = run_cached_step(self, latent, noise_level, action, cache)
        cache.reward, cache.termination = out.reward.detach().float(), out.termination.detach().float()
        return out

    def append(self, latent: torch.Tensor, noise_level: torch.Tensor | float, action: torch.Tensor, cache: WarpCache) -> DynamicsOutput:
        """The frame (B, 3, H, W), led to by ``action`` (B, A), joins memory, 8-bit-quantised.
        No network call: the heads are the last ``step``'s (zeros for real frames observed)."""
        check_batch(cache, latent)
        out = DynamicsOutput(torch.zeros_like(latent), cache.reward.clone(), cache.termination.clone())
        with torch.no_grad():
            cache.push(action, latent=latent)
        cache.reward.zero_()
        cache.termination.zero_()
        return out


# ---------------------------------------------------------------------------
# the critic: a patch discriminator conditioned on the last frame and the action
# ---------------------------------------------------------------------------
class PatchDiscriminator(nn.Module):
    """D(last frame, candidate next frame, action) -> (B, H/8, W/8) logits. It sees the pair,
    so it judges the motion as well as the texture; the action enters by projection
    (Miyato & Koyama 2018): a patch is real for this action or not."""

    def __init__(self, config: WarpNetConfig, action_size: int):
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        d0, d1, d2 = config.disc_channels
        k = config.action_frames
        self.convs = nn.ModuleList([
            sn(nn.Conv2d(6, d0, 4, stride=2, padding=1)),
            sn(nn.Conv2d(d0, d1, 4, stride=2, padding=1)),
            sn(nn.Conv2d(d1, d2, 4, stride=2, padding=1)),
            sn(nn.Conv2d(d2, d2, 3, padding=1)),
        ])
        self.to_logit = sn(nn.Conv2d(d2, 1, 1))
        self.embed = sn(nn.Linear(k * action_size, d2))

    def forward(self, last: torch.Tensor, candidate: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        h = torch.cat([last, candidate], 1)  # (B, 6, H, W)
        for conv in self.convs:
            h = F.leaky_relu(conv(h), 0.2)  # ... -> (B, d2, H/8, W/8)
        proj = (h * self.embed(actions.reshape(actions.shape[0], -1))[:, :, None, None]).sum(1)  # (B, H/8, W/8)
        return self.to_logit(h)[:, 0] + proj


@torch.no_grad()
def fit_action_flow(net: WarpNet, actions: torch.Tensor, flows: torch.Tensor, ridge: float = 1e-3) -> float:
    """Set ``net.action_flow`` to the least-squares map from actions (N, action_frames, A) to
    optical flows (N, 2, H, W) pooled 4x (ridge-regularised); returns the fraction of the
    flows' variance it explains."""
    N = actions.shape[0]
    x = torch.cat([actions.reshape(N, -1), actions.new_ones(N, 1)], 1).double()  # (N, k*A + 1)
    y = F.avg_pool2d(flows.double(), 4)  # (N, 2, H/4, W/4)
    coef = torch.linalg.solve(x.T @ x + ridge * N * torch.eye(x.shape[1], dtype=x.dtype), x.T @ y.reshape(N, -1))
    net.action_flow.copy_(coef.reshape(net.action_flow.shape).float())
    residual = y.reshape(N, -1) - x @ coef
    return float(1.0 - residual.var() / y.var().clamp(min=1e-12))


def overlay_from_depth(depths: list, share: float = 0.5) -> torch.Tensor:
    """(1, 1, H, W) float in {0, 1}: the pixels whose recorded depth (each (T, H, W) uint8 of
    ``depths``) is 0 in more than ``share`` of the frames: what the engine draws over the view."""
    zero = sum(float(len(d)) * (d == 0).mean(0) for d in depths) / max(sum(len(d) for d in depths), 1)
    return torch.from_numpy((zero > share).astype("float32"))[None, None]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------
# the objective: L1 + flow + hinge GAN, on the world's own short rollouts
# ---------------------------------------------------------------------------
@dataclass
class WarpBatch:
    """Training windows: ``window`` frames of memory, then ``unroll`` frames to predict.

    frames (B, window + unroll, 3, H, W) in [-1, 1]; actions (B, window + unroll, A)
    normalised, ``actions[:, i]`` the one that LED TO ``frames[:, i]``; rewards and
    terminated (B, unroll): of each transition into a predicted frame; flow
    (B, 2, H, W) or None: optical flow from the first predicted frame back to the
    last memory frame (pixels, the warp's convention), the flow's auxiliary target;
    memory (B, window, 3, H, W) or None and played (B,) bool or None: where ``played``
    is true, the sample goes on from a memory the generator made itself on an
    earlier step (a rollout stream, train/warp.py) instead of ``frames[:, :window]``,
    so its first frame is a played frame too (low-pass L1, no flow target).

    ``depth`` (B, unroll, 1, H, W) in depth-buffer units / 255 and ``move`` (B, unroll, 4)
    (``camera_move``) or None: each predicted frame's recorded depth and the camera's move
    into it, ``geometry_flow``'s targets (recordings with depth only).

    ``ends`` (a WarpBatch or None): episodes' last steps, the ones that ended them (a
    death): ``window`` frames of memory and no frame after (the recording stops there),
    actions (n, window + 1, A), rewards and terminated (n, 1). Only the heads learn from
    them: without them the termination head never sees a death, because every other
    window needs the frame its step leads to."""

    frames: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    terminated: torch.Tensor
    flow: torch.Tensor | None = None
    memory: torch.Tensor | None = None
    played: torch.Tensor | None = None
    depth: torch.Tensor | None = None
    move: torch.Tensor | None = None
    ends: "WarpBatch | None" = None

    def to(self, device: torch.device | str) -> "WarpBatch":
        return WarpBatch(**{f.name: None if (x := getattr(self, f.name)) is None else x.to(device) for f in dataclasses.fields(self)})


def _acts(actions: torch.Tensor, end: int, k: int) -> torch.Tensor:
    return actions[:, end - k + 1 : end + 1]  # (B, k, A): the k actions up to and including index ``end``


def warp_generator_loss(
    net: WarpNet, disc: PatchDiscriminator | None, batch: WarpBatch, *, unroll: int, adv_weight: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, list[tuple[torch.Tensor, ...]], dict[str, float], torch.Tensor]:
    """The generator plays ``unroll`` frames from its memory (the recorded frames, or for
    ``batch.played`` samples a memory it played itself before), each fed back 8-bit-quantised
    (detached: it learns to continue from its own frames, not to change them), and is scored
    on each: L1 to the recorded frame (through the low-pass on played frames), the
    discriminator's hinge, and on a first frame from recorded memory the flow's L1 to optical
    flow; the heads on the first frame. Returns (loss, fakes for the critic, logs, the memory
    it ends with (B, window, 3, H, W): where a stream goes on from)."""
    cfg = net.config
    M, k = cfg.window, cfg.action_frames
    frames, actions = batch.frames, batch.actions
    B = frames.shape[0]
    played = batch.played if batch.played is not None else torch.zeros(B, dtype=torch.bool, device=frames.device)
    with torch.no_grad():
        memory = frames[:, :M]
        if cfg.context_noise_max > 0:  # GameNGen's augmentation, then what play feeds back: 8 bits
            sigma = torch.rand(B, 1, 1, 1, 1, generator=generator, device=frames.device) * cfg.context_noise_max
            memory = memory + sigma * torch.randn(memory.shape, generator=generator, device=frames.device)
        memory = quantize(memory)
        if batch.memory is not None:  # streams go on from their own frames (already what play feeds back)
            memory = torch.where(played[:, None, None, None, None], batch.memory.to(memory.dtype), memory)
    total = frames.new_zeros(())
    logs: dict[str, float] = {}
    fakes: list[tuple[torch.Tensor, ...]] = []
    p = cfg.rollout_lowpass
    for u in range(unroll):
        acts = _acts(actions, M + u, k)  # (B, k, A)
        noise = torch.randn(frames[:, 0].shape, generator=generator, device=frames.device)
        out = net(memory, acts, noise)
        target = frames[:, M + u]
        l1 = (out["frame"] - target).abs().mean(dim=(1, 2, 3))  # (B,)
        if p > 1:
            low = (F.avg_pool2d(out["frame"], p) - F.avg_pool2d(target, p)).abs().mean(dim=(1, 2, 3))
            l1 = low if u > 0 else torch.where(played, low, l1)
        l1 = l1.mean()
        loss = cfg.l1_weight * l1
        logs[f"l1_{u}"] = float(l1.detach())
        if cfg.mask_weight > 0:  # toward the warp wherever there is something to warp
            inside = out["inside"]
            loss = loss + cfg.mask_weight * ((1.0 - out["mask"]) * inside).sum() / inside.sum().clamp(min=1.0)
        if u == 0:
            reward, termination = out["reward"], out["termination"]
            rewards, terminated = batch.rewards[:, 0], batch.terminated[:, 0]
            if batch.ends is not None:  # the steps that ended episodes: heads only, there is no frame after them
                e = batch.ends
                ends_out = net(quantize(e.frames[:, :M]), _acts(e.actions, M, k), torch.randn(e.frames[:, 0].shape, generator=generator, device=frames.device))
                reward, termination = torch.cat([reward, ends_out["reward"]]), torch.cat([termination, ends_out["termination"]])
                rewards, terminated = torch.cat([rewards, e.rewards[:, 0]]), torch.cat([terminated, e.terminated[:, 0]])
            loss = loss + head_loss(reward, termination, rewards, terminated, logs)
            fresh = (~played).to(frames.dtype)  # (B,)
            if batch.flow is not None and cfg.flow_weight > 0:  # (logged on every process alike: 0 when all are played)
                fl = ((out["flow"] - batch.flow).abs().mean(dim=(1, 2, 3)) * fresh).sum() / fresh.sum().clamp(min=1.0)
                loss = loss + cfg.flow_weight * fl
                logs["flow_l1"] = float(fl.detach())
        if cfg.geometry_flow and batch.depth is not None:  # every frame: the record's depth and camera move into it
            dl, ml = (out["depth"] - batch.depth[:, u]).abs().mean(), (out["move"] - batch.move[:, u]).abs().mean()
            loss = loss + cfg.depth_weight * dl + cfg.pose_weight * ml
            logs[f"depth_l1_{u}"], logs[f"move_l1_{u}"] = float(dl.detach()), float(ml.detach())
        if disc is not None and adv_weight > 0:
            g_adv = -disc(memory[:, -1], out["frame"], acts).mean()
            loss = loss + adv_weight * g_adv
            logs[f"g_adv_{u}"] = float(g_adv.detach())
        fakes.append((memory[:, -1], out["frame"].detach(), acts, frames[:, M + u - 1], target))
        total = total + loss / unroll
        memory = torch.cat([memory[:, 1:], quantize(out["frame"].detach())[:, None]], 1)
    logs["mask_mean"] = float(out["mask"].detach().mean())
    logs["played_fraction"] = float(played.float().mean())
    return total, fakes, logs, memory


def warp_discriminator_loss(disc: PatchDiscriminator, fakes: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, dict[str, float]]:
    """Hinge loss: recorded pairs (real last frame, real next) are real; the generator's
    (the last frame it saw, its frame) are fake, under the same actions."""
    loss_real = loss_fake = 0.0
    for last, fake, acts, real_last, real in fakes:
        loss_real = loss_real + F.relu(1.0 - disc(real_last, real, acts)).mean()
        loss_fake = loss_fake + F.relu(1.0 + disc(last, fake, acts)).mean()
    n = len(fakes)
    loss = (loss_real + loss_fake) / n
    return loss, {"d_real": float(loss_real.detach()) / n, "d_fake": float(loss_fake.detach()) / n}


def head_loss(reward: torch.Tensor, termination: torch.Tensor, reward_target: torch.Tensor,
              terminated: torch.Tensor, logs: dict[str, float]) -> torch.Tensor:
    """Reward regression (MSE) + termination BCE on logits, the world's heads."""
    r = F.mse_loss(reward.float(), reward_target.float())
    t = F.binary_cross_entropy_with_logits(termination.float(), terminated.float())
    logs["reward_mse"], logs["termination_bce"] = float(r.detach()), float(t.detach())
    return r + t

"""The frame autoencoder: frames (B, 3, H, W) in [-1, 1] <-> latents (B, C, H/8, W/8).

The decoder runs for every played frame, so it is small and plain in the way of
Ollin Boer Bohan's tiny autoencoders: 3x3 convolutions, ReLU, nearest upsampling,
no normalisation, no attention, and widths that shrink as the resolution grows
(each stage costs about the same). The encoder runs once per dataset frame and
may be wider and deeper.

No pretrained perceptual network is available here, so ``autoencoder_loss`` uses
only weight-free terms: pixel L1, L1 between image gradients (edges) and L1
between FFT magnitudes (texture energy at every frequency). Gaussian noise on the
latents before decoding plus a small penalty on their size is a KL with a fixed
posterior variance: latents keep a sane scale and the decoder learns to forgive
the small errors the dynamics will make.

The dynamics wants zero-mean, unit-variance latents. After training, call
``calibrate_latents`` on encoded data: it stores a per-channel shift and scale as
buffers (saved with the weights), and ``normalize_latents`` /
``denormalize_latents`` move between the autoencoder's latents and the
dynamics' latents.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from neuralworld.model.config import AutoencoderConfig


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)


class ResBlock(nn.Module):
    """x + conv(relu(conv(relu(x)))): the whole vocabulary of the tiny decoders."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = conv3x3(channels, channels)
        self.conv2 = conv3x3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class Encoder(nn.Module):
    """(B, 3, H, W) -> (B, C, H/8, W/8): a stem, then three stride-2 stages."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        w = config.encoder_channels
        layers: list[nn.Module] = [conv3x3(3, w[0])]
        layers += [ResBlock(w[0]) for _ in range(config.encoder_blocks)]
        for c_in, c_out in zip(w[:-1], w[1:]):
            layers += [nn.ReLU(), conv3x3(c_in, c_out, stride=2)]
            layers += [ResBlock(c_out) for _ in range(config.encoder_blocks)]
        layers += [nn.ReLU(), conv3x3(w[-1], config.latent_channels)]
        self.net = nn.Sequential(*layers)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.net(frames)


class Decoder(nn.Module):
    """(B, C, H/8, W/8) -> (B, 3, H, W): three nearest-upsample stages, narrowing as they grow.

    Residual blocks sit at 1/8, 1/4 and 1/2 resolution; the full-resolution stage is
    one upsampling conv and the output conv, since a block there would cost as much
    as a whole lower stage for detail the lower stages already shape."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        w = config.decoder_channels
        layers: list[nn.Module] = [conv3x3(config.latent_channels, w[0])]
        layers += [ResBlock(w[0]) for _ in range(config.decoder_blocks)]
        for stage, (c_in, c_out) in enumerate(zip(w[:-1], w[1:]), start=1):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), conv3x3(c_in, c_out)]
            if stage < len(w) - 1:
                layers += [ResBlock(c_out) for _ in range(config.decoder_blocks)]
        layers += [nn.ReLU(), conv3x3(w[-1], 3)]
        self.net = nn.Sequential(*layers)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        # a soft clamp to [-3, 3] (TAESD does the same): wild latents from a long
        # rollout give saturated colours, never inf or NaN
        return self.net(3.0 * torch.tanh(latents / 3.0))


class Autoencoder(nn.Module):
    """Encoder + decoder + the per-channel latent normalisation the dynamics uses."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        # dynamics latent = (autoencoder latent - shift) / scale; set by calibrate_latents
        self.register_buffer("latent_shift", torch.zeros(config.latent_channels))
        self.register_buffer("latent_scale", torch.ones(config.latent_channels))

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (B, 3, H, W) in [-1, 1] -> latents (B, C, H/8, W/8), not normalised."""
        return self.encoder(frames)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (B, C, H/8, W/8) -> frames (B, 3, H, W), roughly [-1, 1] (not clamped)."""
        return self.decoder(latents)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(frames))

    # -- the dynamics' view of the latents ---------------------------------------
    def normalize_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Autoencoder latents (..., C, h, w) -> zero-mean unit-variance latents for the dynamics."""
        shift, scale = self.latent_shift[:, None, None], self.latent_scale[:, None, None]
        return (latents - shift) / scale

    def denormalize_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Dynamics latents (..., C, h, w) -> autoencoder latents, ready for ``decode``."""
        shift, scale = self.latent_shift[:, None, None], self.latent_scale[:, None, None]
        return latents * scale + shift

    @torch.no_grad()
    def calibrate_latents(self, latents: torch.Tensor) -> None:
        """Store the per-channel mean and std of ``latents`` (N, C, h, w), encoded from
        a representative sample of the dataset (a few thousand frames is plenty)."""
        per_channel = latents.transpose(0, 1).reshape(latents.shape[1], -1).float()  # (C, N*h*w)
        self.latent_shift.copy_(per_channel.mean(1))
        self.latent_scale.copy_(per_channel.std(1).clamp_min(1e-4))


def autoencoder_loss(model: Autoencoder, frames: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Reconstruction loss for a batch of frames (B, 3, H, W) in [-1, 1].

    Weights come from ``model.config``. Returns (loss, metrics); metrics are floats
    (l1, gradient, frequency, latent_rms, psnr of this batch's reconstruction).
    """
    cfg = model.config
    latents = model.encode(frames)  # (B, C, h, w)
    noisy = latents + cfg.latent_noise * torch.randn_like(latents)
    recon = model.decode(noisy)  # (B, 3, H, W)

    l1 = (recon - frames).abs().mean()
    gradient = _gradient_l1(recon, frames)
    frequency = _frequency_l1(recon, frames)
    latent_sq = latents.float().pow(2).mean()
    loss = (
        cfg.l1_weight * l1
        + cfg.gradient_weight * gradient
        + cfg.frequency_weight * frequency
        + cfg.latent_weight * latent_sq
    )
    with torch.no_grad():
        mse = (recon.clamp(-1, 1) - frames).float().pow(2).mean()
        psnr = 10.0 * torch.log10(4.0 / mse.clamp_min(1e-10))  # peak-to-peak is 2 in [-1, 1]
    metrics = {
        "loss": float(loss.detach()),
        "l1": float(l1.detach()),
        "gradient": float(gradient.detach()),
        "frequency": float(frequency.detach()),
        "latent_rms": float(latent_sq.detach().sqrt()),
        "psnr": float(psnr),
    }
    return loss, metrics


def _gradient_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L1 between horizontal and vertical finite differences: penalises blurred edges."""
    dx = lambda x: x[..., :, 1:] - x[..., :, :-1]  # noqa: E731
    dy = lambda x: x[..., 1:, :] - x[..., :-1, :]  # noqa: E731
    return (dx(a) - dx(b)).abs().mean() + (dy(a) - dy(b)).abs().mean()


def _frequency_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L1 between FFT magnitudes: a blurry reconstruction lacks high-frequency energy,
    which pixel losses forgive; this term does not. Phase is left to the pixel terms."""
    fa = torch.fft.rfft2(a.float(), norm="ortho").abs()  # (B, 3, H, W//2+1)
    fb = torch.fft.rfft2(b.float(), norm="ortho").abs()
    return (fa - fb).abs().mean()


# ---------------------------------------------------------------------------
# uint8 frames <-> model tensors
# ---------------------------------------------------------------------------
def frames_to_tensor(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 frames (..., H, W, 3) as stored -> float32 (..., 3, H, W) in [-1, 1]."""
    x = torch.as_tensor(np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames)
    return x.movedim(-1, -3).float().div(127.5).sub(1.0)


def tensor_to_frames(x: torch.Tensor) -> np.ndarray:
    """float (..., 3, H, W) in [-1, 1] -> uint8 (..., H, W, 3), clamped and rounded."""
    x = x.detach().float().clamp(-1.0, 1.0).add(1.0).mul(127.5).round()
    return x.movedim(-3, -1).to(torch.uint8).cpu().numpy()

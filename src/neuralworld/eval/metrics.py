"""Image fidelity metrics on uint8 frames: PSNR, SSIM and sharpness, per frame.

Both take two arrays of frames (..., H, W, 3) uint8 and return one value per
frame (...,) as float64, so callers average however they need (over pairs, per
horizon). No downloaded networks: SSIM is the formula of Wang et al. 2004
("Image Quality Assessment: From Error Visibility to Structural Similarity"),
with their 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, L = 255,
evaluated where the window fits inside the image ("valid", as their reference
code does), per RGB channel, then averaged. Sharpness is the variance of the
Laplacian of the grey frame (blur lowers it; the issue-15 bars compare it to real frames').
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

PSNR_CAP = 100.0
"""PSNR of identical frames. A finite cap keeps means finite; one 8-bit step of
difference in one pixel already scores < 100 dB at the resolutions we use."""

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
_SSIM_CHUNK = 256  # frames per torch call: bounds memory for long rollouts at 128x128


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"frames to compare must have the same shape, got {a.shape} and {b.shape}")
    if a.ndim < 3 or a.shape[-1] != 3:
        raise ValueError(f"frames must be (..., H, W, 3), got {a.shape}")
    return a, b


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Peak signal-to-noise ratio in dB of each frame pair: (..., H, W, 3) x2 -> (...,).
    Identical frames score ``PSNR_CAP``."""
    a, b = _check_pair(a, b)
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2, axis=(-3, -2, -1))  # (...,)
    with np.errstate(divide="ignore"):
        out = 10.0 * np.log10(255.0**2 / mse)
    return np.minimum(out, PSNR_CAP)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """A normalised 1-d Gaussian (size,); SSIM filters with it along rows, then columns."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Structural similarity of each frame pair: (..., H, W, 3) x2 -> (...,), in [-1, 1]."""
    a, b = _check_pair(a, b)
    lead, (H, W) = a.shape[:-3], a.shape[-3:-1]
    if min(H, W) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs frames of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {H}x{W}")
    flat_a = a.reshape(-1, H, W, 3)
    flat_b = b.reshape(-1, H, W, 3)
    out = [_ssim_chunk(flat_a[i : i + _SSIM_CHUNK], flat_b[i : i + _SSIM_CHUNK]) for i in range(0, len(flat_a), _SSIM_CHUNK)]
    return (np.concatenate(out) if out else np.zeros(0)).reshape(lead)


def _ssim_chunk(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    c1, c2 = (0.01 * 255.0) ** 2, (0.03 * 255.0) ** 2
    x = torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).double()  # (N, 3, H, W)
    y = torch.from_numpy(np.ascontiguousarray(b)).permute(0, 3, 1, 2).double()
    g = gaussian_window()
    row = g.view(1, 1, 1, -1).expand(3, 1, 1, -1)  # depthwise: each channel filtered alone
    col = g.view(1, 1, -1, 1).expand(3, 1, -1, 1)

    def blur(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(z, row, groups=3), col, groups=3)  # (N, 3, H-10, W-10)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(1, 2, 3)).numpy()  # (N,)


def sharpness(frames: np.ndarray) -> np.ndarray:
    """Variance of the Laplacian of each grey frame: (..., H, W, 3) uint8 -> (...,) float32."""
    frames = np.asarray(frames)
    flat = frames.reshape(-1, *frames.shape[-3:])
    out = [cv2.Laplacian(cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY).astype(np.float32), cv2.CV_32F).var() for f in flat]
    return np.array(out, np.float32).reshape(frames.shape[:-3])

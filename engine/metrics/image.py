"""Per-frame PSNR and SSIM on uint8 RGB frames, and the copy-last-frame continuation baseline.

SSIM is Wang et al. (2004): an 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03,
L = 255, local statistics as Gaussian-weighted moments (not sample-normalised), the SSIM map
averaged over the "valid" region (no border padding), computed per RGB channel and averaged over
the channels. This equals ``skimage.metrics.structural_similarity(a, b, gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=-1)``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from engine.errors import ArdiffError

__all__ = ["copy_last_frame_baseline", "psnr", "ssim"]

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
DATA_RANGE = 255.0


def _frames(x, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != np.uint8:
        raise ArdiffError(f"{name} must be uint8 RGB frames, got dtype {x.dtype}")
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ArdiffError(f"{name} must be [T, H, W, 3] or [H, W, 3] uint8 RGB, got shape {x.shape}")
    return x


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = _frames(a, "a"), _frames(b, "b")
    if a.shape != b.shape:
        raise ArdiffError(f"frames to compare must have the same shape, got {a.shape} and {b.shape}")
    return a, b


def psnr(a, b) -> np.ndarray:
    """Per-frame PSNR in dB (``[T]`` float64; ``inf`` where the frames are identical)."""
    a, b = _pair(a, b)
    diff = a.astype(np.float64) - b.astype(np.float64)
    mse = (diff * diff).reshape(a.shape[0], -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(DATA_RANGE**2 / mse)


def mean_psnr_db(values: np.ndarray) -> float:
    """Mean of per-frame PSNRs with identical frames (inf) counted at 100 dB, so one perfect frame cannot make
    the mean infinite."""
    return float(np.mean(np.minimum(values, 100.0)))


def _gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r * r) / (2 * sigma * sigma))
    return g / g.sum()


def ssim(a, b) -> np.ndarray:
    """Per-frame SSIM (``[T]`` float64; 1.0 for identical frames), averaged over R, G, B."""
    a, b = _pair(a, b)
    t, h, w, c = a.shape
    if h < SSIM_WINDOW or w < SSIM_WINDOW:
        raise ArdiffError(f"SSIM needs frames of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {h}x{w}")
    x = torch.from_numpy(a).to(torch.float64).permute(0, 3, 1, 2).reshape(t * c, 1, h, w)
    y = torch.from_numpy(b).to(torch.float64).permute(0, 3, 1, 2).reshape(t * c, 1, h, w)
    g = _gaussian_window()
    gh, gw = g.view(1, 1, -1, 1), g.view(1, 1, 1, -1)

    def blur(z: torch.Tensor) -> torch.Tensor:  # separable Gaussian, "valid" region only
        return F.conv2d(F.conv2d(z, gh), gw)

    mu_x, mu_y = blur(x), blur(y)
    xx, yy, xy = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2, blur(x * y) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * DATA_RANGE) ** 2, (SSIM_K2 * DATA_RANGE) ** 2
    smap = ((2 * mu_x * mu_y + c1) * (2 * xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (xx + yy + c2))
    return smap.mean(dim=(1, 2, 3)).reshape(t, c).mean(dim=1).numpy()


def copy_last_frame_baseline(context, num_new: int) -> np.ndarray:
    """The trivial continuation: the last context frame repeated ``num_new`` times: ``[num_new, H, W, 3]``."""
    context = np.asarray(context)
    if context.ndim != 4 or context.shape[0] < 1 or context.shape[-1] != 3:
        raise ArdiffError(f"context must be [N >= 1, H, W, 3] RGB frames, got shape {context.shape}")
    if int(num_new) != num_new or num_new < 0:
        raise ArdiffError(f"num_new must be a non-negative integer, got {num_new!r}")
    return np.repeat(context[-1:], int(num_new), axis=0)


def score_frames(real: np.ndarray, fake: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PSNR (dB) and SSIM per frame of uint8 [T, H, W, 3] videos (SSIM NaN where frames are below its window)."""
    p = psnr(real, fake)
    if min(real.shape[1:3]) < SSIM_WINDOW:
        return p, np.full(len(real), np.nan)
    return p, ssim(real, fake)



def seam_energy(frames: np.ndarray, region: int) -> float:
    """Mean absolute gradient across the borders of `region`-pixel squares divided by the mean inside them,
    over uint8 [T, H, W, 3] frames: how visible a grid of independently decoded regions is."""
    f = _frames(frames, "frames").astype(np.float32)
    if region < 2 or f.shape[1] <= region or f.shape[2] <= region:
        raise ArdiffError(f"seam energy needs regions of >= 2 pixels inside the frame, got {region} for "
                          f"{f.shape[2]}x{f.shape[1]}")
    gx = np.abs(np.diff(f, axis=2)).mean(-1)  # [T, H, W - 1]: between columns x and x + 1
    gy = np.abs(np.diff(f, axis=1)).mean(-1)
    across_x = (np.arange(gx.shape[2]) % region) == region - 1
    across_y = (np.arange(gy.shape[1]) % region) == region - 1
    across = np.concatenate([gx[:, :, across_x].ravel(), gy[:, across_y, :].ravel()]).mean()
    inside = np.concatenate([gx[:, :, ~across_x].ravel(), gy[:, ~across_y, :].ravel()]).mean()
    return float(across / max(inside, 1e-6))


def seam_ratio(real: np.ndarray, fake: np.ndarray, region: int) -> float:
    """`fake`'s seam energy relative to `real`'s (clips stacked along time): 1.0 = region borders no more
    visible than in the real frames; above it, the grid shows."""
    return seam_energy(fake, region) / max(seam_energy(real, region), 1e-6)

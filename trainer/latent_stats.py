"""A VAE's latents measured on training data, and what the trainer sets from them: the latent scale (end of
a VAE stage, or a diffusion run on a VAE whose run never measured it), per-channel normalisation
(`latent_norm = channel`) and the PCA start of a local-latent VAE (`pca_init_frames`).

Every measurement reads a fixed, seeded sample of the data, so a resumed or repeated run measures the same.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from engine.models.arvae import ARVAE
from trainer.config import ConfigError, TrainConfig


@torch.no_grad()
def latent_moments(vae: ARVAE, dataset, num_items: int, batch_size: int, device: torch.device,
                   seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and variance [D] (float64) of the VAE's latents before any scale, over a fixed
    sample of the data."""
    n = min(num_items, len(dataset))
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed + 7))[:n].tolist()
    was_training = vae.training
    vae.eval()
    D = vae.cfg.latent_dim
    total = total_sq = torch.zeros(D, dtype=torch.float64)
    count = 0
    for i in range(0, n, batch_size):
        x = torch.stack([dataset[j] for j in order[i:i + batch_size]]).to(device)
        z = (vae.encode(x) / vae.latent_scale).double().reshape(-1, D).cpu()
        total, total_sq, count = total + z.sum(0), total_sq + (z * z).sum(0), count + len(z)
    vae.train(was_training)
    mean = total / count
    return mean, (total_sq / count - mean * mean).clamp_min(1e-12)


def measure_latent_scale(vae: ARVAE, dataset, num_items: int, batch_size: int, device: torch.device,
                         seed: int) -> float:
    """1 / std of the VAE's latents (before any scale, all channels together) over a fixed sample of the data."""
    mean, var = latent_moments(vae, dataset, num_items, batch_size, device, seed)
    overall = mean.mean()
    return 1.0 / math.sqrt(max(float((var + mean * mean).mean() - overall * overall), 1e-12))


def normalize_latent_channels(vae: ARVAE, dataset, cfg: TrainConfig, device: torch.device) -> list[float]:
    """Give each latent channel unit std (folded into the VAE's layers; latent_scale becomes 1); returns the
    per-channel factors, which packaging applies to the same VAE."""
    _, var = latent_moments(vae, dataset, cfg.latent_scale_samples, cfg.batch_size, device, cfg.seed)
    scale = var.rsqrt()
    vae.scale_latent_channels(scale)
    vae.latent_scale.fill_(1.0)
    return scale.tolist()


@torch.no_grad()
def init_vae_from_pca(vae: ARVAE, dataset, num_frames: int, seed: int, info: Callable[[str], None]) -> None:
    """Initialise a local-latent VAE as the local PCA code of a fixed random sample of training frames."""
    if not vae.cfg.local_latents:
        raise ConfigError("pca_init_frames needs a preset with local latents (vae.local_latents)")
    n = min(num_frames, len(dataset))
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed + 11))[:n].tolist()
    frames = torch.cat([dataset[j] for j in order]).to(vae.region_in.weight.device)  # items are [1, 3, H, W]
    vae.init_from_local_pca(frames)
    info(f"VAE region paths initialised from the local PCA of {n} training frames")

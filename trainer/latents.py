"""Latent pre-extraction for the diffusion stage (`latent_cache = true`).

The diffusion stage otherwise encodes every batch with the frozen VAE (about an eighth of a `default`
step on a CPU). With the cache, every dataset item is encoded once (eval mode, float32, batch by batch) into
`RUN_DIR/latents.safetensors`, keyed by the VAE's weights digest, its latent scale and the data spec, and the
loop trains on the stored latents. The cache bakes in the dataset's epoch-0 augmentation (flips), so later
epochs see the same flips: prefer it for big datasets or slow VAEs, not for tiny ones that need variety.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset

from engine.atomic import atomic_path


class LatentDataset(Dataset):
    """Items are the stored latents [F, L, D] of the source dataset's items, same indices."""

    def __init__(self, latents: torch.Tensor) -> None:
        self.latents = latents

    def __len__(self) -> int:
        return self.latents.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.latents[index]


@torch.no_grad()
def extract_latents(vae, dataset: Dataset, batch_size: int, device: torch.device, num_workers: int = 0,
                    autocast=None) -> torch.Tensor:
    vae.eval()
    out = []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    for x in loader:
        with autocast() if autocast is not None else torch.autocast(device.type, enabled=False):
            out.append(vae.encode(x.to(device)).float().cpu())
    return torch.cat(out)


def cached_latents(path: Path, key: dict, vae, dataset: Dataset, batch_size: int, device: torch.device,
                   num_workers: int = 0, autocast=None, log=print) -> torch.Tensor:
    """The latents of every item of `dataset`, from `path` if it holds them for the same `key`."""
    key_text = json.dumps(key, sort_keys=True)
    if path.is_file():
        try:
            with safe_open(str(path), framework="pt") as f:
                if (f.metadata() or {}).get("key") == key_text:
                    latents = f.get_tensor("latents")
                    if latents.shape[0] == len(dataset):
                        log(f"latents: {latents.shape[0]} items from {path}")
                        return latents
        except Exception:  # noqa: BLE001 - a damaged cache is rebuilt
            pass
    latents = extract_latents(vae, dataset, batch_size, device, num_workers, autocast)
    with atomic_path(path) as tmp:
        save_file({"latents": latents.contiguous()}, str(tmp), metadata={"key": key_text})
    log(f"latents: encoded {latents.shape[0]} items once into {path} ({latents.numel() * 4 / 2**20:.1f} MiB)")
    return latents

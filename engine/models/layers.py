"""Building blocks shared by the AR-VAE and the DiT.

`Mlp`, `PatchEmbed` and `build_sincos2d_pos_embed` are the timm layers of the same names, written out here
with the same parameter names and the same arithmetic (tests/test_layers.py checks them against timm). Importing
`timm.layers` imports torchvision (its norm layers use `torchvision.ops`), which took about a second of every
start-up and, on a CPU-only torch, needed a workaround for the CUDA-only torchvision wheel; ardiff used only
these three pieces of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn


class Mlp(nn.Module):
    """fc1 -> act -> fc2, as timm's `Mlp` (state-dict keys fc1.*, fc2.*; its dropouts and norm are identities
    at the settings ardiff uses, so they are kept as modules only to keep the module tree the same)."""

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer: Callable[[], nn.Module] = nn.GELU) -> None:
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.drop1 = nn.Dropout(0.0)
        self.norm = nn.Identity()
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop2 = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))


class PatchEmbed(nn.Module):
    """Images [B, C, H, W] -> patch tokens [B, (H/p)(W/p), D] row-major, as timm's `PatchEmbed` (proj.*)."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 768) -> None:
        super().__init__()
        self.img_size = (img_size, img_size)
        self.patch_size = (patch_size, patch_size)
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(f"PatchEmbed expects {self.img_size[0]}x{self.img_size[1]} images, "
                             f"got {x.shape[-2]}x{x.shape[-1]}")
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


def build_sincos2d_pos_embed(feat_shape: list[int], dim: int = 64, temperature: float = 10000.0
                             ) -> torch.Tensor:
    """2-D sin-cos position table [H*W, dim] for a row-major grid: per axis, sin then cos of position times
    dim/4 frequencies (timm's `build_sincos2d_pos_embed` with its defaults, float32)."""
    if dim % 4:
        raise ValueError(f"the sin-cos position table needs dim divisible by 4, got {dim}")
    pos_dim = dim // 4
    # on the CPU even inside `with torch.device("meta")` (models are built there to be loaded): arithmetic on
    # meta tensors runs torch's Python reference ops, whose first use imports torch._dynamo (seconds)
    cpu = torch.device("cpu")
    steps = torch.arange(0, pos_dim, 1, dtype=torch.int64, device=cpu).to(torch.float32)
    bands = 1.0 / (temperature ** (steps / pos_dim))
    axes = [torch.arange(s, dtype=torch.int64, device=cpu).to(torch.float32) for s in feat_shape]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij")).flatten(1).transpose(0, 1)
    pos2 = grid.unsqueeze(-1) * bands.unsqueeze(0)
    return torch.stack([torch.sin(pos2), torch.cos(pos2)], dim=1).flatten(1)


def approx_gelu() -> nn.Module:
    return nn.GELU(approximate="tanh")


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation; shift/scale broadcast over the token axis."""
    return torch.addcmul(shift, x, 1 + scale)


class TimestepEmbedder(nn.Module):
    """Scalar diffusion timesteps -> vectors (sinusoidal features through an MLP), as in DiT."""

    def __init__(self, hidden: int, frequency_size: int = 256) -> None:
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(nn.Linear(frequency_size, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    @staticmethod
    def sinusoidal(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[..., None] * freqs
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = self.sinusoidal(t, self.frequency_size)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class labels -> vectors; index `num_classes` is the null class used for classifier-free guidance."""

    def __init__(self, num_classes: int, hidden: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, hidden)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.table(labels)


def rotary_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for rotary embedding at (possibly fractional) positions: [..., head_dim // 2]."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim))
    angles = positions.float()[..., None] * inv
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[2i], x[2i+1]) of the last axis; cos/sin broadcast against x[..., ::2]."""
    x1, x2 = x[..., 0::2].float(), x[..., 1::2].float()
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.flatten(-2).to(x.dtype)

"""Building blocks shared by the AR-VAE and the DiT.

timm supplies the standard layers (Mlp, PatchEmbed). timm imports torchvision, and the only torchvision
built for torch 2.13 on the package registry is a CUDA build whose import fails on a CPU-only torch
("operator torchvision::nms does not exist"): its meta registrations expect the compiled ops. ardiff uses
none of torchvision's ops, so `import_timm_layers` declares the two op schemas those registrations look up
and imports again. This is the one place that knows about it.
"""

from __future__ import annotations

import math
import sys
from types import ModuleType

import torch
from torch import nn

_TORCHVISION_STUB_OPS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_stub_library = None


def import_timm_layers() -> ModuleType:
    """Import `timm.layers`, working around a torchvision wheel whose compiled ops do not load."""
    global _stub_library
    try:
        import torchvision  # noqa: F401
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        _stub_library = torch.library.Library("torchvision", "FRAGMENT")
        for schema in _TORCHVISION_STUB_OPS:
            _stub_library.define(schema)
        import torchvision  # noqa: F401
    import timm.layers

    return timm.layers


_timm_layers = import_timm_layers()
Mlp = _timm_layers.Mlp
PatchEmbed = _timm_layers.PatchEmbed
build_sincos2d_pos_embed = _timm_layers.build_sincos2d_pos_embed


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

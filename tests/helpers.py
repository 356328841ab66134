"""Shared test helpers."""

import torch
from torch import nn


def randomize_(module: nn.Module, std: float = 0.2, seed: int = 0) -> nn.Module:
    """Give every parameter random values, so zero-initialised paths (adaLN-Zero, gates) are live."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module

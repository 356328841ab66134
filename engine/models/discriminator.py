"""PatchGAN discriminator and hinge losses for the AR-VAE's adversarial stage (paper Sec. 3.1, [7])."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


class PatchDiscriminator(nn.Module):
    """pix2pix-style PatchGAN: `num_layers` stride-2 4x4 convs, then a 3x3 conv to one logit per patch.

    Spectral norm on every conv keeps the discriminator Lipschitz-bounded, which stabilises hinge-GAN
    training without normalisation layers (BatchNorm would couple the samples of a small batch).
    An H x W frame gives a [1, H / 2^num_layers, W / 2^num_layers] logit map: 2x2 at 16 px, 8x8 at 64 px.
    """

    def __init__(
        self, in_channels: int = 3, channels: int = 64, num_layers: int = 3, max_channels: int = 512
    ) -> None:
        super().__init__()
        self.num_layers = num_layers
        layers: list[nn.Module] = []
        c_in = in_channels
        for i in range(num_layers):
            c_out = min(channels * 2**i, max_channels)
            layers += [spectral_norm(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
            c_in = c_out
        layers.append(spectral_norm(nn.Conv2d(c_in, 1, 3, stride=1, padding=1)))
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, C, H, W] (or [B, N, C, H, W]: frames judged one by one) -> logits [B(, N), 1, h, w]."""
        if images.dim() == 5:
            B, N = images.shape[:2]
            logits = self.net(images.flatten(0, 1))
            return logits.view(B, N, *logits.shape[1:])
        if images.dim() != 4:
            raise ValueError(
                f"discriminator expects [B, C, H, W] or [B, N, C, H, W], got shape {tuple(images.shape)}"
            )
        return self.net(images)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss 0.5 * (mean relu(1 - real) + mean relu(1 + fake)) (taming-transformers).

    Zero once real logits are >= 1 and fake logits <= -1; 1 when both are 0.
    """
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator (decoder) hinge loss: -mean(fake logits)."""
    return -fake_logits.mean()

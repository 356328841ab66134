"""Training losses of the AR-VAE: L1, the region-border gradient term and the adaptive hinge GAN (the DiT's
objective is engine.objective, which "adapt to this clip" shares)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def adaptive_gan_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                        distributed: bool = False) -> torch.Tensor:
    """VQGAN's rule (Esser et al. 2021, taming-transformers `calculate_adaptive_weight`):
    ||grad rec_loss|| / (||grad g_loss|| + 1e-4) at the decoder's last layer, clamped to [0, 1e4], detached.

    Under DDP the two gradients are averaged over ranks first, so the weight equals the one a single
    process computes on the global batch.
    """
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    if distributed:
        both = torch.stack([rec_grad.float(), g_grad.float()])
        dist.all_reduce(both)
        both /= dist.get_world_size()
        rec_grad, g_grad = both[0], both[1]
    weight = rec_grad.float().norm() / (g_grad.float().norm() + 1e-4)
    return weight.clamp(0.0, 1e4).detach()


def border_gradient_loss(rec: torch.Tensor, real: torch.Tensor, region: int) -> torch.Tensor:
    """Mean |d rec - d real| over the pixel steps that cross a border of the `region`-pixel squares, in x and y,
    on [..., H, W] frames: the loss counterpart of `ardiff eval`'s seam measure (engine.metrics.image.seam_energy),
    zero when the decoder's frames step across region borders as the real ones do."""
    def across(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gx = x[..., :, region::region] - x[..., :, region - 1:-1:region]
        gy = x[..., region::region, :] - x[..., region - 1:-1:region, :]
        return gx, gy

    (rx, ry), (tx, ty) = across(rec.float()), across(real.float())
    return torch.cat([(rx - tx).abs().flatten(), (ry - ty).abs().flatten()]).mean()

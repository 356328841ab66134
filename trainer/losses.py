"""Training losses: the AR-VAE's L1 + adaptive hinge GAN, and the DiT's per-frame masked MSE."""

from __future__ import annotations

import torch
import torch.distributed as dist

from engine.diffusion import DiffusionSchedule


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


def diffusion_loss(
    dit: torch.nn.Module, schedule: DiffusionSchedule, z0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
    prediction: str = "x0",
) -> tuple[torch.Tensor, torch.Tensor]:
    """MSE on x0 (or eps; "x0-prev" adds the previous-frame term to the output first): mean over tokens and
    channels per frame, then over the noisy frames of each clip (frames at t = 0, the clean prefix, are
    conditioning and excluded), then over clips.

    Returns (loss, per-frame losses [B, F] with clean frames zeroed).
    """
    z_t = schedule.q_sample(z0, t, noise)
    out = dit(z_t, t).float()
    if prediction == "x0-prev":
        out = out + schedule.previous_frame_term(z_t, t).float()
    target = noise if prediction == "eps" else z0
    per_frame = (out - target.float()).pow(2).mean(dim=(2, 3))  # [B, F]
    noisy = (t > 0).to(per_frame.dtype)
    per_clip = (per_frame * noisy).sum(1) / noisy.sum(1).clamp_min(1.0)
    return per_clip.mean(), per_frame * noisy

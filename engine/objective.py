"""The DiT's training objective, one implementation for `ardiff-train` and "adapt to this clip": the
per-frame masked MSE on timestep compositions (engine.schedulers.fopp), with the clean frames shown to the
network at a small random noise level when the model asks for context noise.

Context noise (Diffusion Forcing's stabilisation level, Self-Forcing's context noise, SkyReels-V2's
`addnoise_condition`): a DiT that only ever saw perfect context frames in training meets its own imperfect
frames when sampling and drifts. Trained with its context at levels 0..c and sampled with it at c, it learns
not to copy the context's errors; the sampler shows clean frames at c (engine.sampling).
"""

from __future__ import annotations

import torch

from engine.diffusion import DiffusionSchedule, chain_x0


def context_levels(t: torch.Tensor, context_noise: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """The levels the network sees: `t` [B, F] with every clean frame (t = 0) raised to a level drawn
    uniformly from 0..context_noise (the same as `t` when context_noise is 0)."""
    if context_noise <= 0:
        return t
    drawn = torch.randint(0, context_noise + 1, tuple(t.shape), generator=generator).to(t.device, t.dtype)
    return torch.where(t == 0, drawn, t)


def diffusion_loss(
    dit: torch.nn.Module, schedule: DiffusionSchedule, z0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
    prediction: str = "x0", seen: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MSE on x0 (or eps; "x0-prev" and "x0-delta" add the previous frame first): mean over tokens and
    channels per frame, then over the noisy frames of each clip (frames at t = 0, the clean prefix, are
    conditioning and excluded), then over clips.

    `seen` [B, F] are the levels the network is shown (`context_levels`: clean frames possibly noised);
    None shows `t` itself. Returns (loss, per-frame losses [B, F] with clean frames zeroed).
    """
    seen = t if seen is None else seen
    z_t = schedule.q_sample(z0, seen, noise)
    out = dit(z_t, seen).float()
    if prediction == "x0-prev":
        out = out + schedule.previous_frame_term(z_t, seen).float()
    elif prediction == "x0-delta":
        out = chain_x0(out, z0.float(), t == 0)
    target = noise if prediction == "eps" else z0
    per_frame = (out - target.float()).pow(2).mean(dim=(2, 3))  # [B, F]
    noisy = (t > 0).to(per_frame.dtype)
    per_clip = (per_frame * noisy).sum(1) / noisy.sum(1).clamp_min(1.0)
    return per_clip.mean(), per_frame * noisy

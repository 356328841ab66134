"""Exponential moving average of a model's weights (what gets packaged and sampled from).

Default rule (DiT, Peebles & Xie 2023, and the AR-Diffusion recipe "EMA over all parameters"): after every
optimizer step, ema = d * ema + (1 - d) * param with a constant d (0.9999), the EMA starting as a copy of
the initial weights. `warmup=True` switches to LDM's LitEma rule, d_t = min(d, (1 + t) / (10 + t)) with
t the number of updates so far, which tracks the model closely early on (useful for short runs).
Buffers (e.g. the VAE's latent_scale) are copied, not averaged.
"""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = False) -> None:
        self.decay, self.warmup = decay, warmup
        self.num_updates = 0
        self.params = {n: p.detach().float().clone() for n, p in model.named_parameters()}
        self.buffers = {n: b.detach().clone() for n, b in model.named_buffers()}

    def current_decay(self) -> float:
        if self.warmup:
            return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        names, ema, new = [], [], []
        for n, p in model.named_parameters():
            names.append(n)
            ema.append(self.params[n])
            new.append(p.detach().float())
        torch._foreach_lerp_(ema, new, 1.0 - d)  # ema + (1 - d) * (p - ema) = d * ema + (1 - d) * p
        for n, b in model.named_buffers():
            self.buffers[n].copy_(b)
        self.num_updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Model-shaped state dict of the averaged weights (loadable with model.load_state_dict)."""
        return {**self.params, **self.buffers}

    def load_state_dict(self, state: dict[str, torch.Tensor], num_updates: int) -> None:
        for n in self.params:
            self.params[n].copy_(state[n])
        for n in self.buffers:
            self.buffers[n].copy_(state[n])
        self.num_updates = num_updates

    def copy_to(self, model: nn.Module) -> nn.Module:
        model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in self.state_dict().items()})
        return model

    def to(self, device) -> "EMA":
        self.params = {n: t.to(device) for n, t in self.params.items()}
        self.buffers = {n: t.to(device) for n, t in self.buffers.items()}
        return self

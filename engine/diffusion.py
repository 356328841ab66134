"""Noise schedule, forward process and the per-frame DDIM step (x0 parameterisation).

Timesteps t are integers in 0..T with t = 0 meaning clean; every frame of a video has its own t.
The forward process is z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps (the paper's Eq. 3 drops the square
root on the noise term; that is a typo).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def _check_int(name: str, value: int, low: int, high: int | None = None) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low or (
        high is not None and value > high
    ):
        allowed = f">= {low}" if high is None else f"in {low}..{high}"
        raise ValueError(f"{name} must be an integer {allowed}, got {value!r}")


class DiffusionSchedule:
    """Betas and cumulative alphas for T steps, with abar_0 = 1 standing for the clean signal.

    kind="linear" is LDM's schedule, betas = linspace(sqrt(b0), sqrt(b1), T)**2. The paper's Table 6
    gives beta_end = 0.002, which leaves abar_T near 0.45 (sampling would never start from noise); 0.02 is the default.
    """

    def __init__(self, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02, kind: str = "linear"):
        _check_int("T", T, 1)
        if not 0 < beta_start <= beta_end < 1:
            raise ValueError(f"betas must satisfy 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
        if kind == "linear":
            betas = np.linspace(beta_start**0.5, beta_end**0.5, T, dtype=np.float64) ** 2
        elif kind == "cosine":  # Nichol & Dhariwal; beta_start/beta_end unused
            steps = np.arange(T + 1, dtype=np.float64) / T
            abar = np.cos((steps + 0.008) / 1.008 * np.pi / 2) ** 2
            betas = np.clip(1 - abar[1:] / abar[:-1], 0, 0.999)
        else:
            raise ValueError(f"kind must be 'linear' or 'cosine', got {kind!r}")
        self.T = T
        self.kind = kind
        self.beta_start, self.beta_end = beta_start, beta_end
        self.betas = torch.from_numpy(betas)
        # Index t holds abar_t; index 0 is the clean signal (abar_0 = 1).
        self.alphas_cumprod = torch.from_numpy(np.concatenate([[1.0], np.cumprod(1.0 - betas)]))

    def _coefficients(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """sqrt(abar_t), sqrt(1 - abar_t) gathered per frame and shaped to broadcast against `like`."""
        if t.dtype.is_floating_point:
            raise ValueError(f"timesteps must be integers, got dtype {t.dtype}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) > self.T):
            raise ValueError(f"timesteps must lie in 0..{self.T}, got {int(t.min())}..{int(t.max())}")
        abar = self.alphas_cumprod.to(like.device)[t.long()]
        shape = tuple(t.shape) + (1,) * (like.dim() - t.dim())
        return abar.sqrt().reshape(shape).to(like.dtype), (1.0 - abar).sqrt().reshape(shape).to(like.dtype)

    def q_sample(self, z0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Noise clean latents to per-frame levels: z0 [B, F, ...], t [B, F] ints in 0..T. t = 0 returns z0."""
        if tuple(z0.shape[: t.dim()]) != tuple(t.shape):
            raise ValueError(f"timesteps of shape {tuple(t.shape)} do not match latents {tuple(z0.shape)}")
        a, b = self._coefficients(t, z0)
        mask = (t == 0).reshape(a.shape)
        return torch.where(mask, z0, a * z0 + b * noise)

    def previous_frame_term(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What "x0-prev" prediction adds to the network's output: for frame i, sqrt(abar) x frame i - 1 as the
        network sees it (frame i - 1 itself when clean); zero for frame 0. z_t [B, F, ...], t [B, F].

        The network then predicts a correction to "the previous frame again", so a DiT whose output layer starts
        at zero starts as the repeat-the-last-frame baseline instead of the data mean.
        """
        a, _ = self._coefficients(t[:, :-1], z_t[:, :-1])
        return torch.cat([torch.zeros_like(z_t[:, :1]), a * z_t[:, :-1]], 1)

    def x0_from_eps(self, z_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The clean signal implied by z_t and a noise estimate (for eps-prediction models)."""
        a, b = self._coefficients(t, z_t)
        return (z_t - b * eps) / a

    def ddim_grid(self, num_steps: int) -> "DDIMGrid":
        """The n-step DDIM grid over this schedule."""
        return DDIMGrid(self, num_steps)


def chain_x0(out: torch.Tensor, latents: torch.Tensor, clean: torch.Tensor, before: torch.Tensor | None = None
             ) -> torch.Tensor:
    """x0 of an "x0-delta" DiT: a clean frame is its own latents; a noisy frame is the network's output plus the
    x0 of the frame before (so a DiT whose output is zero repeats the last clean frame, and each frame is a
    change from the estimate of the one before, never from its noise).

    out, latents: [B, F, ...]; clean: [B, F] or [F] bools; `before` [B, ...] is the x0 of the frame before
    frame 0 (None: zeros, nothing came before).
    """
    clean = clean.expand(out.shape[:2]) if clean.dim() == 1 else clean
    previous = torch.zeros_like(out[:, 0]) if before is None else before.to(out.dtype)
    frames = []
    for i in range(out.shape[1]):  # a window is at most a few dozen frames: a loop reads plainer than a scan
        keep = clean[:, i].reshape(-1, *(1,) * (out.dim() - 2))
        previous = torch.where(keep, latents[:, i].to(out.dtype), out[:, i] + previous)
        frames.append(previous)
    return torch.stack(frames, 1)


def _levels(k: torch.Tensor | np.ndarray) -> np.ndarray:
    """DDIM levels as an int64 numpy array (from a tensor on any device, or an array)."""
    return (k.cpu().numpy() if isinstance(k, torch.Tensor) else np.asarray(k)).astype(np.int64, copy=False)


@dataclass
class DDIMGrid:
    """DDIM step indices k in 0..n mapped to timesteps: k = 0 is clean, k = n is pure noise (t = T)."""

    schedule: DiffusionSchedule
    num_steps: int

    def __post_init__(self) -> None:
        _check_int("num_steps", self.num_steps, 1, self.schedule.T)
        n, T = self.num_steps, self.schedule.T
        self.timesteps = torch.from_numpy(np.round(np.arange(n + 1) * T / n).astype(np.int64))
        abar = self.schedule.alphas_cumprod[self.timesteps].numpy()
        # per level k, float64, in numpy: a row's coefficients are a handful of numbers, and numpy makes them
        # in microseconds where torch's per-operator overhead would cost more than the step on the latents
        self._signal, self._noise = np.sqrt(abar), np.sqrt(1.0 - abar)
        self._memo: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}

    def t_of(self, k: torch.Tensor) -> torch.Tensor:
        """Timesteps for step indices (any shape)."""
        return self.timesteps.to(k.device)[k.long()]

    def ddim_step(
        self,
        z_t: torch.Tensor,
        x0_hat: torch.Tensor,
        k_from: torch.Tensor | np.ndarray,
        k_to: torch.Tensor | np.ndarray,
        clip_x0: float | None = None,
    ) -> torch.Tensor:
        """Deterministic DDIM (eta = 0) per frame from level k_from to k_to, given an x0 prediction.

        z_t, x0_hat: [B, F, ...]; k_from, k_to: [B, F] or [F], tensors or numpy arrays. Frames whose level
        does not change are returned unchanged bit for bit, so one call serves a row where only some move.
        """
        keep, take, same = self._step_coefficients(_levels(k_from), _levels(k_to), z_t)
        if clip_x0 is not None:
            x0_hat = x0_hat.clamp(-clip_x0, clip_x0)
        z_prev = torch.addcmul(keep * z_t, take, x0_hat.to(z_t.dtype))
        # where, not arithmetic, for unchanged frames: bit for bit even if the network's x0 there is not finite
        return z_prev if same is None else torch.where(same, z_t, z_prev)

    def _step_coefficients(self, k_from: np.ndarray, k_to: np.ndarray, like: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(keep, take, unchanged-frame mask or None) with z_prev = keep * z_t + take * x0, shaped to broadcast
        over `like`. Memoised per levels: a sampler meets the same few rows of levels again and again, and
        making the tensors costs more than the step itself on one frame's latents."""
        key = (k_from.tobytes(), k_to.tobytes(), k_from.shape, k_to.shape, like.shape[:2], like.dim(), like.dtype,
               like.device)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        k_from, k_to = (np.broadcast_to(k, tuple(like.shape[:2])) for k in (k_from, k_to))
        if (k_to > k_from).any():
            raise ValueError("a DDIM step cannot add noise: k_to must be <= k_from for every frame")
        # z_prev = a_to x0 + b_to eps with eps = (z_t - a_from x0) / b_from, i.e. keep * z_t + take * x0; the
        # per-frame coefficients come from [B, F] levels (float64), not from the latents.
        same = k_from == k_to
        keep = np.where(same, 1.0, self._noise[k_to] / np.maximum(self._noise[k_from], 1e-300))
        take = np.where(same, 0.0, self._signal[k_to] - keep * self._signal[k_from])
        shape = tuple(keep.shape) + (1,) * (like.dim() - 2)
        keep_t, take_t = torch.from_numpy(np.stack([keep, take])).to(like.device, like.dtype).reshape(2, *shape)
        mask = torch.from_numpy(same.reshape(shape)).to(like.device) if same.any() else None
        if len(self._memo) >= 4096:  # bounded: long runs at small s meet many distinct rows
            self._memo.clear()
        self._memo[key] = keep_t, take_t, mask
        return keep_t, take_t, mask

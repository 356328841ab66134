"""Adapt to this clip: fine-tune the DiT on the person's own clip before continuing it, and keep the result only
when it predicts the clip's held-out last frames better than the model as it came.

The clip's latents split in two: the frames before the last `held_out` train (random windows, timestep
compositions and the loss of `ardiff-train`: engine.schedulers.fopp, engine.objective); the last `held_out`
frames are never trained on. The check scores both DiTs on them with the same fixed draws (the frames before
them as clean context, shown as the sampler shows it), so "better" is a like-for-like comparison, not noise.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from engine.diffusion import DiffusionSchedule
from engine.errors import RunError
from engine.objective import context_levels, diffusion_loss
from engine.schedulers.fopp import make_training_scheduler

ADAPT_CLIP_FRAMES = 128  # frames from the end of a clip that adapting learns from (surfaces read this many)
MIN_TRAIN_FRAMES = 4  # fewer frames before the held-out ones leave nothing to learn motion from
MIN_HELD_OUT = 2


def read_adapt_clip(path, resolution: int, estimated_frames: int | None = None) -> np.ndarray:
    """What adapting learns from, read from a clip file: its last ADAPT_CLIP_FRAMES frames, fitted to the
    model's `resolution` while reading (every surface passes this as `Pipeline.run(..., adapt_clip=)`)."""
    from engine.video_io import read_tail

    return read_tail(path, ADAPT_CLIP_FRAMES, estimated_frames, fit=resolution)


@dataclass(frozen=True)
class AdaptRecipe:
    """How adapting trains: `ardiff-train`'s continuation fine-tune, sized for a minute or two on a CPU."""

    lr: float = 2e-4  # with 300 steps: kept on 2 of 5 held-out clips, never worse (lr 1e-4, batch 4, 150: 0 of 5)
    batch_size: int = 8
    clean_prefix_p: float = 0.75  # most windows conditioned on clean frames, as a continuation is
    grad_clip: float = 1.0
    check_draws: int = 16  # fixed (levels, noise) draws the held-out check averages over


@dataclass(frozen=True)
class Split:
    """Frames [0, train) are learnt from; frames [train, train + held_out) only judge the result."""

    train: int
    held_out: int


def split_clip(num_frames: int, window: int) -> Split:
    """Hold out the clip's last quarter (at least 2 frames, at most half the window); RunError when the clip
    is too short to both learn from and hold frames out."""
    held_out = min(window // 2, max(MIN_HELD_OUT, num_frames // 4))
    if num_frames - held_out < MIN_TRAIN_FRAMES:
        raise RunError("adapt_steps", f"adapting needs a clip of at least {MIN_TRAIN_FRAMES + MIN_HELD_OUT} frames "
                       f"({MIN_HELD_OUT} held out to check the result); this one has {num_frames}")
    return Split(num_frames - held_out, held_out)


@dataclass
class AdaptStep:
    step: int  # 1-based
    total: int
    loss: float
    elapsed: float


@dataclass
class Adaptation:
    """The outcome: the adapted DiT (float32, eval mode), the held-out scores before and after, and whether
    the run uses it: only when it predicts the held-out frames better by both measures, the denoising loss over
    fixed draws and the PSNR of a continuation of them (one alone can mislead: the loss can fall while the
    frames a person sees get worse)."""

    dit: torch.nn.Module
    steps: int
    before: float  # denoising loss on the held-out frames (lower is better)
    after: float
    split: Split
    psnr_before: float = float("nan")  # dB, the held-out frames continued and decoded (higher is better)
    psnr_after: float = float("nan")

    @property
    def kept(self) -> bool:
        return self.after < self.before and self.psnr_after > self.psnr_before

    @property
    def message(self) -> str:
        change = (f"held-out frames: PSNR {self.psnr_before:.2f} -> {self.psnr_after:.2f} dB, loss {self.before:.4f} "
                  f"-> {self.after:.4f}")
        where = f"{self.split.held_out} held-out frames after {self.split.train} learnt from, {self.steps} steps"
        if self.kept:
            return f"adapted to this clip: {change}; continuing with the adapted model ({where})"
        return f"adapting did not help this clip: {change}; continuing with the model as it came ({where})"


class ClipAdapter:
    """Fine-tunes a copy of `dit` on one clip's latents [1, N, L, D] and checks it on the held-out frames."""

    def __init__(self, dit: torch.nn.Module, schedule: DiffusionSchedule, latents: torch.Tensor, window: int,
                 prediction: str, context_noise: int, seed: int, recipe: AdaptRecipe = AdaptRecipe(),
                 autocast=None, frames: np.ndarray | None = None) -> None:
        self.split = split_clip(latents.shape[1], window)
        self.schedule, self.prediction, self.context_noise = schedule, prediction, context_noise
        self.latents = latents.detach().float()
        self.window, self.recipe, self.seed = window, recipe, seed
        self.autocast = autocast
        self.frames = frames  # the clip's frames as fitted for the model, for checks that need pixels
        self.source = dit
        self.dit = copy.deepcopy(dit).float().train().requires_grad_(True)
        self._check = self._check_batch()

    # ---- the held-out check ----------------------------------------------------------------------------

    def _check_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fixed draws over the last window of the clip: its frames before the held-out ones clean (shown at the
        context-noise level, as sampling shows them), the held-out ones at FoPP levels; (z0, t, seen, noise)."""
        split, draws = self.split, self.recipe.check_draws
        frames = min(self.window, split.train + split.held_out)
        z0 = self.latents[:, -frames:].expand(draws, -1, -1, -1)
        g = torch.Generator().manual_seed(self.seed + 1)
        tail = make_training_scheduler("fopp", split.held_out, self.schedule.T).sample(draws, generator=g)
        t = torch.cat([torch.zeros(draws, frames - split.held_out, dtype=tail.dtype), tail.clamp_min(1)], 1)
        seen = torch.where(t == 0, torch.full_like(t, self.context_noise), t)
        noise = torch.randn(z0.shape, generator=g)
        device = self.latents.device
        return z0, t.to(device), seen.to(device), noise.to(device)

    @torch.no_grad()
    def held_out_loss(self, dit: torch.nn.Module) -> float:
        """`dit`'s loss on the held-out frames under the fixed draws (lower: it predicts them better)."""
        was_training = dit.training
        dit.eval()
        z0, t, seen, noise = self._check
        with self._autocast():
            loss, _ = diffusion_loss(dit, self.schedule, z0, t, noise.to(z0.dtype), self.prediction, seen)
        dit.train(was_training)
        return float(loss)

    # ---- training --------------------------------------------------------------------------------------

    def train(self, steps: int, cancel: threading.Event | None = None) -> Iterator[AdaptStep]:
        """`steps` AdamW steps on random windows of the training frames; stops early when `cancel` is set."""
        if steps < 1:
            raise RunError("adapt_steps", f"adapt steps must be at least 1, got {steps}")
        r, split = self.recipe, self.split
        frames = min(self.window, split.train)
        compositions = make_training_scheduler("fopp", frames, self.schedule.T, clean_prefix_p=r.clean_prefix_p)
        g = torch.Generator().manual_seed(self.seed)
        params = [p for p in self.dit.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=r.lr, weight_decay=0.0)
        train_latents = self.latents[0, :split.train]
        start = time.perf_counter()
        for step in range(1, steps + 1):
            if cancel is not None and cancel.is_set():
                return
            first = torch.randint(0, split.train - frames + 1, (r.batch_size,), generator=g)
            z0 = torch.stack([train_latents[int(i): int(i) + frames] for i in first])
            t = compositions.sample(r.batch_size, generator=g).to(z0.device)
            noise = torch.randn(z0.shape, generator=g).to(z0.device)
            value = self._step(opt, params, z0, t, noise, context_levels(t, self.context_noise, g))
            if not math.isfinite(value):
                raise RunError("adapt_steps", f"adapting diverged at step {step} (loss {value}); the model as it "
                               f"came is used unchanged")
            yield AdaptStep(step, steps, value, time.perf_counter() - start)

    def _step(self, opt: torch.optim.Optimizer, params: list, z0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
              seen: torch.Tensor) -> float:
        # grad enabled here, not around the loop: the loop is a generator that callers may run under no_grad
        with torch.enable_grad(), self._autocast():
            loss, _ = diffusion_loss(self.dit, self.schedule, z0, t, noise, self.prediction, seen)
        opt.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss.backward()
        if self.recipe.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, self.recipe.grad_clip)
        opt.step()
        return float(loss)

    def finish(self, steps_done: int, before: float) -> Adaptation:
        """Score the adapted DiT's loss on the held-out frames; `before` is the source DiT's."""
        self.dit.eval().requires_grad_(False)
        return Adaptation(self.dit, steps_done, before, self.held_out_loss(self.dit), self.split)

    def _autocast(self):
        from contextlib import nullcontext

        return self.autocast() if self.autocast is not None else nullcontext()

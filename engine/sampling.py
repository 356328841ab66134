"""AR-Diffusion samplers: walk the AD scheduler's rows, one DiT call and one per-frame DDIM step per row.

`ReferenceSampler` recomputes the row's whole window every row: small and obviously right, the oracle.
`CachedSampler` computes only what changed: the frames in flight, plus each frame once when it turns clean
(its keys/values then go into the DiT's cache). Frames still at pure noise after the last active frame are
never computed (causal attention: nothing earlier can see them). When the window slides, the cache is
rebuilt for the new window, because a clean frame's keys in deeper layers depend on the frames before it
inside the window. Both give the same result for the same noise (tests hold them to 1e-4 in float32).

Options: classifier-free guidance (class-conditional DiTs, one batched call), an x0 clamp, history
guidance (`Sampler._guide_history`: one more call per row, the frames in flight without their history), and
context noise (a model trained with it sees its clean frames at that level, each frame with its own fixed
noise, so the cache and the oracle agree: engine.objective).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from engine.diffusion import DiffusionSchedule, chain_x0
from engine.models.dit import DiT, KVCache
from engine.schedulers.ad import ADScheduler, Row


@dataclass
class SamplerStats:
    """Work counted while sampling; `frame_forwards` is frames pushed through the DiT (batch not counted)."""

    rows: int = 0
    network_calls: int = 0
    frame_forwards: int = 0
    active_updates: int = 0  # frames whose level changed, summed over rows
    cache_writes: int = 0  # frames whose clean keys/values were written to the cache
    refresh_frames: int = 0  # clean frames recomputed because the window slid


@dataclass
class RowStep:
    """One finished row: frames that turned clean in it, with their final latents [B, k, L, D]."""

    index: int
    total_rows: int
    row: Row
    clean_frames: list[int]
    latents: torch.Tensor


@dataclass
class Sampler:
    """Shared set-up: the DiT, its diffusion schedule, the AD scheduler and guidance options."""

    dit: DiT
    schedule: DiffusionSchedule
    scheduler: ADScheduler
    prediction: str = "x0"
    guidance_scale: float = 1.0
    clip_x0: float | None = None
    history_guidance: float = 1.0
    context_noise: int = 0  # the timestep clean frames are shown at (the model's diffusion.context_noise)
    stats: SamplerStats = field(default_factory=SamplerStats)

    def __post_init__(self) -> None:
        if self.scheduler.window > self.dit.window:
            raise ValueError(f"sampling window {self.scheduler.window} exceeds the model's window {self.dit.window}")
        if not (np.isfinite(self.history_guidance) and self.history_guidance >= 0):
            raise ValueError(f"history guidance must be a number >= 0, got {self.history_guidance!r}")
        if self.history_guidance != 1.0 and not supports_history_guidance(self.prediction):
            raise ValueError(HISTORY_GUIDANCE_UNSUPPORTED.format(prediction=self.prediction))
        if not 0 <= self.context_noise <= self.schedule.T:
            raise ValueError(f"context noise must be a timestep in 0..{self.schedule.T}, got {self.context_noise}")
        self.grid = self.schedule.ddim_grid(self.scheduler.num_steps)
        self._timesteps = self.grid.timesteps.numpy().copy()
        self._timesteps[0] = self.context_noise  # what the network is told of a clean frame

    def denoise(self, context: torch.Tensor, noise: torch.Tensor, class_label: torch.Tensor | None = None,
                cancel: threading.Event | None = None) -> Iterator[RowStep]:
        """Continue `context` latents [B, C, L, D] (C may be 0) by noise.shape[1] frames, row by row.

        `noise` [B, N, L, D] is the starting point of the new frames. Stops early when `cancel` is set.
        The running state is `self.latents` [B, C + N, L, D].
        """
        if context.shape[0] != noise.shape[0] or context.shape[2:] != noise.shape[2:]:
            raise ValueError(f"context {tuple(context.shape)} and noise {tuple(noise.shape)} do not match")
        guided = self.guidance_scale != 1.0 and class_label is not None
        if guided and self.dit.num_classes == 0:
            raise ValueError("classifier-free guidance needs a class-conditional model")
        self.stats = SamplerStats()
        self.latents = torch.cat([context, noise], 1).float()
        if self.context_noise:
            g = torch.Generator().manual_seed(CONTEXT_NOISE_SEED)
            self._context_eps = torch.randn(self.latents.shape, generator=g).to(self.latents.device)
            a, b = self.schedule._coefficients(torch.tensor([self.context_noise]), self.latents)
            self._context_coefficients = a.reshape(()), b.reshape(())
        self._class_label = class_label
        self._guided = guided
        self._begin()
        num_context, num_frames = context.shape[1], noise.shape[1]
        total = self.scheduler.num_rows(num_frames, num_context)
        for index, row in enumerate(self.scheduler.rows(num_frames, num_context)):
            if cancel is not None and cancel.is_set():
                return
            self._row(row)
            self.stats.rows += 1
            self.stats.active_updates += row.num_active
            clean = row.newly_clean
            yield RowStep(index, total, row, clean, self.latents[:, clean] if clean else self.latents[:, :0])

    # -- shared pieces ----------------------------------------------------------------------------------

    def _begin(self) -> None:
        """Reset per-run state (the cache) before the first row."""

    def _row(self, row: Row) -> None:
        raise NotImplementedError

    def _levels_to_t(self, levels: np.ndarray, batch: int) -> torch.Tensor:
        """The timesteps the network is given for frames at `levels` (clean frames: the context-noise level)."""
        return torch.from_numpy(self._timesteps[levels]).to(self.latents.device)[None].expand(batch, -1)

    def _seen(self, start: int, stop: int, levels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames [start, stop) at `levels` as the network sees them: (latents, timesteps), clean frames noised
        to the context-noise level with their own fixed noise."""
        z = self.latents[:, start:stop]
        t = self._levels_to_t(levels, len(z))
        clean = levels == 0
        if self.context_noise and clean.any():
            a, b = self._context_coefficients
            mask = torch.from_numpy(clean).to(z.device).reshape(1, -1, *(1,) * (z.dim() - 2))
            z = torch.where(mask, a * z + b * self._context_eps[:, start:stop], z)
        return z, t

    def _labels(self, batch: int) -> torch.Tensor | None:
        label = self._class_label
        if label is None:
            return None
        if self._guided:  # one batched call: conditional half, then the null class
            return torch.cat([label, torch.full_like(label, self.dit.null_class)])
        return label

    def _double(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x]) if self._guided else x

    def _x0(self, out: torch.Tensor, start: int, row: Row) -> torch.Tensor:
        """Network output for frames [start, start + M) -> x0 estimate (float32), with classifier-free guidance
        on the output."""
        out = out.float()
        if self._guided:
            cond, uncond = out.chunk(2)
            out = uncond + self.guidance_scale * (cond - uncond)
        if self.prediction == "x0":
            return out
        stop = start + out.shape[1]
        if self.prediction == "eps":
            z, t = self._seen(start, stop, row.levels(start, stop)[0])
            return self.schedule.x0_from_eps(z, out, t)
        if self.prediction == "x0-delta":  # chained from the frame before `start`, which is clean
            clean = torch.from_numpy(row.levels(start, stop)[0] == 0).to(out.device)
            before = self.latents[:, start - 1] if start > 0 else None
            return chain_x0(out, self.latents[:, start:stop], clean, before)
        # x0-prev: the frame before `start` is part of the term (it lies outside the call's frames)
        lo = max(start - 1, 0)
        term = self.schedule.previous_frame_term(*self._seen(lo, stop, row.levels(lo, stop)[0]))
        return out + term[:, start - lo:]

    def _guide_history(self, x0: torch.Tensor, row: Row) -> torch.Tensor:
        """History guidance on the frames in flight [row.first, b): x0 = free + w (x0 - free), where `free` is the
        DiT's x0 for the same frames run as a window of their own, with no earlier frames (as the first frames
        of every training clip are seen). w > 1 makes the DiT lean harder on its context; w = 1 is off."""
        a, b = row.window
        first = row.first
        if self.history_guidance == 1.0 or first == a:  # nothing before the frames in flight: nothing to guide
            return x0
        batch = self.latents.shape[0]
        z, t = self._seen(first, b, row.levels(first, b)[0])
        out = self._free_call(self._double(z), self._double(t), self._labels(batch))
        self.stats.network_calls += 1
        self.stats.frame_forwards += b - first
        free = self._x0(out, first, row)
        return free + self.history_guidance * (x0 - free)

    def _free_call(self, z: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return self.dit(z, t, labels)

    def _step(self, start: int, stop: int, x0: torch.Tensor, row: Row) -> None:
        """DDIM-step frames [start, stop) from level_from to level_to; unchanged frames stay bit for bit."""
        z = self.latents[:, start:stop]
        self.latents[:, start:stop] = self.grid.ddim_step(z, x0, *row.levels(start, stop), clip_x0=self.clip_x0)


class ReferenceSampler(Sampler):
    """Recompute the row's whole window every row; the oracle the fast sampler is tested against."""

    def _row(self, row: Row) -> None:
        a, b = row.window
        batch = self.latents.shape[0]
        z, t = self._seen(a, b, row.level_from[a:b])
        out = self.dit(self._double(z), self._double(t), self._labels(batch))  # no shortcuts: the oracle
        self.stats.network_calls += 1
        self.stats.frame_forwards += b - a
        x0 = self._x0(out, a, row)
        x0[:, row.first - a:] = self._guide_history(x0[:, row.first - a:], row)  # the frames in flight
        self._step(a, b, x0, row)


class CachedSampler(Sampler):
    """Compute only frames in flight, reusing clean frames' keys/values from the DiT cache."""

    def _begin(self) -> None:
        self.cache = KVCache(start=-1)
        shown = torch.from_numpy(np.unique(self._timesteps))  # the grid's timesteps, clean as context noise shows it
        self._table = self.dit.conditioning_table(shown, self._labels(self.latents.shape[0]))
        self._cached_upto = 0  # frames below this index have been written to a cache at least once

    def _row(self, row: Row) -> None:
        a, b = row.window
        batch = self.latents.shape[0]
        first = row.first  # first frame not yet clean (the window always reaches back to it)
        if self.cache.start != a:  # the window slid: rebuild the cache for the new window
            self.cache.reset(a)
        start = self.cache.end  # clean frames not yet cached are computed once here, then cached
        z, t = self._seen(start, b, row.levels(start, b)[0])
        out, kv = self.dit.forward_cached(self._double(z), self._double(t), self.cache, self._labels(batch),
                                          table=self._table)
        self.cache.append(kv, first - start, self.dit.num_tokens)
        first_write = max(start, self._cached_upto)
        self.stats.cache_writes += max(0, first - first_write)
        self.stats.refresh_frames += max(0, min(first, first_write) - start)
        self._cached_upto = max(self._cached_upto, first)
        self.stats.network_calls += 1
        self.stats.frame_forwards += b - start
        self._step(first, b, self._guide_history(self._x0(out[:, first - start:], first, row), row), row)

    def _free_call(self, z: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        # through forward_cached with an empty cache, so compiled and exported DiTs serve this call too
        return self.dit.forward_cached(z, t, KVCache(start=-1), labels, table=self._table)[0]


HISTORY_GUIDANCE_UNSUPPORTED = ("history guidance needs a DiT that predicts x0 or eps, not {prediction} (its output "
                                "is tied to the frame before, which the history-free call does not see)")


def supports_history_guidance(prediction: str) -> bool:
    """Whether a DiT with this prediction can be history-guided: its output must stand on its own (x0 or eps);
    an x0-prev or x0-delta output is tied to the frame before, which the history-free call does not see."""
    return prediction in ("x0", "eps")


CONTEXT_NOISE_SEED = 0x5EED  # the context frames' noise: fixed, so a run repeats and the samplers agree
SAMPLERS = {"reference": ReferenceSampler, "cached": CachedSampler}


def make_sampler(name: str, dit: DiT, schedule: DiffusionSchedule, scheduler: ADScheduler, **options) -> Sampler:
    """"cached" (production) or "reference" (the oracle)."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {name!r}")
    return SAMPLERS[name](dit, schedule, scheduler, **options)

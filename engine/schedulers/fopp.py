"""Training compositions: per-frame timesteps for a clip of F frames (FoPP and the paper's baselines).

Every scheduler has one method, `sample(batch, generator=None, device=None) -> LongTensor [batch, F]`.
Values are noise levels 1..T (0 = clean only appears with the clean-prefix augmentation).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from engine.diffusion import _check_int


def log_prefix_counts(num_frames: int, num_timesteps: int) -> np.ndarray:
    """log d_e[i, j]: the number of non-decreasing prefixes (t_1, ..., t_i = j), values in 1..T.

    Row i - 1 holds frame i, column j - 1 holds value j. d_e[i, j] = C(j + i - 2, i - 1). The counts reach
    about 1e33 for F = 16, T = 1000, so they live in log space (float64), never in int64.
    """
    i = np.arange(1, num_frames + 1, dtype=np.float64)[:, None]
    j = np.arange(1, num_timesteps + 1, dtype=np.float64)[None, :]
    lgamma = np.vectorize(math.lgamma)
    return lgamma(j + i - 1) - lgamma(i) - lgamma(j)


def log_suffix_counts(num_frames: int, num_timesteps: int) -> np.ndarray:
    """log d_s[i, j]: the number of non-decreasing completions (t_i = j, ..., t_F).

    By symmetry (reverse the frames, map value j to T + 1 - j) this is a prefix count of length F - i + 1.
    """
    return log_prefix_counts(num_frames, num_timesteps)[::-1, ::-1].copy()


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=device, dtype=torch.float64)


def _randint(low: int, high: int, shape: tuple[int, ...], generator, device) -> torch.Tensor:
    return torch.randint(low, high + 1, shape, generator=generator, device=device)


class TrainingScheduler:
    """Common argument checks; subclasses implement `sample`."""

    name = "base"

    def __init__(self, num_frames: int, num_timesteps: int) -> None:
        _check_int("num_frames", num_frames, 1)
        _check_int("num_timesteps", num_timesteps, 1)
        self.num_frames, self.num_timesteps = num_frames, num_timesteps

    def _check_batch(self, batch: int) -> None:
        _check_int("batch", batch, 0)

    def sample(self, batch: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        raise NotImplementedError


class FoPPScheduler(TrainingScheduler):
    """Frame-oriented Probability Propagation (Sec. 3.3, Alg. 1).

    Pick an anchor frame f ~ U{1..F} and its level t_f ~ U{1..T}; sample earlier frames backwards with
    P(t_i = k | t_{i+1} = K) proportional to d_e[i, k] (k <= K) and later frames forwards with
    P(t_i = k | t_{i-1} = K) proportional to d_s[i, k] (k >= K). Given (f, t_f) every valid non-decreasing
    composition is then equally likely. Batches are sampled at once by inverse CDF over precomputed
    log-cumulative tables on the target device: a loop over frames, never over samples.
    """

    name = "fopp"

    def __init__(self, num_frames: int, num_timesteps: int) -> None:
        super().__init__(num_frames, num_timesteps)
        log_de = log_prefix_counts(num_frames, num_timesteps)
        self._log_de = log_de
        # Row i: log of sum_{k <= K} d_e[i, k], the normaliser of the backward step at frame i.
        self._log_cum = torch.from_numpy(np.logaddexp.accumulate(log_de, axis=1))
        self._tables: dict[str, torch.Tensor] = {}

    def _log_cum_on(self, device) -> torch.Tensor:
        key = str(device)
        if key not in self._tables:
            self._tables[key] = self._log_cum.to(device)
        return self._tables[key]

    def _backward_step(self, log_cum_row: torch.Tensor, upper: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Sample k in 1..upper with P(k) proportional to d_e[i, k] (inverse CDF in log space)."""
        log_total = log_cum_row[upper - 1]
        target = torch.log(u) + log_total  # log of a uniform draw on (0, total)
        k = torch.searchsorted(log_cum_row, target.contiguous(), right=True) + 1
        return torch.minimum(k, upper)  # guards the u -> 1 rounding edge

    def sample(
        self,
        batch: int,
        generator: torch.Generator | None = None,
        device=None,
        return_anchor: bool = False,
    ):
        """Compositions [batch, F] (and the 0-based anchor frames when `return_anchor`)."""
        self._check_batch(batch)
        device = torch.device(device) if device is not None else torch.device("cpu")
        F, T = self.num_frames, self.num_timesteps
        log_cum = self._log_cum_on(device)
        anchor = _randint(0, F - 1, (batch,), generator, device)
        t = torch.zeros(batch, F, dtype=torch.long, device=device)
        t[torch.arange(batch, device=device), anchor] = _randint(1, T, (batch,), generator, device)
        u = _uniform((batch, F), generator, device).clamp_min(1e-300)
        # Backwards from the anchor: frame i (0-based) given frame i + 1, for samples with i < anchor.
        for i in range(F - 2, -1, -1):
            k = self._backward_step(log_cum[i], t[:, i + 1].clamp_min(1), u[:, i])
            t[:, i] = torch.where(i < anchor, k, t[:, i])
        # Forwards: the mirror image (frame i <-> F - 1 - i, value k <-> T + 1 - k) of the backward step.
        for i in range(1, F):
            mirrored_upper = (T + 1 - t[:, i - 1]).clamp(1, T)
            k = T + 1 - self._backward_step(log_cum[F - 1 - i], mirrored_upper, u[:, i])
            t[:, i] = torch.where(i > anchor, k, t[:, i])
        return (t, anchor) if return_anchor else t

    def composition_probability(self, composition: list[int], anchor: int) -> float:
        """Exact probability that `sample` draws this composition with this (0-based) anchor frame.

        Computed from the sampler's own tables, so tests can check its distribution by enumeration.
        """
        F, T = self.num_frames, self.num_timesteps
        log_de, log_cum = self._log_de, self._log_cum.numpy()
        p = 1.0 / (F * T)
        for i in range(anchor - 1, -1, -1):
            k, upper = composition[i], composition[i + 1]
            p *= math.exp(log_de[i, k - 1] - log_cum[i, upper - 1]) if 1 <= k <= upper else 0.0
        for i in range(anchor + 1, F):
            row, mk, mupper = F - 1 - i, T + 1 - composition[i], T + 1 - composition[i - 1]
            p *= math.exp(log_de[row, mk - 1] - log_cum[row, mupper - 1]) if 1 <= mk <= mupper else 0.0
        return p


class EqualScheduler(TrainingScheduler):
    """All frames share one level t ~ U{1..T}: plain video diffusion (the synchronous baseline)."""

    name = "equal"

    def sample(self, batch: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        self._check_batch(batch)
        t = _randint(1, self.num_timesteps, (batch, 1), generator, device)
        return t.expand(batch, self.num_frames).contiguous()


class IndependentScheduler(TrainingScheduler):
    """Each frame's level drawn independently from U{1..T} (Diffusion Forcing style; not monotone)."""

    name = "independent"

    def sample(self, batch: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        self._check_batch(batch)
        return _randint(1, self.num_timesteps, (batch, self.num_frames), generator, device)


class NaiveNonDecreasingScheduler(TrainingScheduler):
    """t_1 ~ U{1..T}, t_i ~ U{t_(i-1)..T}: non-decreasing but piled up near T (the paper's Table 3 baseline)."""

    name = "naive-nondecreasing"

    def sample(self, batch: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        self._check_batch(batch)
        T = self.num_timesteps
        u = _uniform((batch, self.num_frames), generator, device)
        t = torch.empty(batch, self.num_frames, dtype=torch.long, device=u.device)
        low = torch.ones(batch, dtype=torch.long, device=u.device)
        for i in range(self.num_frames):
            low = low + (u[:, i] * (T - low + 1)).long().clamp_max(T - low)
            t[:, i] = low
        return t


class CleanPrefix(TrainingScheduler):
    """With probability p, set frames 1..k to clean (t = 0), k ~ U{1..F-1}; otherwise keep the base draw.

    Ours, for continuation: conditioning on a clean clip becomes in-distribution, and zeroing a prefix keeps
    compositions non-decreasing.
    """

    def __init__(self, base: TrainingScheduler, p: float) -> None:
        super().__init__(base.num_frames, base.num_timesteps)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"clean_prefix_p must be in [0, 1], got {p}")
        self.base, self.p = base, p
        self.name = f"{base.name}+clean-prefix"

    def sample(self, batch: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        t = self.base.sample(batch, generator=generator, device=device)
        F = self.num_frames
        if F < 2 or self.p == 0.0:
            return t
        use = _uniform((batch,), generator, t.device) < self.p
        k = _randint(1, F - 1, (batch,), generator, t.device)
        prefix = torch.arange(F, device=t.device)[None, :] < k[:, None]
        return torch.where(use[:, None] & prefix, torch.zeros_like(t), t)


TRAINING_SCHEDULERS = {
    cls.name: cls for cls in (FoPPScheduler, EqualScheduler, IndependentScheduler, NaiveNonDecreasingScheduler)
}


def make_training_scheduler(
    name: str, num_frames: int, num_timesteps: int, clean_prefix_p: float = 0.0
) -> TrainingScheduler:
    """"fopp" | "equal" | "independent" | "naive-nondecreasing", optionally with clean-prefix conditioning."""
    if name not in TRAINING_SCHEDULERS:
        raise ValueError(f"scheduler must be one of {', '.join(TRAINING_SCHEDULERS)}, got {name!r}")
    scheduler = TRAINING_SCHEDULERS[name](num_frames, num_timesteps)
    return CleanPrefix(scheduler, clean_prefix_p) if clean_prefix_p > 0 else scheduler

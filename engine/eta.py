"""A run's time left, from its plan and the rows measured so far, counting what the rows' frame count misses
(both apps show it).

`Plan.seconds_left` scales the time so far by the frames the DiT will push. Two costs break that: the first
row carries the run's warm-up (first calls, decoding the context frames into the decoder's memory), and each
frame that turns clean is decoded in its row, which the plan's work leaves out; with s = 0 every frame is
decoded in the last row, so the old estimate ended at "0.1 s" for seconds. Here each row's time is fitted
as `a · frames pushed + b · frames decoded` over the rows after the first, and the rest of the plan is
priced the same way. Until rows that decode have been seen, `b` comes from the first row, which decodes the
context frames (warm-up included: an early estimate errs long, not short), or, from nothing, a prior.
"""

from __future__ import annotations

import numpy as np

# A decoded frame costs about this many DiT frame-forwards, until a run has measured it: the embedded
# model's causal decoder against its DiT, fp32 on one thread of the AMD EPYC (AVX512-BF16) CPU, measured ~7.
DECODE_PRIOR = 6.0


def decodes_per_row(levels, num_context: int) -> np.ndarray:
    """Frames that turn clean (and are decoded) in each row: levels [rows + 1, context + new] -> [rows]; from a
    plan's LevelMatrix without building its rows (frames finish in order)."""
    if hasattr(levels, "clean_counts"):
        return np.diff(levels.clean_counts())
    new = np.asarray(levels)[:, num_context:]
    return ((new[:-1] > 0) & (new[1:] == 0)).sum(axis=1)


class RunClock:
    """Follows a run's Progress events and says how long the rest of the plan will take."""

    def __init__(self, plan) -> None:
        self.num_context = plan.num_context  # decoded in the first row, before the first network call
        self.work = np.asarray(plan.frame_evaluations, dtype=float)
        self.decodes = decodes_per_row(plan.levels, plan.num_context).astype(float)
        self.durations: list[float] = []  # seconds of each row done, in order
        self._elapsed = 0.0

    def row_done(self, row: int, elapsed: float) -> float | None:
        """Record that `row` rows (1-based) are done `elapsed` seconds in; returns `seconds_left()`."""
        missing = row - len(self.durations)
        if missing > 0:  # rows arrive one by one; a skipped one shares the time with the next
            self.durations += [max(0.0, elapsed - self._elapsed) / missing] * missing
            self._elapsed = elapsed
        return self.seconds_left()

    def costs(self) -> tuple[float, float] | None:
        """(seconds per frame pushed, seconds per frame decoded) fitted so far; None before two rows."""
        done = len(self.durations)
        if done < 2:
            return None
        d = np.asarray(self.durations[1:])  # the first row is the warm-up: not a rate
        e, k = self.work[1:done], self.decodes[1:done]
        x = np.stack([e, k], axis=1)
        if np.linalg.matrix_rank(x) == 2:  # decodes vary apart from the work: both costs can be measured
            (a, b), *_ = np.linalg.lstsq(x, d, rcond=None)
            if a > 0 and b >= 0:
                return float(a), float(b)
        ratio = DECODE_PRIOR
        if not k.any() and self.num_context and e.sum() > 0:  # no decode seen yet: the first row's context
            a = float(d.sum()) / float(e.sum())
            ratio = max(0.0, self.durations[0] - a * self.work[0]) / self.num_context / a if a > 0 else ratio
        weighted = float((e + ratio * k).sum())
        if weighted <= 0:
            return None
        a = float(d.sum()) / weighted
        return a, ratio * a

    def seconds_left(self) -> float | None:
        """Time the remaining rows will take; None before the first row."""
        done = len(self.durations)
        if done == 0:
            return None
        rest_work, rest_decodes = float(self.work[done:].sum()), float(self.decodes[done:].sum())
        costs = self.costs()
        if costs is None:  # one row only: scale it (warm-up included) by the work left
            first = float(self.work[0] + DECODE_PRIOR * self.decodes[0])
            return self.durations[0] * (rest_work + DECODE_PRIOR * rest_decodes) / first if first > 0 else None
        a, b = costs
        return a * rest_work + b * rest_decodes

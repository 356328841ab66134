"""The AD inference scheduler (Sec. 3.4): which frame sits at which DDIM level in each network call.

Levels are DDIM step indices k in 0..n (n = pure noise, 0 = clean). One row is one network call. Frame 1,
and any frame whose predecessor was already clean before the row, steps k -> k - 1; every other frame
follows its predecessor at a distance of s levels: k -> min(new k of predecessor + s, k), but never more than
one level per row (the paper's Eq. 5, sign fixed; the one-level bound only matters after the window held a
frame back). s = 0 is synchronous diffusion, s >= n frame-by-frame auto-regression.

Videos longer than the training window W: the network only ever sees W frames. A frame may leave pure
noise only when it fits in a window together with at least c clean frames before it (c = min_context once
any frame is clean). This works for every s; with s = 0 it becomes chunked synchronous generation. (The
released code slides a fixed window instead and silently skips frames when s < 4.)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Iterator

import numpy as np

from engine.diffusion import _check_int


@dataclass(frozen=True)
class Row:
    """One network call: the network sees `level_from`; the DDIM step lands each frame on `level_to`.

    Stored compactly (frames before `first` are clean, frames after the in-flight segment are pure noise),
    so a row costs O(window), not O(video length), to make; the full arrays are built on first access.
    """

    first: int  # frames [0, first) are clean before this row
    segment_from: np.ndarray  # levels of frames [first, first + len(segment)) before the row
    segment_to: np.ndarray  # ... and after it
    num_frames: int  # context + new frames
    num_steps: int  # n: the level of pure noise
    window: tuple[int, int]  # half-open frame range the network must see this row

    def _full(self, segment: np.ndarray) -> np.ndarray:
        full = np.full(self.num_frames, self.num_steps, dtype=np.int64)
        full[: self.first] = 0
        full[self.first: self.first + len(segment)] = segment
        full.flags.writeable = False  # built once and shared by every reader of the row
        return full

    @cached_property
    def level_from(self) -> np.ndarray:
        """[num_context + num_frames] ints in 0..n before the row."""
        return self._full(self.segment_from)

    @cached_property
    def level_to(self) -> np.ndarray:
        return self._full(self.segment_to)

    def levels(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(level_from[start:stop], level_to[start:stop]); from the in-flight segment alone when the range lies
        inside it, so a sampler's per-row slices cost O(range), not O(video length)."""
        i, j = start - self.first, stop - self.first
        if 0 <= i and j <= len(self.segment_from):
            return self.segment_from[i:j], self.segment_to[i:j]
        return self.level_from[start:stop], self.level_to[start:stop]

    @cached_property
    def num_active(self) -> int:
        """How many frames change level this row."""
        return int(np.count_nonzero(self.segment_from != self.segment_to))

    @cached_property
    def newly_clean(self) -> list[int]:
        """Frames that turn clean in this row."""
        done = (self.segment_to == 0) & (self.segment_from > 0)
        return (self.first + np.flatnonzero(done)).tolist()

    @cached_property
    def active(self) -> np.ndarray:
        """Frames whose level changes this row (only these are updated)."""
        active = self.level_from != self.level_to
        active.flags.writeable = False
        return active


class ADScheduler:
    """Rows of per-frame DDIM levels for asynchronous auto-regressive sampling."""

    def __init__(self, num_steps: int = 50, s: int = 5, window: int = 16, min_context: int = 1) -> None:
        _check_int("num_steps", num_steps, 1)
        _check_int("s", s, 0)
        _check_int("window", window, 2)
        _check_int("min_context", min_context, 0, window - 1)
        self.num_steps, self.s, self.window, self.min_context = num_steps, s, window, min_context

    def rows(self, num_frames: int, num_context: int = 0) -> Iterator[Row]:
        """Rows for `num_frames` new frames after `num_context` clean context frames (indices 0..C-1)."""
        _check_int("num_frames", num_frames, 1)
        _check_int("num_context", num_context, 0)
        n, s, W = self.num_steps, self.s, self.window
        total = num_context + num_frames
        first = num_context  # first frame that is not clean
        flight: list[int] = []  # levels of frames [first, first + len(flight)); every later frame is at n
        while first < total:
            context = min(self.min_context, first)
            leave_limit = min(first - context + W, total)  # frames before this index may leave pure noise
            new: list[int] = []
            for i in range(first, leave_limit):
                level = flight[i - first] if i - first < len(flight) else n
                target = -1 if i == first else new[-1] + s
                moved = level - 1 if target <= level - 1 else level
                if moved == level == n:
                    break  # still pure noise, and so is everything after it
                new.append(moved)
            old = flight + [n] * (len(new) - len(flight))
            last_active = first + max(i for i, (a, b) in enumerate(zip(old, new)) if a != b)
            end = last_active + 1
            yield Row(first, np.asarray(old), np.asarray(new), total, n, (max(0, end - W), end))
            done = next((i for i, level in enumerate(new) if level > 0), len(new))
            first, flight = first + done, new[done:]

    def num_rows(self, num_frames: int, num_context: int = 0) -> int:
        """Network calls needed; n + (N - 1) * s when N fits the window and s <= n."""
        return sum(1 for _ in self.rows(num_frames, num_context))

    def level_matrix(self, num_frames: int, num_context: int = 0) -> np.ndarray:
        """[rows + 1, frames] levels: the start state then the state after each row (for plots and tests)."""
        rows = list(self.rows(num_frames, num_context))
        return np.stack([rows[0].level_from] + [r.level_to for r in rows])

"""A session's takes: every run's result, kept with what made it, so a new run never destroys an old one.

Both apps hold one `Takes`; they list, switch, compare, delete and save takes through it, and ask before
quitting or opening a clip while `unsaved()` is not empty. Plain data: no Qt, no Textual, no torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from engine.run import RunRequest, frame_rate


@dataclass(eq=False)  # a take is itself: two runs with the same frames are two takes (and arrays have no ==)
class Take:
    """One run's result: the whole video (context frames first) and what made it."""

    number: int  # 1, 2, ... in the order the session made them; never reused
    video: np.ndarray  # uint8 [context + new, H, W, 3]
    num_context: int
    fps: float
    clip: Path | None  # the clip it continued; None when generated from nothing
    request: RunRequest
    parent: int | None = None  # the take this one continued further, if any
    cancelled: bool = False  # the run was stopped: fewer new frames than asked
    saved_to: Path | None = None  # the last place it was saved, None while unsaved
    input_hw: tuple[int, int] | None = None  # the clip's frame height and width: a save "at the input's size"

    @property
    def num_new(self) -> int:
        return len(self.video) - self.num_context

    @property
    def unsaved(self) -> bool:
        return self.saved_to is None

    @property
    def source(self) -> str:
        """The clip's file name, or 'from nothing'."""
        return self.clip.name if self.clip is not None else "from nothing"

    @property
    def label(self) -> str:
        """One line for a list: 'Take 3 · tree.avi · 16 new · s 5 · 50 steps · seed 0 · 8 fps', with a
        trailing '· unsaved' while it is."""
        r = self.request
        parts = [f"Take {self.number}", self.source, f"{self.num_new} new" + (" (stopped)" if self.cancelled else ""),
                 f"s {r.s}", f"{r.steps} steps", f"seed {r.seed}", frame_rate(self.fps)]
        if self.parent is not None:
            parts.insert(2, f"from take {self.parent}")
        if self.unsaved:
            parts.append("unsaved")
        return " · ".join(parts)


@dataclass
class Takes:
    """The session's takes in the order made, and which one is on screen."""

    _takes: list[Take] = field(default_factory=list)
    _next: int = 1
    current: Take | None = None

    def add(self, video: np.ndarray, num_context: int, fps: float, clip: Path | str | None, request: RunRequest,
            parent: int | None = None, cancelled: bool = False,
            input_hw: tuple[int, int] | None = None) -> Take:
        """Keep a new take and make it the current one. `input_hw`: the clip's frame size (None: from nothing),
        what `engine.save_options.frames_to_save` upscales to for a save at the input's size."""
        take = Take(self._next, video, num_context, fps, None if clip is None else Path(clip), request, parent,
                    cancelled, input_hw=None if input_hw is None else (int(input_hw[0]), int(input_hw[1])))
        self._next += 1
        self._takes.append(take)
        self.current = take
        return take

    def get(self, number: int) -> Take:
        """The take numbered `number`; KeyError when there is none (deleted or never made)."""
        for take in self._takes:
            if take.number == number:
                return take
        raise KeyError(f"no take {number}")

    def select(self, number: int) -> Take:
        """Make take `number` the current one."""
        self.current = self.get(number)
        return self.current

    def remove(self, number: int) -> Take | None:
        """Delete take `number`; the current take becomes its neighbour (the next, else the previous), or None
        when none is left. Returns the new current take."""
        take = self.get(number)
        index = self._takes.index(take)
        self._takes.remove(take)
        if self.current is take:
            self.current = self._takes[min(index, len(self._takes) - 1)] if self._takes else None
        return self.current

    def mark_saved(self, number: int, path: str | Path) -> None:
        self.get(number).saved_to = Path(path)

    def unsaved(self) -> list[Take]:
        """Takes that would be lost if the session ended now."""
        return [take for take in self._takes if take.unsaved]

    def of_clip(self, clip: Path | str | None) -> list[Take]:
        """Takes made from `clip` (None: those made from nothing); the same file named another way
        (relative, absolute, with ./) is the same clip."""
        def where(path: Path | str | None) -> str | None:
            return None if path is None else os.path.abspath(path)  # names only: the file may be gone

        clip = where(clip)
        return [take for take in self._takes if where(take.clip) == clip]

    def __iter__(self) -> Iterator[Take]:
        return iter(list(self._takes))

    def __len__(self) -> int:
        return len(self._takes)

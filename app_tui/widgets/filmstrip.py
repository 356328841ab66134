"""A row of small thumbnails of every frame of the output, newest on the right.

Context frames are labelled in blue and generated ones in orange (the colours of the CLI's contact sheet), so
the eye finds where the model took over. Thumbnails are drawn once per size and cached: a frame never changes.
"""

from __future__ import annotations

import numpy as np
from rich.segment import Segment
from rich.style import Style
from textual.strip import Strip
from textual.widget import Widget

from app_tui.render import ascii_lines, halfcell_image

CONTEXT_STYLE = Style(color="#4285f4", bold=True)  # engine.video_io's context blue
NEW_STYLE = Style(color="#ff9800", bold=True)  # ... and generated orange
DIM = Style(dim=True)


class Filmstrip(Widget):
    """Thumbnails of `frames`; the last ones that fit are shown, the caption says how many are off-screen."""

    def __init__(self, text_only: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.text_only = text_only
        self.frames: list[np.ndarray] = []
        self.num_context = 0
        self._thumbs: dict[tuple[int, int], list[list[Segment]]] = {}
        self._lines: list[Strip] | None = None
        self.border_title = "Filmstrip"

    def set_frames(self, frames: list[np.ndarray], num_context: int) -> None:
        """Replace every frame (a new run, or Done's final video)."""
        self.frames, self.num_context, self._thumbs = list(frames), num_context, {}
        self._changed()

    def add(self, frame: np.ndarray) -> None:
        """Append one frame; earlier thumbnails stay cached."""
        self.frames.append(frame)
        self._changed()

    def _changed(self) -> None:
        self._lines = None
        new = len(self.frames) - self.num_context
        shown = self.visible()
        more = f", showing {shown.start}-{shown.stop - 1}" if shown.start else ""
        self.border_subtitle = f"{self.num_context} context + {new} new{more}" if self.frames else ""
        self.refresh()

    def on_resize(self) -> None:
        self._changed()

    def thumb_size(self) -> tuple[int, int]:
        """(cols, rows) of one thumbnail: all rows but the label line; a cell is twice as tall as wide, so
        twice as many columns as rows makes a square frame look square."""
        rows = max(1, self.size.height - 1)
        return rows * 2, rows

    def visible(self) -> range:
        """Indices of the frames drawn at the current size."""
        cols, _ = self.thumb_size()
        fit = max(1, (self.size.width + 1) // (cols + 1))
        return range(max(0, len(self.frames) - fit), len(self.frames))

    def _thumb(self, index: int, cols: int, rows: int) -> list[list[Segment]]:
        key = (index, cols)
        if key not in self._thumbs:
            frame = self.frames[index]
            if self.text_only:
                self._thumbs[key] = [[Segment(line)] for line in ascii_lines(frame, cols, rows)]
            else:
                self._thumbs[key] = halfcell_image(frame, cols, rows)
        return self._thumbs[key]

    def _build(self) -> list[Strip]:
        width = self.size.width
        if not self.frames:
            return [Strip([Segment("frames appear here as they are made", DIM)]).crop_extend(0, width, None)]
        cols, rows = self.thumb_size()
        lines: list[list[Segment]] = [[] for _ in range(rows + 1)]
        for n, index in enumerate(self.visible()):
            if n:
                for line in lines:
                    line.append(Segment(" "))
            for line, part in zip(lines, self._thumb(index, cols, rows)):
                line.extend(part)
            context = index < self.num_context
            label = (f"c{index}" if context else str(index))[:cols].ljust(cols)
            lines[-1].append(Segment(label, CONTEXT_STYLE if context else NEW_STYLE))
        return [Strip(line).crop_extend(0, width, None) for line in lines]

    def render_line(self, y: int) -> Strip:
        if self._lines is None:
            self._lines = self._build()
        return self._lines[y] if y < len(self._lines) else Strip.blank(self.size.width)

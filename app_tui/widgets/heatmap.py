"""The AD schedule as a heat map in text cells: frames across, rows (network calls) down, colour = noise.

The whole schedule is known before the run starts, so it is drawn at once; Progress only moves the current-row
marker, and rows still to come are dimmed. Viridis from engine.visualize, so GUI, TUI and CLI look alike.
"""

from __future__ import annotations

import numpy as np
from rich.segment import Segment
from rich.style import Style
from textual.strip import Strip
from textual.widget import Widget

from app_tui.render import halfcell_rows
from engine.visualize import colormap

SHADES = " ░▒▓█"  # text-only terminals: clean is blank, pure noise is solid
_BACKGROUND = np.array([24, 24, 24], dtype=np.float64)  # rows still to come fade toward it
MARKER = Style(color="#ffffff", bold=True)
DIM = Style(dim=True)


def cell_indices(num_items: int, cells: int) -> np.ndarray:
    """Which item each of `cells` cells shows: every item gets cells // items or one more (the width is
    used, no frame is skipped) when they fit, else evenly spaced samples."""
    return (np.arange(cells) * num_items) // cells


class ScheduleHeatmap(Widget):
    """Draws a [rows + 1, frames] level matrix and marks the row just finished."""

    def __init__(self, text_only: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.text_only = text_only
        self.levels: np.ndarray | None = None
        self.steps = 1
        self.num_context = 0
        self.row = 0
        self._lines: list[Strip] | None = None
        self.border_title = "AD schedule"

    def set_schedule(self, levels: np.ndarray, steps: int, num_context: int) -> None:
        """A new run's schedule; the marker starts on row 0 (every new frame pure noise)."""
        self.levels, self.steps, self.num_context, self.row = levels, max(1, steps), num_context, 0
        new = levels.shape[1] - num_context
        self.border_subtitle = f"{num_context} ctx + {new} new →, {levels.shape[0] - 1} rows ↓"
        self._changed()

    def set_row(self, row: int) -> None:
        """`row` rows are done (Progress.row); row 0 is the start state."""
        if row != self.row:
            self.row = row
            self._changed()

    def _changed(self) -> None:
        self._lines = None
        self.refresh()

    def on_resize(self) -> None:
        self._changed()

    def render_line(self, y: int) -> Strip:
        if self._lines is None:
            self._lines = [line.crop_extend(0, self.size.width, None) for line in self._build()]
        return self._lines[y] if y < len(self._lines) else Strip.blank(self.size.width)

    def _build(self) -> list[Strip]:
        if self.levels is None:
            return [Strip([Segment("the schedule appears when a run starts", DIM)])]
        width, height = self.size.width - 1, self.size.height - 1  # a marker column, a legend line
        if width < 1 or height < 1:
            return []
        num_rows, num_frames = self.levels.shape
        px_rows = height if self.text_only else height * 2
        rows_of = np.minimum((np.arange(px_rows) * num_rows) // px_rows, num_rows - 1)
        grid = self.levels[rows_of][:, cell_indices(num_frames, width)]  # [px_rows, cells]
        marker = int(np.searchsorted(rows_of, self.row, side="right") - 1)
        if self.text_only:
            shade = np.clip(np.rint(grid / self.steps * (len(SHADES) - 1)), 0, len(SHADES) - 1).astype(int)
            cells = [[Segment("".join(SHADES[i] for i in line))] for line in shade]
        else:
            marker //= 2
            rgb = colormap(grid / self.steps).astype(np.float64)
            future = rows_of > self.row
            rgb[future] = rgb[future] * 0.45 + _BACKGROUND * 0.55
            cells = halfcell_rows(np.rint(rgb).astype(np.uint8))
        arrow = Segment(">" if self.text_only else "▶", MARKER)
        lines = [Strip([arrow if y == marker else Segment(" ")] + row) for y, row in enumerate(cells)]
        return lines + [self._legend(num_rows - 1)]

    def _legend(self, total_rows: int) -> Strip:
        parts = [Segment(" clean ", DIM)]
        if self.text_only:
            parts.append(Segment(SHADES.replace(" ", "·")))
        else:
            for rgb in colormap(np.linspace(0, 1, 6)):
                colour = f"#{int(rgb[0]):02x}{int(rgb[1]):02x}{int(rgb[2]):02x}"
                parts.append(Segment("█", Style(color=colour)))
        parts.append(Segment(f" noise (n={self.steps})  row {self.row}/{total_rows}", DIM))
        return Strip(parts)

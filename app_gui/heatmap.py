"""The AD schedule as a live heat map: frames across, rows (network calls) down, noise level as colour.

The whole schedule is known before sampling starts (the engine plans it: `engine.run.plan_rows`), so it is
drawn at once, dimmed; rows already run are drawn at full strength and a line marks the current row, so a
person sees which frames are clean, which are in flight and which are still noise. Colours come from
`engine.visualize`, so the GUI, TUI and CLI pictures agree.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPoint, QRect, QSize, Qt
from PySide6.QtGui import QColor, QFont, QImage, QPainter, QPen
from PySide6.QtWidgets import QSizePolicy, QToolTip, QWidget

from engine import visualize
from engine.run import RunRequest, plan_rows
from engine.visualize import colormap

CONTEXT_COLOUR = QColor(*visualize.CONTEXT_COLOUR)  # the person's frames, as in the contact sheets
NEW_COLOUR = QColor(*visualize.NEW_COLOUR)  # frames the model made


MAX_DRAWN = 2048  # rows and frames of a plan drawn at most: more than a screen shows, bounded for long runs

def schedule_levels(num_new: int, num_context: int, steps: int, s: int, window: int,
                    min_context: int = RunRequest.min_context) -> np.ndarray:
    """[rows + 1, context + new] DDIM levels of a run before a model is at hand (the preview); a run draws
    its `Planned` event's levels instead. The engine plans both (engine.run.plan_rows)."""
    request = RunRequest(new_frames=num_new, s=s, steps=steps, min_context=min_context)
    return plan_rows(request, window, num_context)[0]


def _rgb_image(rgb: np.ndarray) -> QImage:
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w = rgb.shape[:2]
    return QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()  # copy: own the pixels


class ScheduleHeatmap(QWidget):
    """Draws a level matrix and highlights the row the sampler has reached."""

    _LEFT, _TOP, _BAR = 34, 16, 12

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.levels: np.ndarray | None = None
        self.steps = 1
        self.num_context = 0
        self.row = 0  # rows done (0 = before the first network call)
        self._done_img: QImage | None = None
        self._dim_img: QImage | None = None
        self.setMouseTracking(True)
        self.setMinimumHeight(120)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setToolTip("Noise schedule: frames across, sampling rows down; dark = clean, yellow = noise")

    def sizeHint(self) -> QSize:
        return QSize(480, 160)

    def set_schedule(self, levels: np.ndarray, steps: int, num_context: int) -> None:
        """Show a new schedule ([rows + 1, frames] levels), nothing run yet."""
        self.levels = levels  # the plan's LevelMatrix: rows are built only where drawn
        self.steps, self.num_context, self.row = max(1, steps), num_context, 0
        self._render()
        self.update()

    def _render(self) -> None:
        rows, frames = self.levels.shape  # a long run draws a sample of its rows and frames, not all of them
        rows_of = np.minimum(np.arange(min(rows, MAX_DRAWN)) * rows // min(rows, MAX_DRAWN), rows - 1)
        cols_of = np.minimum(np.arange(min(frames, MAX_DRAWN)) * frames // min(frames, MAX_DRAWN), frames - 1)
        grid = np.stack([np.asarray(self.levels[int(r)])[cols_of] for r in rows_of])  # one row built at a time
        rgb = colormap(grid / self.steps)
        self._done_img = _rgb_image(rgb)
        # Rows not yet run: blended towards the background so the current row stands out.
        self._dim_img = _rgb_image((rgb.astype(np.float32) * 0.35 + 40 * 0.65).astype(np.uint8))

    def clear(self) -> None:
        self.levels = self._done_img = self._dim_img = None
        self.row = 0
        self.update()

    def set_row(self, row: int) -> None:
        """The sampler finished `row` (1-based); the rows drawn are the plan's, which is what runs (tests/test_run.py
        holds the two equal)."""
        if self.levels is None:
            return
        self.row = int(np.clip(row, 0, len(self.levels) - 1))
        self.update()

    @property
    def current_levels(self) -> np.ndarray | None:
        """Every frame's noise level right now (after the current row)."""
        return None if self.levels is None else self.levels[self.row]

    # -- drawing --------------------------------------------------------------------------------------------

    def _plot_rect(self) -> QRect:
        return QRect(self._LEFT, self._TOP + self._BAR + 4, max(1, self.width() - self._LEFT - 8),
                     max(1, self.height() - self._TOP - self._BAR - 10))

    def paintEvent(self, _event) -> None:
        p = QPainter(self)
        p.fillRect(self.rect(), QColor(40, 40, 40))
        small = QFont(self.font())
        small.setPointSizeF(max(6.5, small.pointSizeF() * 0.8))
        p.setFont(small)
        if self.levels is None:
            p.setPen(QColor(170, 170, 170))
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter,
                       "The noise schedule appears here when you press Generate")
            return
        rows, frames = self.levels.shape
        plot = self._plot_rect()
        # "Now" strip on top: each frame's level after the current row, full strength.
        now = _rgb_image(colormap(self.levels[self.row][None] / self.steps))
        strip = QRect(plot.left(), self._TOP, plot.width(), self._BAR)
        p.drawImage(strip, now)
        p.setPen(QColor(200, 200, 200))
        p.drawText(QRect(0, self._TOP, self._LEFT - 4, self._BAR), Qt.AlignmentFlag.AlignRight, "now")
        p.drawText(QRect(plot.left(), 0, plot.width(), self._TOP), Qt.AlignmentFlag.AlignLeft,
                   f"frames → ({frames})")
        p.drawText(QRect(plot.left(), 0, plot.width(), self._TOP), Qt.AlignmentFlag.AlignRight,
                   f"row {self.row} / {rows - 1}")
        p.save()
        p.translate(10, plot.top() + plot.height() / 2)
        p.rotate(-90)
        p.drawText(QRect(-40, -8, 80, 14), Qt.AlignmentFlag.AlignCenter, "rows ↓")
        p.restore()
        # Matrix: done rows bright, future rows dim. Nearest-neighbour scaling keeps the cells crisp.
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, False)
        cut = self.row + 1
        top_h = round(plot.height() * cut / rows)
        p.drawImage(QRect(plot.left(), plot.top(), plot.width(), top_h), self._done_img,
                    QRect(0, 0, frames, cut))
        if cut < rows:
            p.drawImage(QRect(plot.left(), plot.top() + top_h, plot.width(), plot.height() - top_h),
                        self._dim_img, QRect(0, cut, frames, rows - cut))
        p.setPen(QPen(QColor(255, 255, 255), 2))
        p.drawLine(plot.left(), plot.top() + top_h, plot.right(), plot.top() + top_h)
        if self.num_context:  # where the new frames begin
            x = plot.left() + round(plot.width() * self.num_context / frames)
            p.setPen(QPen(QColor(255, 80, 80), 2))
            p.drawLine(x, self._TOP - 2, x, plot.bottom())
        p.end()

    def level_at(self, pos: QPoint) -> tuple[int, int, int] | None:
        """(frame, row, level) under a widget position, or None outside the matrix."""
        if self.levels is None:
            return None
        plot = self._plot_rect()
        if not plot.contains(pos):
            return None
        rows, frames = self.levels.shape
        frame = min(frames - 1, (pos.x() - plot.left()) * frames // plot.width())
        row = min(rows - 1, (pos.y() - plot.top()) * rows // plot.height())
        return frame, row, int(self.levels[row, frame])

    def mouseMoveEvent(self, event) -> None:
        hit = self.level_at(event.position().toPoint())
        if hit is not None:
            frame, row, level = hit
            kind = "context" if frame < self.num_context else "new"
            state = "clean" if level == 0 else ("pure noise" if level >= self.steps else f"level {level}")
            QToolTip.showText(event.globalPosition().toPoint(),
                              f"frame {frame} ({kind}), after row {row}: {state} / {self.steps}", self)
        super().mouseMoveEvent(event)


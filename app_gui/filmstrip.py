"""A horizontal strip of thumbnails: context frames framed in blue, new frames in orange, pending in grey.

Each `FrameReady` fills its slot the moment it arrives, so a person watches the continuation grow.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QColor, QIcon, QImage, QPainter, QPen, QPixmap
from PySide6.QtWidgets import QAbstractItemView, QListView, QListWidget, QListWidgetItem, QWidget

from app_gui.heatmap import CONTEXT_COLOUR, NEW_COLOUR
from app_gui.player import to_qimage

THUMB = 72
_BORDER = 3


def _thumbnail(image: QImage | None, colour: QColor, label: str) -> QPixmap:
    pix = QPixmap(THUMB, THUMB)
    pix.fill(QColor(45, 45, 45))
    p = QPainter(pix)
    inner = THUMB - 2 * _BORDER
    if image is not None:
        scaled = image.size().scaled(inner, inner, Qt.AspectRatioMode.KeepAspectRatio)
        mode = (Qt.TransformationMode.FastTransformation if image.width() <= inner // 2
                else Qt.TransformationMode.SmoothTransformation)  # model-sized frames stay crisp
        p.drawImage(_BORDER + (inner - scaled.width()) // 2, _BORDER + (inner - scaled.height()) // 2,
                    image.scaled(scaled, Qt.AspectRatioMode.IgnoreAspectRatio, mode))
    else:
        p.setPen(QColor(140, 140, 140))
        p.drawText(pix.rect(), Qt.AlignmentFlag.AlignCenter, "…")
    p.setPen(QPen(colour, _BORDER * 2))
    p.drawRect(pix.rect())
    p.setPen(QColor(255, 255, 255))
    p.fillRect(0, THUMB - 14, 26, 14, QColor(0, 0, 0, 160))
    p.drawText(2, THUMB - 3, label)
    p.end()
    return pix


class Filmstrip(QListWidget):
    """Slots for context + new frames. `frameClicked(index)` when the user picks a thumbnail."""

    frameClicked = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setViewMode(QListView.ViewMode.IconMode)
        self.setFlow(QListView.Flow.LeftToRight)
        self.setWrapping(False)
        self.setMovement(QListView.Movement.Static)
        self.setIconSize(QSize(THUMB, THUMB))
        self.setHorizontalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.setSpacing(2)
        self.setFixedHeight(THUMB + 26)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setStyleSheet("QListWidget { background: #2a2a2a; }")
        self.setToolTip("Blue: frames from your clip · orange: new frames · click to view")
        self.num_context = 0
        self.filled: set[int] = set()
        self.itemClicked.connect(lambda item: self.frameClicked.emit(self.row(item)))

    def start_run(self, context_frames, total: int) -> None:
        """Slots for `total` frames; the first len(context_frames) are filled (the clip's context)."""
        self.clear()
        self.filled = set()
        self.num_context = len(context_frames)
        for i in range(total):
            item = QListWidgetItem()
            item.setSizeHint(QSize(THUMB + 4, THUMB + 4))
            self.addItem(item)
            self._paint(i, None)
        for i, frame in enumerate(context_frames):
            self.set_frame(i, frame)

    def set_frame(self, index: int, frame: np.ndarray) -> None:
        """Fill slot `index`, adding slots when a run turns out longer than planned."""
        while self.count() <= index:
            item = QListWidgetItem()
            item.setSizeHint(QSize(THUMB + 4, THUMB + 4))
            self.addItem(item)
            self._paint(self.count() - 1, None)
        self._paint(index, frame)
        self.filled.add(index)
        if index >= self.num_context:
            self.scrollToItem(self.item(index))

    def truncate(self, count: int) -> None:
        """Drop pending slots after a cancelled run, so the strip shows only frames that exist."""
        while self.count() > count:
            self.takeItem(self.count() - 1)

    @property
    def num_filled(self) -> int:
        return len(self.filled)

    @property
    def num_new(self) -> int:
        return sum(1 for i in self.filled if i >= self.num_context)

    def _paint(self, index: int, frame: np.ndarray | None) -> None:
        colour = CONTEXT_COLOUR if index < self.num_context else NEW_COLOUR
        if frame is None:
            colour = QColor(90, 90, 90)
        image = None if frame is None else to_qimage(frame)
        item = self.item(index)
        item.setIcon(QIcon(_thumbnail(image, colour, str(index))))
        item.setToolTip(f"frame {index} ({'context' if index < self.num_context else 'new'})")

"""A small video player for uint8 frames: play/pause, scrub, step, frame counter, and marks on the scrub bar.

Used twice: for the input clip (the context frames are shaded on the scrub bar) and for the result, which
fills in live while sampling (pending frames are grey; a marker shows where the continuation starts).
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QRect, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QImage, QPainter, QPen
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QSizePolicy,
    QSlider,
    QStyle,
    QStyleOptionSlider,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app_gui.heatmap import CONTEXT_COLOUR, NEW_COLOUR
from engine.run import DEFAULT_FPS

MAX_SPEED = 8  # J / L pressed again double the speed up to this many frames per tick


def to_qimage(frame: np.ndarray) -> QImage:
    """uint8 [H, W, 3] RGB -> a QImage that owns its pixels (safe after the array is gone)."""
    frame = np.ascontiguousarray(frame, dtype=np.uint8)
    h, w = frame.shape[:2]
    return QImage(frame.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()


class FrameView(QWidget):
    """Paints one frame, scaled to fit with its aspect ratio; tiny model frames are enlarged without blur."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.image: QImage | None = None
        self.badge = ""  # e.g. "context" / "new", drawn in a corner
        self.badge_colour = NEW_COLOUR
        self.placeholder = "Open a clip (Ctrl+O) or drop one here"
        self.setMinimumSize(160, 120)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def sizeHint(self) -> QSize:
        return QSize(480, 360)

    def set_image(self, image: QImage | None, badge: str = "", colour: QColor = NEW_COLOUR) -> None:
        self.image, self.badge, self.badge_colour = image, badge, colour
        self.update()

    def paintEvent(self, _event) -> None:
        p = QPainter(self)
        p.fillRect(self.rect(), QColor(20, 20, 20))
        if self.image is None or self.image.isNull():
            p.setPen(QColor(150, 150, 150))
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, self.placeholder)
            return
        iw, ih = self.image.width(), self.image.height()
        scale = min(self.width() / iw, self.height() / ih)
        w, h = max(1, int(iw * scale)), max(1, int(ih * scale))
        target = QRect((self.width() - w) // 2, (self.height() - h) // 2, w, h)
        # Blur hides nothing at 16x16 or 64x64 but makes it look broken: enlarge model-sized frames by pixel
        # replication; camera-sized frames are smoothed as any player would.
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, scale < 2 or iw > 96)
        p.drawImage(target, self.image)
        if self.badge:
            fm = p.fontMetrics()
            box = QRect(target.left() + 6, target.top() + 6, fm.horizontalAdvance(self.badge) + 12,
                        fm.height() + 4)
            p.fillRect(box, self.badge_colour)
            p.setPen(QColor(0, 0, 0))
            p.drawText(box, Qt.AlignmentFlag.AlignCenter, self.badge)
        p.end()


class MarkedSlider(QSlider):
    """A horizontal scrub bar that can shade a range (the context), grey out pending frames and draw a
    marker where the continuation starts."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(Qt.Orientation.Horizontal, parent)
        self.marker: int | None = None
        self.shade: tuple[int, int] | None = None  # half-open frame range
        self.available = None  # frames [0, available) exist; later ones are still being made

    def _x(self, index: float) -> int:
        opt = QStyleOptionSlider()
        self.initStyleOption(opt)
        groove = self.style().subControlRect(QStyle.ComplexControl.CC_Slider, opt,
                                             QStyle.SubControl.SC_SliderGroove, self)
        handle = self.style().subControlRect(QStyle.ComplexControl.CC_Slider, opt,
                                             QStyle.SubControl.SC_SliderHandle, self)
        span = max(1, self.maximum() - self.minimum())
        left = groove.left() + handle.width() / 2
        width = groove.width() - handle.width()
        return int(left + (index - self.minimum()) / span * width)

    def paintEvent(self, event) -> None:
        p = QPainter(self)
        h = self.height()
        if self.shade is not None:
            a, b = self.shade
            p.fillRect(QRect(self._x(a - 0.5), h // 2 - 5, max(3, self._x(b - 0.5) - self._x(a - 0.5)), 10),
                       QColor(CONTEXT_COLOUR.red(), CONTEXT_COLOUR.green(), CONTEXT_COLOUR.blue(), 150))
        if self.available is not None and self.available <= self.maximum():
            x0 = self._x(self.available - 0.5)
            p.fillRect(QRect(x0, h // 2 - 3, self._x(self.maximum() + 0.5) - x0, 6), QColor(90, 90, 90, 200))
        p.end()
        super().paintEvent(event)
        if self.marker is not None:
            p = QPainter(self)
            x = self._x(self.marker - 0.5)
            p.setPen(QPen(NEW_COLOUR, 3))
            p.drawLine(x, 1, x, h - 2)
            p.end()


class FramePlayer(QWidget):
    """Frames (some may still be pending: None) with transport controls. `frameChanged(index)` on seek."""

    frameChanged = Signal(int)

    def __init__(self, parent: QWidget | None = None, placeholder: str = "") -> None:
        super().__init__(parent)
        self.frames: list[np.ndarray | None] = []
        self.fps = DEFAULT_FPS
        self.marker: int | None = None  # first new frame; frames before it are context
        self.index = 0
        self.follow_live = True  # jump to each new frame while sampling, until the user takes over
        self.speed = 1  # playback: frames per tick and direction (J / L shuttle: -8..-1, 1..8)
        self._images: dict[int, QImage] = {}

        self.view = FrameView()
        if placeholder:
            self.view.placeholder = placeholder
        style = self.style()
        self.play_button = QToolButton()
        self.play_button.setIcon(style.standardIcon(QStyle.StandardPixmap.SP_MediaPlay))
        self.play_button.setToolTip("Play / pause (Space; J plays backwards, K pauses, L plays forwards, "
                                    "again for faster; Home / End: first / last frame)")
        self.play_button.clicked.connect(self.toggle_play)
        # Words, not ◀◀ / ▶▶: those read as rewind and fast-forward, and these step one frame.
        self.back_button = QToolButton()
        self.back_button.setText("−1 frame")
        self.back_button.setToolTip("Step back one frame (Left or ,)")
        self.back_button.clicked.connect(lambda: self.step(-1))
        self.next_button = QToolButton()
        self.next_button.setText("+1 frame")
        self.next_button.setToolTip("Step forward one frame (Right or .)")
        self.next_button.clicked.connect(lambda: self.step(1))
        self.slider = MarkedSlider()
        self.slider.setMinimum(0)
        self.slider.setMaximum(0)
        self.slider.valueChanged.connect(self._on_slider)
        self.slider.sliderPressed.connect(self._user_took_over)
        self.counter = QLabel("0 / 0")
        self.counter.setMinimumWidth(70)
        self.counter.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)

        bar = QHBoxLayout()
        bar.setContentsMargins(0, 0, 0, 0)
        for w in (self.back_button, self.play_button, self.next_button):
            w.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # Space is the window's play/pause, never "press again"
            bar.addWidget(w)
        bar.addWidget(self.slider, 1)
        bar.addWidget(self.counter)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.view, 1)
        layout.addLayout(bar)

        self.timer = QTimer(self)
        self.timer.timeout.connect(self._tick)
        self._sync_controls()

    # -- content --------------------------------------------------------------------------------------------

    def set_frames(self, frames, fps: float = DEFAULT_FPS, marker: int | None = None,
                   total: int | None = None) -> None:
        """Show `frames` (a list/array of uint8 [H, W, 3]); `total` > len(frames) leaves pending slots."""
        self.stop()
        self.frames = list(frames)
        if total is not None and total > len(self.frames):
            self.frames += [None] * (total - len(self.frames))
        self.fps = fps if fps and fps > 0 else DEFAULT_FPS
        self.marker = marker
        self.slider.marker = marker
        self._images.clear()
        self.follow_live = True
        self.index = -1
        self.slider.blockSignals(True)
        self.slider.setMaximum(max(0, len(self.frames) - 1))
        self.slider.setValue(0)
        self.slider.blockSignals(False)
        self._sync_controls()
        self.seek(0)

    def set_frame(self, index: int, frame: np.ndarray) -> None:
        """Fill frame `index` (a new frame arrived); the view follows it unless the user is watching."""
        if index >= len(self.frames):
            self.frames += [None] * (index + 1 - len(self.frames))
            self.slider.setMaximum(len(self.frames) - 1)
        self.frames[index] = frame
        self._images.pop(index, None)
        self._sync_controls()
        if self.follow_live and not self.timer.isActive():
            self.seek(index)
        elif index == self.index:
            self.seek(index, force=True)

    def clear(self) -> None:
        self.set_frames([])

    def set_shade(self, shade: tuple[int, int] | None) -> None:
        """Shade a frame range on the scrub bar (the context frames the model will see)."""
        self.slider.shade = shade
        self.slider.update()

    @property
    def available(self) -> int:
        """Frames present, counting from the start without gaps."""
        return next((i for i, f in enumerate(self.frames) if f is None), len(self.frames))

    def current_frame(self) -> np.ndarray | None:
        return self.frames[self.index] if 0 <= self.index < len(self.frames) else None

    # -- transport ------------------------------------------------------------------------------------------

    def seek(self, index: int, force: bool = False) -> None:
        if not self.frames:
            self.index = 0
            self.view.set_image(None)
            self._sync_controls()
            return
        index = int(np.clip(index, 0, len(self.frames) - 1))
        if index == self.index and not force:
            return
        self.index = index
        self.slider.blockSignals(True)
        self.slider.setValue(index)
        self.slider.blockSignals(False)
        frame = self.frames[index]
        if frame is None:
            self.view.set_image(None)
            self.view.placeholder = f"Frame {index} is still being made…"
        else:
            image = self._images.get(index)
            if image is None:
                image = self._images[index] = to_qimage(frame)
            is_context = self.marker is not None and index < self.marker
            badge = "" if self.marker is None else ("context" if is_context else "new")
            self.view.set_image(image, badge, CONTEXT_COLOUR if is_context else NEW_COLOUR)
        self._sync_counter()
        self.frameChanged.emit(index)

    def step(self, delta: int) -> None:
        """Pause and move `delta` frames (a frame step, as `,` / `.` in mpv)."""
        self._user_took_over()
        self.stop()
        self.seek(self.index + delta)

    def first(self) -> None:
        self.step(-self.index)

    def last(self) -> None:
        self.step(max(0, self.available - 1) - self.index)

    def shuttle(self, direction: int) -> None:
        """J / L as in video editors: play in `direction` (+1 forwards, -1 backwards); pressed again while
        playing that way, twice as fast (up to 8x)."""
        self._user_took_over()
        if self.playing and (self.speed > 0) == (direction > 0):
            self.speed = max(-MAX_SPEED, min(MAX_SPEED, self.speed * 2))
        else:
            self.speed = direction
            self.stop()
            self.play(keep_speed=True)

    def play(self, keep_speed: bool = False) -> None:
        if self.available < 2:
            return
        if not keep_speed:
            self.speed = 1
        if self.speed > 0 and self.index >= self.available - 1:
            self.seek(0)
        self.timer.start(max(10, int(1000 / self.fps)))
        self.play_button.setIcon(self.style().standardIcon(QStyle.StandardPixmap.SP_MediaPause))

    def stop(self) -> None:
        self.timer.stop()
        self.play_button.setIcon(self.style().standardIcon(QStyle.StandardPixmap.SP_MediaPlay))

    def toggle_play(self) -> None:
        if self.timer.isActive():
            self.stop()
        else:
            self.play()

    @property
    def playing(self) -> bool:
        return self.timer.isActive()

    def _tick(self) -> None:
        nxt = self.index + self.speed
        if nxt >= self.available:  # loop over the frames that exist, both ways
            nxt = 0
        elif nxt < 0:
            nxt = self.available - 1
        self.seek(nxt)

    def _on_slider(self, value: int) -> None:
        self.seek(value)

    def _user_took_over(self) -> None:
        self.follow_live = False

    def _sync_counter(self) -> None:
        total = len(self.frames)
        text = f"{self.index + 1 if total else 0} / {total}"
        if self.available < total:
            text += f" ({self.available} ready)"
        self.counter.setText(text)

    def _sync_controls(self) -> None:
        has = len(self.frames) > 0
        for w in (self.play_button, self.back_button, self.next_button, self.slider):
            w.setEnabled(has)
        self.slider.available = self.available if self.available < len(self.frames) else None
        self.slider.update()
        self._sync_counter()

"""One frame, drawn as large as its panel allows.

Three ways to draw, picked once per app: "auto" (textual-image: sixel or kitty graphics where the terminal
has them, half-cell blocks otherwise), "halfcell" (coloured blocks, what SVG screenshots can show) and
"text" (ASCII shading only, for terminals that show nothing else).
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
from PIL import Image as PILImage
from rich.segment import Segment
from textual.app import ComposeResult
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import Static

from app_tui.render import ascii_lines, halfcell_image

ImageMode = Literal["auto", "halfcell", "text"]


def graphics_widget_class() -> type[Widget] | None:
    """textual-image's widget when the terminal speaks sixel or the kitty graphics protocol, else None.
    Import it before the app starts: it asks the terminal, which it cannot once Textual owns it."""
    from textual_image.renderable import Image as Renderable
    from textual_image.renderable.sixel import Image as Sixel
    from textual_image.renderable.tgp import Image as TGP

    if Renderable in (Sixel, TGP):
        from textual_image.widget import Image

        return Image
    return None


def prepare_images(mode: ImageMode) -> None:
    """Let textual-image query the terminal now, before Textual takes it over (only "auto" asks)."""
    if mode == "auto":
        # Its "terminal did not answer" warnings carry tracebacks; the fallback is fine, so keep them quiet.
        logging.getLogger("textual_image").addHandler(logging.NullHandler())
        logging.getLogger("textual_image").propagate = False
        graphics_widget_class()


class CellFrame(Widget):
    """A frame drawn by ardiff itself in cells: half-cell colour blocks, or ASCII shading when text-only.

    Used wherever the terminal has no graphics protocol: it redraws without a layout pass (textual-image's
    widget relayouts the screen on every new image, too slow for a live view on a small CPU).
    """

    def __init__(self, text_only: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.text_only = text_only
        self.frame: np.ndarray | None = None
        self._lines: list[Strip] | None = None

    def set_frame(self, frame: np.ndarray | None) -> None:
        self.frame, self._lines = frame, None
        self.refresh()

    def on_resize(self) -> None:
        self._lines = None

    def fit(self) -> tuple[int, int]:
        """(cols, rows) keeping the frame's aspect; a cell is about twice as tall as wide."""
        h, w = self.frame.shape[:2]
        rows = self.size.height
        cols = min(self.size.width, max(1, round(rows * 2 * w / h)))
        rows = min(rows, max(1, round(cols * h / (2 * w))))
        return cols, rows

    def _build(self) -> list[Strip]:
        if self.frame is None or self.size.width < 1 or self.size.height < 1:
            return []
        cols, rows = self.fit()
        if self.text_only:
            lines = [Strip([Segment(line)]) for line in ascii_lines(self.frame, cols, rows)]
        else:
            lines = [Strip(row) for row in halfcell_image(self.frame, cols, rows)]
        top, left = (self.size.height - rows) // 2, (self.size.width - cols) // 2
        pad = Strip.blank(self.size.width)
        return [pad] * top + [Strip.join([Strip.blank(left), line]).crop_extend(0, self.size.width, None)
                              for line in lines]

    def render_line(self, y: int) -> Strip:
        if self._lines is None:
            self._lines = self._build()
        return self._lines[y] if y < len(self._lines) else Strip.blank(self.size.width)


class FramePreview(Widget):
    """A titled panel showing one frame (or a hint while there is none)."""

    def __init__(self, title: str, mode: ImageMode, empty: str = "no frame yet", **kwargs) -> None:
        super().__init__(**kwargs)
        self.border_title = title
        self.mode = mode
        self.empty = empty
        self.frame: np.ndarray | None = None

    def compose(self) -> ComposeResult:
        yield Static(self.empty, classes="empty")
        graphics = graphics_widget_class() if self.mode == "auto" else None
        if graphics:
            yield graphics(classes="image graphics")
        else:
            yield CellFrame(self.mode == "text", classes="image")

    def on_mount(self) -> None:
        self._sync()

    def show(self, frame: np.ndarray | None, caption: str = "") -> None:
        """Show a uint8 [H, W, 3] frame (None clears); `caption` goes in the panel's bottom border."""
        self.frame = frame
        self.border_subtitle = caption
        if self.is_mounted:
            self._sync()

    def _sync(self) -> None:
        self.query_one(".empty").display = self.frame is None
        image = self.query_one(".image")
        image.display = self.frame is not None
        if isinstance(image, CellFrame):
            image.set_frame(self.frame)
        elif self.frame is not None:
            image.image = PILImage.fromarray(self.frame)  # type: ignore[attr-defined]

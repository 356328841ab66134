"""Two takes side by side that step and play together, like a player's A/B compare.

The longer take drives: its transport plays, steps and scrubs, and the other take shows the same frame
number (its last frame once it has none).
"""

from __future__ import annotations

from PySide6.QtWidgets import QGridLayout, QLabel, QWidget

from app_gui.player import FramePlayer
from engine.takes import Take


class CompareView(QWidget):
    """A/B: `a` and `b` are full players; moving either moves the other to the same frame number."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.a = FramePlayer(placeholder="Select two takes in the Takes list and press Compare")
        self.b = FramePlayer(placeholder="")
        self.caption_a, self.caption_b = QLabel(), QLabel()
        for caption in (self.caption_a, self.caption_b):
            caption.setWordWrap(True)
        layout = QGridLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.caption_a, 0, 0)
        layout.addWidget(self.caption_b, 0, 1)
        layout.addWidget(self.a, 1, 0)
        layout.addWidget(self.b, 1, 1)
        layout.setRowStretch(1, 1)
        self.takes: tuple[Take, Take] | None = None
        self._syncing = False
        self.a.frameChanged.connect(lambda i: self._follow(self.b, i))
        self.b.frameChanged.connect(lambda i: self._follow(self.a, i))

    def set_takes(self, a: Take, b: Take) -> None:
        """Show take `a` left and `b` right, both at their first frame."""
        self.takes = (a, b)
        for player, caption, take in ((self.a, self.caption_a, a), (self.b, self.caption_b, b)):
            player.set_frames(list(take.video), take.fps, marker=take.num_context)
            caption.setText(take.label)

    @property
    def driver(self) -> FramePlayer:
        """The player the keys and Space act on: the longer take's."""
        return self.b if len(self.b.frames) > len(self.a.frames) else self.a

    def _follow(self, other: FramePlayer, index: int) -> None:
        if self._syncing or not other.frames:
            return
        self._syncing = True
        try:
            other.seek(min(index, len(other.frames) - 1))
        finally:
            self._syncing = False

    # the player interface the window's keys use
    def toggle_play(self) -> None:
        self.driver.toggle_play()

    def current_frame(self):
        return self.driver.current_frame()

    @property
    def index(self) -> int:
        return self.driver.index

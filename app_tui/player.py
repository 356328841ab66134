"""Playing a result in the terminal: which frame is shown, stepping, and playback at the clip's rate.

`Playhead` is the plain state (testable without a screen); `Player` adds the timer that advances it while
playing and calls `show(index)` whenever the shown frame changes. Keys, as in desktop players: Space plays
and pauses, Left/Right and `,`/`.` step one frame (and pause), Home/End go to the first/last frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from textual.dom import DOMNode
from textual.timer import Timer

from engine.run import DEFAULT_FPS


@dataclass
class Playhead:
    """The shown frame of `count` frames and whether it is playing. Playing stops at the last frame (as VLC
    and mpv do without looping); Space at the last frame plays again from the first."""

    count: int = 0
    index: int = 0
    playing: bool = False

    def reset(self, count: int, index: int | None = None) -> None:
        """A new result: `count` frames, shown at `index` (default: the last, the newest frame), paused."""
        self.count, self.playing = count, False
        self.index = max(0, count - 1) if index is None else min(max(index, 0), max(0, count - 1))

    def step(self, delta: int) -> None:
        self.playing = False
        self.index = min(max(self.index + delta, 0), max(0, self.count - 1))

    def first(self) -> None:
        self.playing, self.index = False, 0

    def last(self) -> None:
        self.playing, self.index = False, max(0, self.count - 1)

    def toggle(self) -> None:
        if self.count < 2:
            self.playing = False
            return
        if not self.playing and self.index >= self.count - 1:
            self.index = 0  # at the end: play again from the start
        self.playing = not self.playing

    def advance(self) -> None:
        """One tick of playback: the next frame; at the last frame, stop there."""
        if not self.playing:
            return
        if self.index < self.count - 1:
            self.index += 1
        if self.index >= self.count - 1:
            self.playing = False


class Player:
    """A Playhead driven by a timer on `owner` at `fps`; `show(index)` draws the frame at index."""

    def __init__(self, owner: DOMNode, show: Callable[[int], None]) -> None:
        self.owner = owner
        self.show = show
        self.head = Playhead()
        self.fps = DEFAULT_FPS
        self._timer: Timer | None = None

    def load(self, count: int, fps: float, index: int | None = None) -> None:
        """A new result of `count` frames at `fps`: paused at `index` (default: the last frame)."""
        self._stop_timer()
        self.fps = fps if fps > 0 else DEFAULT_FPS
        self.head.reset(count, index)
        self._shown()

    def clear(self) -> None:
        self._stop_timer()
        self.head.reset(0)

    @property
    def playing(self) -> bool:
        return self.head.playing

    def toggle(self) -> None:
        self.head.toggle()
        self._shown()

    def step(self, delta: int) -> None:
        self.head.step(delta)
        self._shown()

    def first(self) -> None:
        self.head.first()
        self._shown()

    def last(self) -> None:
        self.head.last()
        self._shown()

    def _tick(self) -> None:
        self.head.advance()
        self._shown()

    def _shown(self) -> None:
        if self.head.playing and self._timer is None:
            self._timer = self.owner.set_interval(1 / self.fps, self._tick)
        elif not self.head.playing:
            self._stop_timer()
        if self.head.count:
            self.show(self.head.index)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None


class PlayerKeys:
    """The player's key actions (Space, Left/Right, Home/End) for any screen or app holding a `player`."""

    player: Player

    def action_play(self) -> None:
        self.player.toggle()

    def action_step(self, delta: int) -> None:
        self.player.step(delta)

    def action_first(self) -> None:
        self.player.first()

    def action_last(self) -> None:
        self.player.last()

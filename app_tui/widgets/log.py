"""The log pane: keeps every message as text and wraps it when drawn, so a resize re-wraps old lines too
(RichLog keeps lines as first rendered, cut at the width of that moment)."""

from __future__ import annotations

import time

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

MAX_LINES = 2000  # a long session keeps its recent history; older lines go


class LogView(VerticalScroll):
    """Timestamped lines, newest at the bottom; scrolls to the end as lines arrive."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.entries: list[tuple[str, str, str]] = []  # (time, text, style)

    def compose(self) -> ComposeResult:
        yield Static("", id="log-text")

    def write(self, text: str, style: str = "") -> None:
        self.entries.append((time.strftime("%H:%M:%S"), text, style))
        del self.entries[:-MAX_LINES]
        if self.is_mounted:
            self._redraw()

    def on_mount(self) -> None:
        self._redraw()

    def _redraw(self) -> None:
        body = Text()
        for i, (stamp, text, style) in enumerate(self.entries):
            if i:
                body.append("\n")
            body.append(f"{stamp} ", style="dim")
            body.append(text, style=style)
        self.query_one("#log-text", Static).update(body)
        self.call_after_refresh(self.scroll_end, animate=False)

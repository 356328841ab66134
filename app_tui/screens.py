"""Modal screens: the key help (?) and the save dialog (ctrl+s)."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static

from app_tui.settings import PRECISION_HELP

KEYS = [
    ("g, F5", "generate (continue the clip; with no clip, generate from nothing)"),
    ("esc", "cancel the run; frames made so far are kept"),
    ("ctrl+s", "save the frames: .mp4, .gif, or a folder path for PNG frames"),
    ("o", "type a clip path (Enter opens it)"),
    ("f", "focus the file tree (Enter on a video or an image opens it)"),
    ("tab / shift+tab", "move between fields"),
    ("?, F1", "this help"),
    ("q, F10, ctrl+q", "quit (prints saved paths; twice if frames are unsaved)"),
]


class HelpScreen(ModalScreen[None]):
    """The keys, as a table; any of esc, q, ? closes it. Scrolls (arrows, pgdn) on a short terminal."""

    BINDINGS = [Binding("escape,q,question_mark,f1", "app.pop_screen", "Close")]
    AUTO_FOCUS = "#help-box"  # so the keys scroll it

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 2))
        table.add_column(no_wrap=True, style="bold")
        table.add_column()  # descriptions wrap under themselves, not under the keys
        for key, what in KEYS:
            table.add_row(key, what)
        with VerticalScroll(id="help-box") as box:
            box.border_title = "ardiff-tui keys"
            box.border_subtitle = "esc closes"
            yield Static(table, id="help-keys")
            yield Static("Settings: s = levels between neighbouring frames (0 synchronous, >= steps one by "
                         "one); "
                         "context = frames taken from the end of the clip; "
                         "hist. guide = history guidance W: 1 off, > 1 leans harder on the context, blank "
                         "the model's own, any W != 1 one more DiT call per row; "
                         "device auto uses CUDA if present; "
                         f"precision {PRECISION_HELP}.",
                         id="help-notes")


class SaveScreen(ModalScreen[str | None]):
    """Asks where to save; returns the path as typed (a trailing / means a PNG folder), or None."""

    BINDINGS = [Binding("escape", "dismiss_none", "Cancel")]

    def __init__(self, suggestion: str, num_frames: int) -> None:
        super().__init__()
        self.suggestion = suggestion
        self.num_frames = num_frames

    def compose(self) -> ComposeResult:
        with Vertical(id="save-box") as box:
            box.border_title = f"Save {self.num_frames} frames"
            box.border_subtitle = "enter saves, esc cancels"
            yield Label(".mp4 .mov .mkv (H.264), .gif, or a folder/ for PNG frames")
            yield Input(self.suggestion, id="save-path", compact=True)
            yield Label("", id="save-warning")

    def on_mount(self) -> None:
        self.query_one(Input).focus()
        self._warn(self.suggestion)

    def on_input_changed(self, event: Input.Changed) -> None:
        self._warn(event.value)

    def _warn(self, text: str) -> None:
        path = Path(text.strip()).expanduser()
        exists = bool(text.strip()) and path.exists()
        self.query_one("#save-warning", Label).update("exists: it will be replaced" if exists else "")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        self.dismiss(text or None)

    def action_dismiss_none(self) -> None:
        self.dismiss(None)

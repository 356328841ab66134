"""Modal screens: the key help (?) and the save dialog (ctrl+s)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Select, Static

from app_tui.settings import PRECISION_HELP
from engine.save_options import PART_LABELS, PARTS, SIZE_LABELS, SIZES, SaveOptions

# Letters work outside text fields; the ctrl keys work everywhere, in a field too (the footer shows which).
KEYS = [
    ("g, ctrl+g, F5", "generate (continue the clip; with no clip, from nothing): every run is a take"),
    ("esc", "cancel the run (its frames become a take); in a field, leave the field"),
    ("ctrl+s", "save the shown take: .mp4, .gif, or a folder path for PNG frames; what and at which size"),
    ("t, ctrl+t", "the takes list: enter shows, s saves, d deletes, c on two takes compares them"),
    ("space", "play / pause the shown take"),
    ("left/right  , .", "step one frame back / forward"),
    ("home / end", "first / last frame"),
    ("o, ctrl+o", "type a clip path (Enter opens it)"),
    ("f", "focus the file tree (Enter on a video or an image opens it)"),
    ("tab / shift+tab", "move between fields"),
    ("?, F1", "this help"),
    ("q, ctrl+q, ctrl+c, F10", "quit (a run is stopped first; unsaved takes: save, discard or cancel)"),
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
                         f"precision {PRECISION_HELP}; "
                         "adapt = fine-tune the model on the clip before continuing it (kept only when it "
                         "predicts held-out frames of the clip better). "
                         "The settings, save choices and last folder are remembered between sessions.",
                         id="help-notes")


@dataclass(frozen=True)
class SaveChoice:
    """Where to save (as typed: a trailing / means a PNG folder) and what (engine.save_options)."""

    path: str
    options: SaveOptions


class SaveScreen(ModalScreen[SaveChoice | None]):
    """Asks where to save and what: the clip and its continuation or the new frames only, at the model's
    size or the input clip's. Returns a SaveChoice, or None."""

    BINDINGS = [Binding("escape", "dismiss_none", "Cancel")]

    def __init__(self, suggestion: str, title: str, options: SaveOptions = SaveOptions()) -> None:
        super().__init__()
        self.suggestion = suggestion
        self.title_text = title
        self.options = options

    def compose(self) -> ComposeResult:
        with Vertical(id="save-box") as box:
            box.border_title = self.title_text
            box.border_subtitle = "enter saves, esc cancels"
            yield Label(".mp4 .mov .mkv (H.264), .gif, or a folder/ for PNG frames")
            yield Input(self.suggestion, id="save-path", compact=True)
            yield Label("", id="save-warning")
            yield Select([(PART_LABELS[p], p) for p in PARTS], value=self.options.part, allow_blank=False,
                         id="save-part", compact=True)
            yield Select([(SIZE_LABELS[s], s) for s in SIZES], value=self.options.size, allow_blank=False,
                         id="save-size", compact=True)

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
        options = SaveOptions(str(self.query_one("#save-part", Select).value),
                              str(self.query_one("#save-size", Select).value))
        self.dismiss(SaveChoice(text, options) if text else None)

    def action_dismiss_none(self) -> None:
        self.dismiss(None)

"""The question asked before unsaved takes would be lost (quit, opening a clip, deleting a take):
Save / Discard / Cancel, as buttons and as keys s / d / Esc."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label

SAVE, DISCARD, CANCEL = "save", "discard", "cancel"


class UnsavedScreen(ModalScreen[str]):
    """Asks what to do with unsaved takes; dismisses with SAVE, DISCARD or CANCEL. `details` says what Save
    writes where, so the answer is an informed one."""

    BINDINGS = [
        Binding("s", "choose('save')", "Save"),
        Binding("d", "choose('discard')", "Discard"),
        Binding("escape,c", "choose('cancel')", "Cancel"),
    ]
    AUTO_FOCUS = "#prompt-save"

    def __init__(self, question: str, details: list[str], discard_label: str = "Discard") -> None:
        super().__init__()
        self.question = question
        self.details = details
        self.discard_label = discard_label

    def compose(self) -> ComposeResult:
        with Vertical(id="prompt-box") as box:
            box.border_title = "Unsaved takes"
            box.border_subtitle = "s save · d discard · esc cancel"
            yield Label(self.question, id="prompt-question")
            for line in self.details:
                yield Label(line, classes="prompt-detail")
            with Horizontal(id="prompt-buttons"):
                yield Button("Save", id="prompt-save", variant="success", compact=True)
                yield Button(self.discard_label, id="prompt-discard", variant="error", compact=True)
                yield Button("Cancel", id="prompt-cancel", compact=True)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(str(event.button.id).removeprefix("prompt-"))

    def action_choose(self, choice: str) -> None:
        self.dismiss(choice)

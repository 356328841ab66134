"""The one question asked before unsaved takes could be lost (quit, open another clip, delete): Save,
Discard or Cancel, with Qt's standard buttons so every desktop shows them in its own order and words."""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtWidgets import QMessageBox, QWidget

from engine.takes import Take

Button = QMessageBox.StandardButton


def ask_unsaved(parent: QWidget, takes: Sequence[Take], doing: str) -> Button:
    """Ask what to do with `takes` before `doing` ("quitting", "opening another clip", "deleting it"):
    returns Save, Discard or Cancel (Escape and closing the box are Cancel)."""
    n = len(takes)
    what = "take is" if n == 1 else "takes are"
    box = QMessageBox(QMessageBox.Icon.Warning, "Unsaved takes",
                      f"{n} {what} not saved. Save before {doing}?",
                      Button.Save | Button.Discard | Button.Cancel, parent)
    box.setInformativeText("\n".join(take.label for take in takes))
    box.setDefaultButton(Button.Save)
    box.setEscapeButton(Button.Cancel)
    return Button(box.exec())

"""The takes list: every run of the session as one line (`engine.takes.Take.label`), and the buttons to show,
compare, save and delete them.

Widgets and wording only: the window decides what a request does (and asks before deleting unsaved work).
"""

from __future__ import annotations

from collections.abc import Iterable

from PySide6.QtCore import QItemSelectionModel, Qt, Signal
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QAbstractItemView,
    QGroupBox,
    QHBoxLayout,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app_gui.panels import tab_focus_only
from engine.takes import Take

NUMBER = Qt.ItemDataRole.UserRole


class TakesPanel(QGroupBox):
    """The session's takes, newest last. Click shows one; select two and Compare plays them side by side."""

    takeChosen = Signal(int)  # a take number
    saveRequested = Signal(int)
    deleteRequested = Signal(int)
    compareRequested = Signal(int, int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Takes", parent)
        self.list = QListWidget()
        self.list.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.list.setWordWrap(True)
        self.list.setMinimumHeight(70)
        self.list.setToolTip("Every run is kept here as a take. Click one to show it; Ctrl+click a second "
                             "and press Compare to play both side by side; Del deletes the selected take.")
        self.list.itemClicked.connect(lambda item: self.takeChosen.emit(item.data(NUMBER)))
        self.list.itemSelectionChanged.connect(self._sync_buttons)
        delete = QShortcut(QKeySequence(QKeySequence.StandardKey.Delete), self.list)
        delete.setContext(Qt.ShortcutContext.WidgetShortcut)
        delete.activated.connect(self._delete)
        self.save_button = QPushButton("Save…")
        self.save_button.setToolTip("Save the selected take (Ctrl+S saves the take on screen)")
        self.save_button.clicked.connect(lambda: self._emit_selected(self.saveRequested))
        self.compare_button = QPushButton("Compare")
        self.compare_button.setToolTip("Play the two selected takes side by side, in step (select two with "
                                       "Ctrl+click)")
        self.compare_button.clicked.connect(self._compare)
        self.delete_button = QPushButton("Delete")
        self.delete_button.setToolTip("Delete the selected take (Del); asks first when it is not saved")
        self.delete_button.clicked.connect(self._delete)
        tab_focus_only(self.save_button, self.compare_button, self.delete_button)
        buttons = QHBoxLayout()
        for b in (self.save_button, self.compare_button, self.delete_button):
            buttons.addWidget(b)
        layout = QVBoxLayout(self)
        layout.addWidget(self.list, 1)
        layout.addLayout(buttons)
        self._sync_buttons()

    def set_takes(self, takes: Iterable[Take], current: Take | None) -> None:
        """Show `takes` (one line each, the current one selected); keeps a two-take selection for Compare."""
        kept = set(self.selected())
        self.list.blockSignals(True)
        self.list.clear()
        for take in takes:
            item = QListWidgetItem(take.label)
            item.setData(NUMBER, take.number)
            item.setToolTip(f"saved to {take.saved_to}" if take.saved_to else "not saved yet")
            self.list.addItem(item)
            if (current is not None and take.number == current.number) or (len(kept) > 1 and take.number in kept):
                item.setSelected(True)
                self.list.setCurrentItem(item, QItemSelectionModel.SelectionFlag.NoUpdate)
        self.list.blockSignals(False)
        self._sync_buttons()

    def labels(self) -> list[str]:
        return [self.list.item(i).text() for i in range(self.list.count())]

    def selected(self) -> list[int]:
        """Numbers of the selected takes, in list order."""
        return [self.list.item(i).data(NUMBER) for i in range(self.list.count()) if self.list.item(i).isSelected()]

    def select(self, *numbers: int) -> None:
        """Select the takes numbered `numbers` (as Ctrl+click does)."""
        for i in range(self.list.count()):
            self.list.item(i).setSelected(self.list.item(i).data(NUMBER) in numbers)

    def _sync_buttons(self) -> None:
        n = len(self.selected())
        self.save_button.setEnabled(n == 1)
        self.delete_button.setEnabled(n >= 1)
        self.compare_button.setEnabled(n == 2)

    def _emit_selected(self, signal) -> None:
        chosen = self.selected()
        if len(chosen) == 1:
            signal.emit(chosen[0])

    def _delete(self) -> None:
        for number in self.selected():
            self.deleteRequested.emit(number)

    def _compare(self) -> None:
        chosen = self.selected()
        if len(chosen) == 2:
            self.compareRequested.emit(*chosen)

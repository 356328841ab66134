"""The save dialog for one take: where (the suggested name, or Browse…), what (clip + continuation, or the new
frames only) and at what size (the model's, or the input clip's), as `engine.save_options` defines them."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QWidget,
)

from engine.save_options import PART_LABELS, PARTS, SIZE_LABELS, SIZES, SaveOptions
from engine.takes import Take

SAVE_FILTERS = {"MP4 video (*.mp4)": ".mp4", "GIF animation (*.gif)": ".gif", "PNG frames (folder)": ""}
NO_INPUT_SIZE = "a take made from nothing has no input clip: it is saved at the model's size"


class SaveDialog(QDialog):
    """Choose the file (.mp4, .gif, or a name without a suffix: a folder of PNG frames) and what it holds."""

    def __init__(self, parent: QWidget | None, take: Take, suggested: Path, options: SaveOptions) -> None:
        super().__init__(parent)
        self.setWindowTitle(f"Save take {take.number}")
        self.take = take
        self.path = QLineEdit(str(suggested))
        self.path.setMinimumWidth(360)
        self.path.setToolTip(".mp4 or .gif; a name without a suffix saves a folder of PNG frames")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        path_row = QHBoxLayout()
        path_row.addWidget(self.path, 1)
        path_row.addWidget(browse)
        self.part = QComboBox()
        for key in PARTS:
            self.part.addItem(PART_LABELS[key], key)
        self.part.setToolTip("The context frames from the clip, then the new ones; or the new frames only")
        self.size = QComboBox()
        side = take.video.shape[1]
        for key in SIZES:
            label = SIZE_LABELS[key]
            if key == "model":
                label += f" ({side}x{side})"
            elif take.input_hw is not None:
                label += f" ({min(take.input_hw)}x{min(take.input_hw)}, upscaled)"
            self.size.addItem(label, key)
        self.size.setToolTip("The model's frames as made, or upscaled (Lanczos) to the side of the square the "
                             "model saw of the input clip")
        if take.input_hw is None:
            self.size.model().item(SIZES.index("input")).setEnabled(False)
            self.size.setToolTip(NO_INPUT_SIZE)
        self.part.setCurrentIndex(PARTS.index(options.part))
        self.size.setCurrentIndex(SIZES.index(options.size if take.input_hw is not None else "model"))
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form = QFormLayout(self)
        form.addRow(QLabel(take.label))
        form.addRow("File", path_row)
        form.addRow("Holds", self.part)
        form.addRow("Size", self.size)
        form.addRow(buttons)

    def _browse(self) -> None:
        path, chosen = QFileDialog.getSaveFileName(self, "Save the take", self.path.text(), ";;".join(SAVE_FILTERS))
        if not path:
            return
        suffix = SAVE_FILTERS.get(chosen, "")
        if suffix and not Path(path).suffix:
            path += suffix
        elif not suffix and chosen in SAVE_FILTERS:
            path = str(Path(path).with_suffix(""))  # PNG frames: a folder
        self.path.setText(path)

    def choice(self) -> tuple[Path, SaveOptions]:
        """The file and what it holds, as chosen."""
        return Path(self.path.text().strip()).expanduser(), SaveOptions(self.part.currentData(),
                                                                        self.size.currentData())

"""The two small panels beside the parameters: which model runs where, and the run controls with progress.

They hold widgets and wording only; the window decides what happens when a button is pressed.
"""

from __future__ import annotations

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QPainter
from PySide6.QtWidgets import (
    QComboBox,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from engine.run import DEVICE_LABELS, DEVICES, PRECISION_LABELS, PRECISIONS, clock  # noqa: F401 (labels: window.py)

PRECISION_TOOLTIP = (
    "How the model computes. Auto: bfloat16 where this CPU or GPU does it natively (CUDA, AMX, "
    "AVX512-BF16), else float32. float32: the same result on every machine. bfloat16: always "
    "(slow where the CPU only emulates it). An export folder runs at the precision it was exported with.")


def tab_focus_only(*buttons: QPushButton) -> None:
    """Reachable by Tab, but a click leaves focus where it was: Space stays play/pause, as in any video tool,
    instead of pressing the last clicked button again."""
    for b in buttons:
        b.setFocusPolicy(Qt.FocusPolicy.TabFocus)


class ModelPanel(QGroupBox):
    """What model is loaded (or why none is), the device and precision, and buttons to pick another model."""

    deviceChosen = Signal(str)
    precisionChosen = Signal(str)
    openRequested = Signal()
    defaultRequested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Model", parent)
        self.label = QLabel("Loading…")
        self.label.setWordWrap(True)
        self.warning = QLabel()
        self.warning.setWordWrap(True)
        self.warning.setStyleSheet("color: #b35c00;")
        self.warning.hide()
        self.device_combo = QComboBox()
        for key in DEVICES:
            self.device_combo.addItem(DEVICE_LABELS[key], key)
        self.device_combo.setToolTip("Where the model runs. Auto picks CUDA when there is a GPU.")
        self.device_combo.activated.connect(lambda _: self.deviceChosen.emit(self.device()))
        self.precision_combo = QComboBox()
        for key in PRECISIONS:
            self.precision_combo.addItem(PRECISION_LABELS[key], key)
        self.precision_combo.setToolTip(PRECISION_TOOLTIP)
        self.precision_combo.activated.connect(lambda _: self.precisionChosen.emit(self.precision()))
        self.open_button = QPushButton("Open checkpoint…")
        self.open_button.setToolTip("Use a model file (.safetensors) made with ardiff-train")
        self.open_button.clicked.connect(self.openRequested)
        self.default_button = QPushButton("Default model")
        self.default_button.setToolTip("The model that ships with ardiff")
        self.default_button.clicked.connect(self.defaultRequested)
        tab_focus_only(self.open_button, self.default_button)

        device_row = QHBoxLayout()
        device_row.addWidget(QLabel("Device"))
        device_row.addWidget(self.device_combo, 1)
        device_row.addWidget(QLabel("Precision"))
        device_row.addWidget(self.precision_combo, 1)
        buttons = QHBoxLayout()
        buttons.addWidget(self.open_button, 1)
        buttons.addWidget(self.default_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.label)
        layout.addWidget(self.warning)
        layout.addLayout(device_row)
        layout.addLayout(buttons)

    def device(self) -> str:
        return self.device_combo.currentData() or "auto"

    def set_cuda_problem(self, problem: str | None) -> None:
        """Grey out CUDA in the device list, with `problem` (why it cannot run here) as its tooltip."""
        item = self.device_combo.model().item(self.device_combo.findData("cuda"))
        item.setEnabled(problem is None)
        item.setToolTip(problem or "Run on the NVIDIA GPU")

    def select_device(self, device: str) -> None:
        index = self.device_combo.findData(device if device in DEVICES else "auto")
        self.device_combo.setCurrentIndex(max(0, index))

    def precision(self) -> str:
        """The precision chosen: "auto" | "fp32" | "bf16"."""
        return self.precision_combo.currentData() or "auto"

    def select_precision(self, precision: str) -> None:
        """Show `precision` as chosen (an unknown value shows Auto); loads nothing."""
        index = self.precision_combo.findData(precision if precision in PRECISIONS else "auto")
        self.precision_combo.setCurrentIndex(max(0, index))

    def show_loading(self, what: str) -> None:
        self.label.setText(f"Loading {what}…")

    def show_model(self, description: str) -> None:
        self.label.setText(description)
        self.warning.hide()

    def show_problem(self, message: str) -> None:
        """No model could be loaded: say why, and where to go next."""
        self.label.setText("No model loaded")
        self.warning.setText(f"⚠ {message}\nUse “Open checkpoint…” to pick a model file.")
        self.warning.show()

    def set_busy(self, busy: bool) -> None:
        for w in (self.device_combo, self.precision_combo, self.open_button, self.default_button):
            w.setEnabled(not busy)


class RunPanel(QGroupBox):
    """Generate / Cancel, the progress bar with frames/s and ETA, and what to do with the result."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Run", parent)
        self.generate_button = QPushButton("Generate")
        self.generate_button.setToolTip("Start (Ctrl+Enter)")
        self.generate_button.setDefault(True)
        self.generate_button.setMinimumHeight(34)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop after the current row and keep the frames made so far (Esc)")
        self.further_button = QPushButton("Continue further")
        self.further_button.setToolTip("Continue again from the end of the result (Ctrl+Shift+Enter)")
        self.save_button = QPushButton("Save…")
        self.save_button.setToolTip("Save the result as MP4, GIF or PNG frames (Ctrl+S)")
        tab_focus_only(self.generate_button, self.cancel_button, self.further_button, self.save_button)
        self.progress = QProgressBar()
        self.progress.setFormat("")  # "%v / %m frames" once a run starts
        self.progress.setValue(0)
        self.label = QLabel("Ready")
        self.label.setWordWrap(True)
        self.eta: float | None = None  # the time left last shown, in seconds

        run_row = QHBoxLayout()
        run_row.addWidget(self.generate_button, 2)
        run_row.addWidget(self.cancel_button, 1)
        after_row = QHBoxLayout()
        after_row.addWidget(self.further_button)
        after_row.addWidget(self.save_button)
        layout = QVBoxLayout(self)
        layout.addLayout(run_row)
        layout.addWidget(self.progress)
        layout.addWidget(self.label)
        layout.addLayout(after_row)

    def set_state(self, busy: bool, loading: bool, has_result: bool) -> None:
        self.generate_button.setEnabled(not busy and not loading)
        text = "Generating…" if busy else ("Loading model…" if loading else "Generate")
        self.generate_button.setText(text)
        self.cancel_button.setEnabled(busy)
        self.further_button.setEnabled(not busy and has_result)
        self.save_button.setEnabled(not busy and has_result)

    def start(self, num_new: int, rows: int) -> None:
        self.eta = None
        self.progress.setFormat("%v / %m frames")
        self.progress.setRange(0, num_new)
        self.progress.setValue(0)
        self.label.setText(f"Starting: {rows} rows to run…")

    def show_progress(self, row: int, total_rows: int, frames_done: int, num_new: int,
                      elapsed: float, seconds_left: float | None = None) -> None:
        """One Progress event in words: rows, frames, speed and time left (`seconds_left` from the run's plan,
        which weighs rows by their work; without it, rows count alike)."""
        self.progress.setValue(min(frames_done, num_new))
        rate = frames_done / elapsed if elapsed > 0 else 0.0
        eta = seconds_left if seconds_left is not None else elapsed / row * (total_rows - row) if row else 0.0
        self.eta = eta
        self.label.setText(f"Row {row}/{total_rows} · {frames_done}/{num_new} frames · "
                           f"{rate:.1f} frames/s · ETA {clock(eta)}")

    def show_adapting(self, step: int, total: int, loss: float, seconds_left: float | None) -> None:
        """One Adapting event: the fine-tuning steps on the progress bar, the loss and the time left."""
        self.progress.setFormat("adapting %v / %m")
        self.progress.setRange(0, max(1, total))
        self.progress.setValue(min(step, total))
        self.eta = seconds_left
        eta = "" if seconds_left is None else f" · ETA {clock(seconds_left)}"
        self.label.setText(f"Adapting to the clip: step {step}/{total} · loss {loss:.4f}{eta}")

    def cancelling(self) -> None:
        self.cancel_button.setEnabled(False)
        self.label.setText("Cancelling: finishing the current row…")


class ElidedLabel(QLabel):
    """A one-line label that shrinks with the window: it paints its text cut with "…" (whole in `text()` and
    the tooltip) instead of pushing the status bar's message aside or off the window."""

    def __init__(self, text: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)
        self.setText(text)

    def setText(self, text: str) -> None:
        super().setText(text)
        self.setToolTip(text)

    def minimumSizeHint(self) -> QSize:
        return QSize(40, super().minimumSizeHint().height())

    def shown_text(self) -> str:
        """The text as painted at the label's width."""
        return self.fontMetrics().elidedText(self.text(), Qt.TextElideMode.ElideMiddle, self.contentsRect().width())

    def paintEvent(self, _event) -> None:
        painter = QPainter(self)
        painter.drawText(self.contentsRect(), Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter,
                         self.shown_text())

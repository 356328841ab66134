"""The parameter panel: s, new frames, steps, context, seed, history guidance, class and guidance, each with
a short hint.

Only widgets and their limits live here; the window reads them when Generate is pressed (`history_guidance_value`,
`class_value`) and keeps them between runs with `load` / `store`.
"""

from __future__ import annotations

import random

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QSlider,
    QSpinBox,
    QToolButton,
    QWidget,
)

from app_gui.settings import Settings
from engine.run import DEFAULT_ADAPT_STEPS, MINIMUMS

ADAPT_TOOLTIP = (f"Fine-tune the model on this clip for {DEFAULT_ADAPT_STEPS} steps before continuing it; the "
                 "adapted model is used only if it predicts frames held out of the clip better. Costs about a "
                 "minute or two on a CPU. Needs a clip (not for “Generate from nothing”).")

MAX_SEED = 2**31 - 1
MODE_CONTINUE, MODE_GENERATE = 0, 1
MAX_HISTORY_GUIDANCE = 10.0
HISTORY_STEP = 0.5  # the spin box's lowest value is one step below 0: "model", the checkpoint's own value


class ParameterPanel(QWidget):
    """Sampling parameters. `changed()` whenever any of them changes (to refresh the row estimate)."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)

        self.mode = QComboBox()
        self.mode.addItems(["Continue the clip", "Generate from nothing"])
        self.mode.setToolTip("Continue: new frames follow the end of your clip. "
                             "Generate: a new video from noise.")
        form.addRow("Start from", self.mode)

        self.s_slider = QSlider(Qt.Orientation.Horizontal)
        self.s_spin = QSpinBox()
        self.s_slider.valueChanged.connect(self.s_spin.setValue)
        self.s_spin.valueChanged.connect(self.s_slider.setValue)
        s_row = QHBoxLayout()
        s_row.addWidget(self.s_slider, 1)
        s_row.addWidget(self.s_spin)
        s_tip = ("How many noise levels each frame trails its predecessor. 0: all frames are denoised "
                 "together; at 'steps' or more: each frame is finished before the next one starts.")
        for w in (self.s_slider, self.s_spin):
            w.setToolTip(s_tip)
        form.addRow("s", s_row)
        self.s_hint = QLabel("0 = all frames together, higher = one after another")
        self.s_hint.setWordWrap(True)
        self.s_hint.setStyleSheet("color: palette(mid); font-size: 11px;")
        form.addRow("", self.s_hint)

        self.new_frames = QSpinBox()
        self.new_frames.setRange(MINIMUMS["new_frames"], 512)
        self.new_frames.setToolTip("How many frames to add")
        form.addRow("New frames", self.new_frames)

        self.steps = QSpinBox()
        self.steps.setRange(MINIMUMS["steps"], 1000)
        self.steps.setToolTip("Denoising steps per frame: more is slower and usually cleaner")
        self.steps.valueChanged.connect(self._steps_changed)
        form.addRow("Sampling steps", self.steps)

        self.context = QSpinBox()
        self.context.setRange(MINIMUMS["context"], 15)  # the maximum follows the model: set_limits
        self.context.setToolTip("How many frames from the end of the clip the model looks at")
        form.addRow("Context frames", self.context)

        self.adapt = QCheckBox("Adapt to this clip")
        self.adapt.setToolTip(ADAPT_TOOLTIP)
        form.addRow("", self.adapt)

        self.seed = QSpinBox()
        self.seed.setRange(MINIMUMS["seed"], MAX_SEED)
        self.seed.setToolTip("Same seed + same settings = same result")
        self.dice = QToolButton()
        self.dice.setText("Random")  # words, not a dice emoji: emoji fonts are often missing
        self.dice.setToolTip("New random seed")
        self.dice.clicked.connect(self.roll_seed)
        seed_row = QHBoxLayout()
        seed_row.addWidget(self.seed, 1)
        seed_row.addWidget(self.dice)
        form.addRow("Seed", seed_row)

        self.history_guidance = QDoubleSpinBox()
        self.history_guidance.setRange(-HISTORY_STEP, MAX_HISTORY_GUIDANCE)
        self.history_guidance.setSingleStep(HISTORY_STEP)
        self.history_guidance.setDecimals(1)
        self._history_tip = (
            "Lean on the context: x0 = free + w (x0 − free), free = the frames in flight without what came "
            "before. 1 = off, above 1 leans harder on the context, 0 ignores it; “model” = the model's own "
            "value. Any value but 1 costs one more network call per row (about 0.6x the speed).")
        self.set_model_history_guidance(None)
        form.addRow("History guidance", self.history_guidance)

        self.class_label = QSpinBox()
        self.class_label.setRange(-1, 0)
        self.class_label.setSpecialValueText("none (unconditional)")
        self.class_label.setToolTip("What kind of video to make (class-conditional models only)")
        self.guidance = QDoubleSpinBox()
        self.guidance.setRange(0.0, 20.0)
        self.guidance.setSingleStep(0.5)
        self.guidance.setDecimals(1)
        self.guidance.setToolTip("Classifier-free guidance: higher follows the class more strongly (1 = off)")
        self.class_caption, self.guidance_caption = QLabel("Class"), QLabel("Guidance scale")
        self._wanted_class = -1
        form.addRow(self.class_caption, self.class_label)
        form.addRow(self.guidance_caption, self.guidance)
        self.set_num_classes(0)

        for w in (self.s_spin, self.new_frames, self.steps, self.context, self.seed, self.class_label):
            w.valueChanged.connect(self.changed)
        self.guidance.valueChanged.connect(self.changed)
        self.history_guidance.valueChanged.connect(self.changed)
        self.adapt.toggled.connect(self.changed)
        self.mode.currentIndexChanged.connect(self._mode_changed)
        self._steps_changed(self.steps.value())

    # -- limits from the model ------------------------------------------------------------------------------

    def set_limits(self, window: int, max_steps: int) -> None:
        """Clamp context to window - 1 (one new frame must fit) and steps to the model's timesteps."""
        self.context.setMaximum(max(MINIMUMS["context"], window - 1))
        self.context.setToolTip(f"How many frames from the end of the clip the model looks at "
                                f"(1..{window - 1}: the model sees {window} frames at a time)")
        self.steps.setMaximum(max(1, max_steps))

    def set_num_classes(self, num_classes: int) -> None:
        """Show class and guidance only for class-conditional models."""
        self.class_label.setMaximum(max(-1, num_classes - 1))
        if num_classes > 0:  # the saved class could not be set before the model said how many there are
            self.class_label.setValue(min(self._wanted_class, num_classes - 1))
        for w in (self.class_label, self.guidance, self.class_caption, self.guidance_caption):
            w.setVisible(num_classes > 0)

    def set_model_history_guidance(self, value: float | None, supported: bool = True) -> None:
        """Name the loaded model's own history guidance on the "model" choice (None: no model yet); a model that
        cannot be history-guided (Pipeline.history_guidance_supported) greys the field out and says why."""
        text = "model default" if value is None else f"model ({value:g})"
        self.history_guidance.setSpecialValueText(text)
        self.history_guidance.setEnabled(supported)
        self.history_guidance.setToolTip(self._history_tip if supported else
                                         "This model cannot be history-guided: its DiT predicts a correction to "
                                         "the frame before, which the history-free call does not see.")

    def _steps_changed(self, steps: int) -> None:
        # s >= steps is already frame by frame; larger values change nothing.
        self.s_slider.setRange(MINIMUMS["s"], steps)
        self.s_spin.setRange(MINIMUMS["s"], steps)

    def _mode_changed(self, mode: int) -> None:
        self.context.setEnabled(mode == MODE_CONTINUE)
        self.adapt.setEnabled(mode == MODE_CONTINUE)  # adapting learns from the clip: none from nothing
        self.changed.emit()

    def roll_seed(self) -> None:
        self.seed.setValue(random.randint(0, MAX_SEED))

    # -- values ---------------------------------------------------------------------------------------------

    @property
    def generate_mode(self) -> bool:
        return self.mode.currentIndex() == MODE_GENERATE

    def class_value(self) -> int | None:
        v = self.class_label.value()
        return None if v < 0 or self.class_label.maximum() < 0 else v

    def history_guidance_value(self) -> float | None:
        """The history guidance to sample with; None = the model's own (the lowest, "model" entry, and always for
        a model that cannot be history-guided: the field is greyed out)."""
        if not self.history_guidance.isEnabled():
            return None
        return self._history_guidance_setting()

    def _history_guidance_setting(self) -> float | None:
        v = self.history_guidance.value()
        return None if v <= self.history_guidance.minimum() else v

    def load(self, st: Settings) -> None:
        self.steps.setValue(st.steps)
        self.s_spin.setValue(st.s)
        self.new_frames.setValue(st.new_frames)
        self.context.setValue(st.context)
        self.seed.setValue(st.seed)
        self.guidance.setValue(st.guidance)
        hg = st.history_guidance
        self.history_guidance.setValue(self.history_guidance.minimum() if hg is None else hg)
        self._wanted_class = st.class_label
        self.class_label.setValue(st.class_label)
        self.adapt.setChecked(st.adapt)

    def store(self, st: Settings) -> None:
        st.s, st.new_frames, st.steps = self.s_spin.value(), self.new_frames.value(), self.steps.value()
        st.context, st.seed = self.context.value(), self.seed.value()
        st.guidance = self.guidance.value()
        st.adapt = self.adapt.isChecked()
        st.history_guidance = self._history_guidance_setting()  # kept for the next model that can use it
        st.class_label = self.class_label.value() if self.class_label.maximum() >= 0 else self._wanted_class

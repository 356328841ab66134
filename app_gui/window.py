"""The main window: open a clip, set parameters, watch the continuation arrive, play and save the result.

The window only consumes the pipeline's events (FrameReady / Progress / Done); loading, reading and
sampling run on worker threads (app_gui.worker), so the event loop never stops. Every problem a person
can hit is routed through `show_error`, one place that tests can watch and that never blocks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PySide6.QtCore import QByteArray, Qt, Signal
from PySide6.QtGui import QAction, QGuiApplication, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QFileDialog,
    QFrame,
    QGroupBox,
    QInputDialog,
    QLabel,
    QMainWindow,
    QMenu,
    QMessageBox,
    QScrollArea,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app_gui.controls import MODE_CONTINUE, ParameterPanel
from app_gui.filmstrip import Filmstrip
from app_gui.heatmap import ScheduleHeatmap, schedule_levels
from app_gui.loaders import cuda_problem, load_model, read_clip
from app_gui.panels import DEVICE_LABELS, PRECISION_LABELS, ModelPanel, RunPanel
from app_gui.player import FramePlayer, to_qimage
from app_gui.settings import Settings
from app_gui.worker import Generation, Job, Task
from engine.hub import is_reference
from engine.video_io import CLIP_EXTENSIONS

CLIP_FILTER = f"Videos and images ({' '.join('*' + e for e in sorted(CLIP_EXTENSIONS))});;All files (*)"
CHECKPOINT_FILTER = "ardiff checkpoints (*.safetensors);;All files (*)"
SAVE_FILTERS = {"MP4 video (*.mp4)": ".mp4", "GIF animation (*.gif)": ".gif", "PNG frames (folder)": ""}
GENERATE_FPS = 8.0  # a video made from nothing has no rate of its own; the CLI's default
EXPORT_TOOLTIP = "sample with graphs written by ardiff-export for the current checkpoint (AOTInductor, ONNX)"


@dataclass
class _RunState:
    """One generation as the window tracks it: result frames so far (None = pending) and how to show them."""

    offset: int  # result index of the run's frame 0 (frames in front come from an earlier result)
    frames: list
    marker: int  # first frame the model made, for the player's marker and the filmstrip's colours
    fps: float
    num_new: int
    head: int  # frames in front of the first new one (earlier result + context)


class MainWindow(QMainWindow):
    """ardiff's desktop window. Signals let tests (and scripts) wait for the background work."""

    clipLoaded = Signal(str)
    modelLoaded = Signal(str)
    modelFailed = Signal(str)
    eventReceived = Signal(object)  # every pipeline event, after the window has shown it (GUI thread)
    generationFinished = Signal(object)  # the Done event
    errorShown = Signal(str, str)  # title, message

    def __init__(self, settings: Settings | None = None, checkpoint: str | None = None,
                 device: str | None = None, load_on_start: bool = True, persist: bool = True,
                 precision: str | None = None) -> None:
        super().__init__()
        self.settings = settings if settings is not None else Settings.load()
        self.persist = persist
        self.pipeline = None
        self.model_error: str | None = None
        self.loading_model = False
        self.clip: np.ndarray | None = None
        self.clip_path: str | None = None
        self.clip_fps = GENERATE_FPS
        self.result: np.ndarray | None = None  # the whole continued video (context + new frames)
        self.result_marker = 0  # index of the first frame the model made
        self.result_fps = GENERATE_FPS
        self.generation: Generation | None = None
        self._last_generation: Generation | None = None
        self.errors: list[tuple[str, str]] = []  # every (title, message) shown, newest last
        self.last_dialog: QMessageBox | None = None
        self._tasks: set = set()  # running Tasks: held so they outlive the call that started them
        self._run: _RunState | None = None  # bookkeeping of the current (or last) generation
        self._device_shown = self.settings.device
        self._precision_shown = self.settings.precision

        self.setWindowTitle("ardiff — continue a video")
        self.setAcceptDrops(True)
        self._build_widgets()
        self._build_menus()
        self.params.load(self.settings)
        self.model_panel.select_device(self.settings.device)
        self.model_panel.select_precision(self.settings.precision)
        if self.settings.geometry:
            self.restoreGeometry(QByteArray.fromHex(self.settings.geometry.encode()))
        else:
            self.resize(1240, 800)
        self._update_recent_menu()
        self._update_actions()
        if checkpoint is not None:
            self.settings.checkpoint = str(checkpoint)
        if device is not None:
            self.model_panel.select_device(device)
        if precision is not None:
            self.model_panel.select_precision(precision)
        if load_on_start:
            self.load_model(self.settings.checkpoint, self.current_device(), quiet=True)

    # ======================================================================================= construction

    def _build_widgets(self) -> None:
        self.input_player = FramePlayer(
            placeholder="Open a clip (Ctrl+O), drop one here, or pick a recent one")
        self.result_player = FramePlayer(
            placeholder="The continued video appears here when you press Generate")
        self.tabs = QTabWidget()
        self.tabs.addTab(self.input_player, "Input clip")
        self.tabs.addTab(self.result_player, "Result")
        self.filmstrip = Filmstrip()
        self.filmstrip.frameClicked.connect(self._filmstrip_clicked)
        self.heatmap = ScheduleHeatmap()
        heat_box = QGroupBox("Noise schedule (frames → across, sampling rows ↓; "
                             "dark = clean, yellow = noise)")
        QVBoxLayout(heat_box).addWidget(self.heatmap)
        heat_box.layout().setContentsMargins(4, 4, 4, 4)

        left = QSplitter(Qt.Orientation.Vertical)
        left.addWidget(self.tabs)
        strip_box = QWidget()
        strip_layout = QVBoxLayout(strip_box)
        strip_layout.setContentsMargins(0, 0, 0, 0)
        strip_layout.addWidget(self.filmstrip)
        left.addWidget(strip_box)
        left.addWidget(heat_box)
        left.setStretchFactor(0, 5)
        left.setStretchFactor(1, 0)
        left.setStretchFactor(2, 2)
        left.setChildrenCollapsible(False)

        # Right: model, parameters, run controls.
        self.model_panel = ModelPanel()
        self.model_panel.deviceChosen.connect(
            lambda device: self.load_model(self.settings.checkpoint, device))
        self.model_panel.precisionChosen.connect(
            lambda precision: self.load_model(self.settings.checkpoint, self.current_device(),
                                              precision=precision))
        self.model_panel.openRequested.connect(self.choose_checkpoint)
        self.model_panel.defaultRequested.connect(lambda: self.load_model("", self.current_device()))

        param_box = QGroupBox("Continuation")
        self.params = ParameterPanel()
        self.params.changed.connect(self._params_changed)
        param_layout = QVBoxLayout(param_box)
        param_layout.addWidget(self.params)
        self.plan_label = QLabel()
        self.plan_label.setWordWrap(True)
        self.plan_label.setStyleSheet("color: palette(mid); font-size: 11px;")
        param_layout.addWidget(self.plan_label)

        self.run_panel = run = RunPanel()
        run.generate_button.clicked.connect(self.generate)
        run.cancel_button.clicked.connect(self.cancel)
        run.further_button.clicked.connect(self.continue_further)
        run.save_button.clicked.connect(self.choose_save_path)

        right_inner = QWidget()
        right_layout = QVBoxLayout(right_inner)
        right_layout.addWidget(self.model_panel)
        right_layout.addWidget(param_box)
        right_layout.addWidget(self.run_panel)
        right_layout.addStretch(1)
        right = QScrollArea()
        right.setWidget(right_inner)
        right.setWidgetResizable(True)
        right.setFrameShape(QFrame.Shape.NoFrame)
        right.setMinimumWidth(330)
        right.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)

        main = QSplitter(Qt.Orientation.Horizontal)
        main.addWidget(left)
        main.addWidget(right)
        main.setStretchFactor(0, 1)
        main.setStretchFactor(1, 0)
        main.setChildrenCollapsible(False)
        self.setCentralWidget(main)

        self.status_model = QLabel()
        self.statusBar().addPermanentWidget(self.status_model)
        self.statusBar().showMessage("Open a clip to begin")

    def _action(self, text: str, slot, shortcuts=(), tip: str = "") -> QAction:
        act = QAction(text, self)
        act.triggered.connect(slot)
        if shortcuts:
            act.setShortcuts([QKeySequence(s) for s in shortcuts])
            act.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        if tip:
            act.setToolTip(tip)
            act.setStatusTip(tip)
        self.addAction(act)  # shortcuts work even when the menu bar is hidden
        return act

    def _build_menus(self) -> None:
        bar = self.menuBar()
        file_menu = bar.addMenu("&File")
        self.act_open = self._action("&Open clip…", self.choose_clip, [QKeySequence.StandardKey.Open])
        file_menu.addAction(self.act_open)
        self.recent_menu = QMenu("Open &recent", self)
        file_menu.addMenu(self.recent_menu)
        file_menu.addSeparator()
        self.act_save = self._action("&Save result…", self.choose_save_path,
                                     [QKeySequence.StandardKey.Save])
        self.act_save_frame = self._action("Save current frame as PNG…", self.choose_frame_path)
        self.act_copy = self._action("&Copy frame", self.copy_frame, [QKeySequence.StandardKey.Copy],
                                     "Copy the frame on screen to the clipboard")
        for a in (self.act_save, self.act_save_frame, self.act_copy):
            file_menu.addAction(a)
        file_menu.addSeparator()
        file_menu.addAction(self._action("&Quit", self.close, [QKeySequence.StandardKey.Quit]))

        model_menu = bar.addMenu("&Model")
        model_menu.setToolTipsVisible(True)
        self.act_default_model = self._action("Embedded &default model", lambda: self.load_model(
            "", self.current_device()))
        self.act_open_ckpt = self._action("Open &checkpoint…", self.choose_checkpoint)
        self.act_open_ref = self._action("Checkpoint from the &Hub or a URL…", self.choose_checkpoint_reference)
        self.act_open_export = QAction("Open &export dir…", self)
        self.act_open_export.triggered.connect(self.choose_export_dir)
        self.act_open_export.setToolTip(EXPORT_TOOLTIP)
        self.act_open_export.setStatusTip(EXPORT_TOOLTIP)
        for a in (self.act_default_model, self.act_open_ckpt, self.act_open_ref, self.act_open_export):
            model_menu.addAction(a)

        run_menu = bar.addMenu("&Run")
        self.act_generate = self._action("&Generate", self.generate, ["Ctrl+Return", "Ctrl+Enter"])
        self.act_cancel = self._action("&Cancel", self.cancel, ["Esc"])
        self.act_further = self._action("Continue &further", self.continue_further, ["Ctrl+Shift+Return"])
        self.act_play = self._action("&Play / pause", self.toggle_play, ["Space"])
        self.act_dice = self._action("New random &seed", self.params.roll_seed, ["Ctrl+R"])
        for a in (self.act_generate, self.act_cancel, self.act_further, None, self.act_play, self.act_dice):
            run_menu.addSeparator() if a is None else run_menu.addAction(a)

        help_menu = bar.addMenu("&Help")
        help_menu.addAction(self._action("What do the settings mean?", self._show_help, ["F1"]))

    # ======================================================================================= errors

    def show_error(self, title: str, message: str) -> None:
        """Tell the person what went wrong. The one route for every error: recorded in `errors`, announced
        by `errorShown`, and shown in a window-modal box that does not block the event loop."""
        self.errors.append((title, message))
        self.statusBar().showMessage(f"{title}: {message}", 10000)
        self.errorShown.emit(title, message)
        box = QMessageBox(QMessageBox.Icon.Warning, title, message, QMessageBox.StandardButton.Ok, self)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.setWindowModality(Qt.WindowModality.WindowModal)
        self.last_dialog = box
        box.open()

    def _start_task(self, task: Task, on_done, on_fail) -> Task:
        self._tasks.add(task)
        task.finished.connect(on_done)
        task.failed.connect(on_fail)
        task.finished.connect(lambda *_: self._tasks.discard(task))
        task.failed.connect(lambda *_: self._tasks.discard(task))
        return task.start()

    # ======================================================================================= model

    def current_device(self) -> str:
        return self.model_panel.device()

    def current_precision(self) -> str:
        """The precision chosen in the model panel: "auto" | "fp32" | "bf16"."""
        return self.model_panel.precision()

    def load_model(self, checkpoint: str | os.PathLike, device: str, quiet: bool = False,
                   export_dir: str | None = None, precision: str | None = None) -> bool:
        """Load a model in the background ("" = embedded default). A failure keeps the model already loaded.
        `quiet` (at start-up) shows a problem beside the model instead of popping up a dialog. `export_dir`
        samples with the graphs ardiff-export made from this checkpoint. `precision` None: the panel's."""
        precision = self.current_precision() if precision is None else precision
        if self.is_generating():
            self.show_error("Busy", "Wait for the current run to finish (or cancel it) "
                                    "before changing the model.")
            return False
        if checkpoint and not is_reference(checkpoint):  # hf:/https:// references stay as typed
            checkpoint = str(Path(checkpoint).resolve())
        checkpoint = str(checkpoint or "")
        if device == "cuda":
            problem = cuda_problem()
            if problem:
                self._model_failed(problem, device, quiet)
                return False
        self.loading_model = True
        self.model_panel.show_loading((checkpoint if is_reference(checkpoint) else Path(checkpoint).name)
                                      if checkpoint else "the default model")
        self.statusBar().showMessage("Loading model…")
        self._update_actions()
        task = Task(load_model, checkpoint, device, export_dir, precision, name="ardiff-load-model")
        self._start_task(task, lambda pipe: self._model_loaded(pipe, checkpoint, device, precision),
                         lambda msg: self._model_failed(msg, device, quiet))
        return True

    def _model_loaded(self, pipe, checkpoint: str, device: str, precision: str) -> None:
        self.loading_model = False
        self.pipeline, self.model_error = pipe, None
        self.settings.checkpoint, self.settings.device = checkpoint, device
        self.settings.precision = precision
        self._device_shown, self._precision_shown = device, precision
        self.model_panel.show_model(pipe.describe())
        self.params.set_limits(pipe.window, pipe.schedule.T)
        self.params.set_num_classes(int(getattr(pipe.config.dit, "num_classes", 0) or 0))
        self.params.set_model_history_guidance(pipe.history_guidance)
        self._update_status_model()
        self.statusBar().showMessage("Model ready", 4000)
        self._refresh_clip_note()
        self._params_changed()
        self._update_actions()
        self._store_settings()
        self.modelLoaded.emit(pipe.describe())

    def _model_failed(self, message: str, device: str, quiet: bool) -> None:
        self.loading_model = False
        if self.pipeline is None:
            self.model_error = message
            self.model_panel.show_problem(message)
        else:
            self.model_panel.show_model(self.pipeline.describe())
        self.model_panel.select_device(self._device_shown)  # the choice that failed is not what is running
        self.model_panel.select_precision(self._precision_shown)
        self._update_status_model()
        self._update_actions()
        self.modelFailed.emit(message)
        if quiet:
            self.statusBar().showMessage(message, 15000)
        else:
            self.show_error("Cannot load the model", message)

    def _update_status_model(self) -> None:
        if self.pipeline is None:
            device = DEVICE_LABELS.get(self.current_device(), "?")
            precision = PRECISION_LABELS.get(self.current_precision(), "?")
            self.status_model.setText(f"Model: none · Device: {device} · Precision: {precision}")
            return
        cfg = self.pipeline.config
        name = self.pipeline.checkpoint.path.name if self.pipeline.checkpoint.path else cfg.name
        dtype = self.pipeline.autocast_dtype  # what runs, which "auto" (or an export) decided
        precision = "float32" if dtype is None else str(dtype).removeprefix("torch.")
        self.status_model.setText(f"Model: {name} ({cfg.name}, {self.pipeline.resolution}px) · "
                                  f"Device: {self.pipeline.device} · {precision}")

    def choose_checkpoint(self) -> None:
        ckpt = self.settings.checkpoint
        start = str(Path(ckpt).parent) if ckpt and not is_reference(ckpt) else self.settings.last_dir
        path, _ = QFileDialog.getOpenFileName(self, "Open a checkpoint", start, CHECKPOINT_FILTER)
        if path:
            self.load_model(path, self.current_device())

    def choose_checkpoint_reference(self) -> None:
        """Load a checkpoint by reference (engine.hub): fetched once into a cache, in the background."""
        ckpt = self.settings.checkpoint
        text, ok = QInputDialog.getText(self, "Checkpoint from the Hub or a URL",
                                        "hf:OWNER/REPO[/FILE][@REVISION] or https://…[#sha256=…]",
                                        text=ckpt if is_reference(ckpt) else "")
        if ok and text.strip():
            self.load_model(text.strip(), self.current_device())

    def choose_export_dir(self) -> None:
        ckpt = self.settings.checkpoint
        start = str(Path(ckpt).parent) if ckpt and not is_reference(ckpt) else self.settings.last_dir
        path = QFileDialog.getExistingDirectory(self, "Open an ardiff-export folder", start)
        if path:
            self.load_model(ckpt, self.current_device(), export_dir=path)

    # ======================================================================================= clip

    def choose_clip(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a clip", self.settings.last_dir, CLIP_FILTER)
        if path:
            self.open_clip(path)

    def open_clip(self, path: str | os.PathLike) -> bool:
        """Read a clip in the background; the clip on screen stays until the new one is read."""
        path = str(path)
        if self.is_generating():
            self.show_error("Busy", "Wait for the current run to finish (or cancel it) "
                                    "before opening a clip.")
            return False
        self.statusBar().showMessage(f"Opening {Path(path).name}…")
        task = Task(read_clip, path, name="ardiff-read-clip")
        self._start_task(task, lambda res: self._clip_read(path, *res),
                         lambda msg: self._clip_failed(path, msg))
        return True

    def set_clip(self, frames: np.ndarray, fps: float, name: str, path: str | None = None) -> None:
        """Use in-memory frames as the input clip (also how a read clip arrives)."""
        self.clip, self.clip_fps, self.clip_path = frames, fps, path
        self.input_player.set_frames(frames, fps)
        self.tabs.setCurrentWidget(self.input_player)
        self.params.mode.setCurrentIndex(MODE_CONTINUE)
        self.setWindowTitle(f"{name} — ardiff")
        self._refresh_context_shade()
        self._refresh_clip_note()
        self._params_changed()
        self._update_actions()

    def _clip_read(self, path: str, frames: np.ndarray, fps: float, truncated: bool) -> None:
        self.set_clip(frames, fps, Path(path).name, path)
        self.settings.add_recent(path)
        self.settings.last_dir = str(Path(path).resolve().parent)
        self._update_recent_menu()
        h, w = frames.shape[1:3]
        msg = f"Opened {Path(path).name}: {len(frames)} frames, {w}x{h}, {fps:.3g} fps"
        if truncated:
            msg += (f" (long clip: only the first {len(frames)} frames are loaded; "
                    f"the continuation follows them)")
        self.statusBar().showMessage(msg, 10000)
        self._store_settings()
        self.clipLoaded.emit(path)

    def _clip_failed(self, path: str, message: str) -> None:
        if not Path(path).exists() and str(Path(path).resolve()) in self.settings.recent:
            self.settings.recent.remove(str(Path(path).resolve()))
            self._update_recent_menu()
        self.show_error("Cannot open the clip", message)

    def _refresh_context_shade(self) -> None:
        if self.clip is None or self.params.generate_mode:
            self.input_player.set_shade(None)
            return
        n, c = len(self.clip), self.params.context.value()
        self.input_player.set_shade((max(0, n - c), n))

    def _refresh_clip_note(self) -> None:
        if self.clip is None or self.pipeline is None:
            return
        note = self.pipeline.fit_note(self.clip[:1])
        if note:
            self.input_player.setToolTip(f"For the model, frames are {note}")

    def _update_recent_menu(self) -> None:
        self.recent_menu.clear()
        for path in self.settings.recent:
            act = self.recent_menu.addAction(Path(path).name)
            act.setToolTip(path)
            act.setStatusTip(path)
            act.triggered.connect(lambda _=False, p=path: self.open_clip(p))
        if self.settings.recent:
            self.recent_menu.addSeparator()
            self.recent_menu.addAction("Clear list", self._clear_recent)
        self.recent_menu.setEnabled(bool(self.settings.recent))

    def _clear_recent(self) -> None:
        self.settings.recent = []
        self._update_recent_menu()

    # -- drag and drop: a clip, a frame folder, or a checkpoint

    def dragEnterEvent(self, event) -> None:
        if event.mimeData().hasUrls() and any(u.isLocalFile() for u in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        paths = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if not paths:
            return
        event.acceptProposedAction()
        self.open_path(paths[0])

    def open_path(self, path: str) -> None:
        """A dropped or command-line path: checkpoints load as the model, anything else as a clip."""
        if path.lower().endswith(".safetensors"):
            self.load_model(path, self.current_device())
        else:
            self.open_clip(path)

    # ======================================================================================= generation

    def is_generating(self) -> bool:
        return self.generation is not None

    def _params_changed(self) -> None:
        self._refresh_context_shade()
        if self.pipeline is None:  # the estimate needs the engine, which loads with the model
            self.plan_label.setText("")
            return
        p = self.params
        window = self.pipeline.window
        context = 0 if p.generate_mode else p.context.value()
        try:
            rows = len(schedule_levels(p.new_frames.value(), context, p.steps.value(), p.s_spin.value(),
                                       window)) - 1
        except ValueError:
            self.plan_label.setText("")
            return
        text = (f"{rows} network calls for {p.new_frames.value()} new frames "
                f"(s = {p.s_spin.value()}, {p.steps.value()} steps)")
        history = p.history_guidance_value()
        history = self.pipeline.history_guidance if history is None else history
        if history != 1.0:
            text += f", up to {rows} more for history guidance {history:g}"
        if self.clip is not None and self.pipeline is not None and not p.generate_mode:
            note = self.pipeline.fit_note(self.clip[:1])
            if note:
                text += f". The model sees the clip {note}."
        self.plan_label.setText(text)

    def generate(self) -> bool:
        """Start a run with the panel's settings: continue the clip, or generate from nothing."""
        if self.is_generating():
            return False
        if self.params.generate_mode:
            return self._start(None, None, GENERATE_FPS)
        if self.clip is None:
            self.show_error("No clip", "Open a clip first (Ctrl+O), or choose “Generate from nothing”.")
            return False
        c = self.params.context.value()
        if len(self.clip) < c:
            self.show_error("Clip too short",
                            f"The clip has {len(self.clip)} frame{'s' * (len(self.clip) != 1)} "
                            f"but Context frames "
                            f"is {c}. Lower Context frames to {len(self.clip)} or open a longer clip.")
            return False
        return self._start(self.clip[-c:], None, self.clip_fps)

    def continue_further(self) -> bool:
        """Continue again from the end of the result; the new frames are appended to it."""
        if self.is_generating():
            return False
        if self.result is None or len(self.result) == 0:
            self.show_error("Nothing to continue",
                            "Generate a result first; then it can be continued further.")
            return False
        c = min(self.params.context.value(), len(self.result))
        return self._start(self.result[-c:], self.result[:-c], self.result_fps, self.result_marker)

    def _start(self, context: np.ndarray | None, prefix: np.ndarray | None, fps: float,
               marker: int | None = None) -> bool:
        """Run on `context` (None: from nothing); `prefix` frames go in front of the result. `marker` is
        the first frame the model made (default: right after the context)."""
        if self.pipeline is None:
            if self.loading_model:
                self.show_error("Model not ready", "The model is still loading; try again in a moment.")
            else:
                self.show_error("No model", (self.model_error or "No model is loaded.") +
                                "\nOpen a checkpoint from the Model menu.")
            return False
        pipe, p = self.pipeline, self.params
        job = Job(context=context, num_new=p.new_frames.value(), s=p.s_spin.value(), steps=p.steps.value(),
                  seed=p.seed.value(), class_label=p.class_value(), guidance_scale=p.guidance.value(),
                  history_guidance=p.history_guidance_value())
        from engine.video_io import fit_frames

        try:
            fitted = (np.zeros((0, pipe.resolution, pipe.resolution, 3), np.uint8) if context is None
                      else fit_frames(context, pipe.resolution))
            num_context = len(fitted)
            levels = schedule_levels(job.num_new, num_context, job.steps, job.s, pipe.window)
        except ValueError as err:
            self.show_error("Cannot start", str(err))
            return False
        head = fitted if prefix is None or not len(prefix) else np.concatenate([prefix, fitted])
        offset = len(head) - num_context
        marker = num_context if marker is None else marker
        total = len(head) + job.num_new
        self._run = _RunState(offset=offset, frames=list(head), marker=marker, fps=fps, num_new=job.num_new,
                              head=len(head))

        self.result_player.set_frames(list(head), fps, marker=marker, total=total)
        self.result_player.seek(max(0, len(head) - 1))
        self.filmstrip.start_run([], total)
        self.filmstrip.num_context = marker
        for i, frame in enumerate(head):
            self.filmstrip.set_frame(i, frame)
        self.heatmap.set_schedule(levels, job.steps, num_context)
        self.tabs.setCurrentWidget(self.result_player)
        self.run_panel.start(job.num_new, len(levels) - 1)
        self.statusBar().showMessage("Sampling… (Esc cancels and keeps the frames made so far)")

        self.generation = Generation(pipe, job)
        self.generation.event.connect(self._on_event)
        self.generation.failed.connect(self._on_failed)
        self.generation.start()
        self._store_settings()
        self._update_actions()
        return True

    def cancel(self) -> None:
        """Stop after the current row; the frames made so far stay."""
        if self.generation is None:
            return
        self.generation.cancel()
        self.run_panel.cancelling()

    def _on_event(self, event) -> None:
        from engine.pipeline import Done, FrameReady, Progress  # loaded with the model: no cost here

        run = self._run
        if isinstance(event, FrameReady):
            index = run.offset + event.index
            frames = run.frames
            frames += [None] * max(0, index + 1 - len(frames))
            frames[index] = event.image
            self.result_player.set_frame(index, event.image)
            self.filmstrip.set_frame(index, event.image)
        elif isinstance(event, Progress):
            self.heatmap.set_row(event.row, event.levels)
            self.run_panel.show_progress(event.row, event.total_rows, event.frames_done, run.num_new,
                                         event.elapsed)
        elif isinstance(event, Done):
            self._finish(event)
            return  # generationFinished follows
        self.eventReceived.emit(event)

    def _finish(self, done) -> None:
        run = self._run
        prefix = run.frames[: run.offset]
        video = np.concatenate([np.stack(prefix), done.video]) if prefix else done.video
        self._set_result(video, run.marker, run.fps)
        made = len(done.video) - done.num_context
        rate = made / done.elapsed if done.elapsed > 0 else 0.0
        if done.cancelled:
            text = f"Cancelled: kept {made} of {run.num_new} new frames"
        else:
            text = f"Done: {made} new frames in {done.elapsed:.1f} s ({rate:.1f} frames/s)"
        self.run_panel.label.setText(text)
        self.statusBar().showMessage(text + " · Ctrl+S saves", 10000)
        self._end_generation()
        self.eventReceived.emit(done)
        self.generationFinished.emit(done)

    def _on_failed(self, message: str) -> None:
        # Keep everything that did arrive: the context and every finished frame up to the first gap.
        run = self._run
        kept = next((i for i, f in enumerate(run.frames) if f is None), len(run.frames))
        if kept > run.head:  # some new frames arrived: they are the result now
            self._set_result(np.stack(run.frames[:kept]), run.marker, run.fps)
        else:  # nothing new: the previous result (if any) is still the result; show it again
            self._show_result()
        self.run_panel.label.setText("Failed: " + message)
        self._end_generation()
        self.show_error("Generation failed", message)

    def _set_result(self, video: np.ndarray, marker: int, fps: float) -> None:
        self.result, self.result_marker, self.result_fps = video, marker, fps
        index = self.result_player.index
        self.result_player.set_frames(list(video), fps, marker=marker)
        self.result_player.seek(min(index, len(video) - 1))
        self.filmstrip.truncate(len(video))

    def _show_result(self) -> None:
        """Redraw the player and filmstrip from `self.result` (after a run that made nothing)."""
        video = self.result if self.result is not None else []
        self.result_player.set_frames(list(video), self.result_fps, marker=self.result_marker)
        self.filmstrip.start_run([], len(video))
        self.filmstrip.num_context = self.result_marker
        for i, frame in enumerate(video):
            self.filmstrip.set_frame(i, frame)
        self.heatmap.clear()

    def _end_generation(self) -> None:
        gen, self.generation = self.generation, None
        if gen is not None:
            gen.wait(5.0)  # Done is the stream's last event: the thread is at its end
        # Held until the next run: the signal being delivered right now still belongs to it.
        self._last_generation = gen
        self._update_actions()

    # ======================================================================================= results

    def _active_player(self) -> FramePlayer:
        return self.tabs.currentWidget()

    def toggle_play(self) -> None:
        self._active_player().toggle_play()

    def _filmstrip_clicked(self, index: int) -> None:
        self.tabs.setCurrentWidget(self.result_player)
        self.result_player.follow_live = False
        self.result_player.seek(index)

    def default_save_name(self, suffix: str = ".mp4") -> str:
        stem = Path(self.clip_path).stem + "_continued" if self.clip_path else "ardiff"
        folder = self.settings.save_dir or self.settings.last_dir or str(Path.home())
        return str(Path(folder) / f"{stem}{suffix}")

    def choose_save_path(self) -> None:
        if self.result is None:
            self.show_error("Nothing to save", "Generate a result first (Ctrl+Enter).")
            return
        path, chosen = QFileDialog.getSaveFileName(self, "Save the result", self.default_save_name(),
                                                   ";;".join(SAVE_FILTERS))
        if not path:
            return
        suffix = SAVE_FILTERS.get(chosen, "")
        if suffix and not Path(path).suffix:
            path += suffix
        elif not suffix and chosen in SAVE_FILTERS:
            path = str(Path(path).with_suffix(""))  # PNG frames: a folder
        self.save_result(path)

    def save_result(self, path: str | os.PathLike) -> Path | None:
        """Write the result (.mp4 / .gif, or a folder of PNG frames); None, with a dialog, on failure."""
        from engine.video_io import write_video

        if self.result is None:
            self.show_error("Nothing to save", "Generate a result first (Ctrl+Enter).")
            return None
        QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
        try:
            out = write_video(path, self.result, fps=self.result_fps)
        except ValueError as err:  # VideoError and friends: one line for a person
            self.show_error("Cannot save", str(err))
            return None
        finally:
            QApplication.restoreOverrideCursor()
        self.settings.save_dir = str(Path(out).resolve().parent)
        self.statusBar().showMessage(f"Saved {len(self.result)} frames to {out}", 10000)
        return out

    def current_frame(self) -> np.ndarray | None:
        return self._active_player().current_frame()

    def copy_frame(self) -> bool:
        """Put the frame on screen on the clipboard as an image."""
        frame = self.current_frame()
        if frame is None:
            self.show_error("Nothing to copy", "There is no frame on screen yet.")
            return False
        QGuiApplication.clipboard().setImage(to_qimage(frame))
        self.statusBar().showMessage(f"Copied frame {self._active_player().index} to the clipboard", 4000)
        return True

    def choose_frame_path(self) -> None:
        frame = self.current_frame()
        if frame is None:
            self.show_error("Nothing to save", "There is no frame on screen yet.")
            return
        name = f"frame_{self._active_player().index:04d}.png"
        folder = self.settings.save_dir or self.settings.last_dir or str(Path.home())
        path, _ = QFileDialog.getSaveFileName(self, "Save frame", str(Path(folder) / name),
                                              "PNG image (*.png)")
        if path and not to_qimage(frame).save(path if path.lower().endswith(".png") else path + ".png"):
            self.show_error("Cannot save", f"{path}: could not write the image")

    # ======================================================================================= state

    def _update_actions(self) -> None:
        busy = self.is_generating()
        has_result = self.result is not None and len(self.result) > 0
        self.run_panel.set_state(busy, self.loading_model, has_result)
        self.act_generate.setEnabled(not busy)
        self.act_cancel.setEnabled(busy)
        self.act_further.setEnabled(not busy and has_result)
        self.act_save.setEnabled(not busy and has_result)
        self.params.setEnabled(not busy and not self.loading_model)
        self.model_panel.set_busy(busy or self.loading_model)
        for a in (self.act_open, self.act_open_ckpt, self.act_open_ref, self.act_default_model, self.act_open_export):
            a.setEnabled(not busy)
        self.recent_menu.setEnabled(not busy and bool(self.settings.recent))
        self._update_status_model()

    def _store_settings(self) -> None:
        self.params.store(self.settings)
        self.settings.geometry = bytes(self.saveGeometry().toHex()).decode()
        if self.persist:
            self.settings.save()

    def _show_help(self) -> None:
        box = QMessageBox(QMessageBox.Icon.Information, "ardiff settings", (
            "s — how far apart neighbouring frames are in noise. 0 = all frames together (fast, smooth), "
            "higher = one after another (each frame sees its predecessor clean).\n\n"
            "New frames — how many frames to add.\nSampling steps — denoising steps per frame.\n"
            "Context frames — frames from the end of your clip the model looks at.\n"
            "Seed — the same seed and settings give the same result.\n"
            "History guidance — how hard the new frames lean on the context: 1 = off, higher = more, "
            "0 = not at all; “model” uses the model's own value. Anything but 1 is slower.\n\n"
            "The heat map shows every frame's noise level in every sampling row: dark is clean, "
            "yellow is noise; the white line is where sampling is now."), QMessageBox.StandardButton.Ok, self)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.open()  # not exec(): the event loop (and any running generation) carries on

    def closeEvent(self, event) -> None:
        if self.generation is not None:
            self.generation.cancel()  # ends within a row; never leave a thread emitting into a dead window
            self.generation.wait(10.0)
        for task in list(self._tasks):  # a model or clip still loading: let it finish before we go
            task.wait(10.0)
        self._store_settings()
        super().closeEvent(event)


"""The main window: open a clip, set parameters, watch the continuation arrive, play and save the result.

The window only consumes the pipeline's events (FrameReady / Progress / Done); loading, reading and
sampling run on worker threads (app_gui.worker), so the event loop never stops. Every problem a person
can hit is routed through `show_error`, one place that tests can watch and that never blocks.

The window builds the widgets and menus, holds the state and the one error route, and composes its parts,
one module each: the model (app_gui.model_control), the clip (app_gui.clip_control), the run
(app_gui.run_control) and the takes and saving (app_gui.takes), with their widgets (app_gui.panels,
app_gui.takes_panel, app_gui.compare, app_gui.player).
"""

from __future__ import annotations

import time

import numpy as np
from PySide6.QtCore import QByteArray, QCoreApplication, QEventLoop, Qt, Signal
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QFrame,
    QGroupBox,
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

from app_gui.clip_control import OPEN_BUSY, ClipControl
from app_gui.compare import CompareView
from app_gui.controls import ParameterPanel
from app_gui.filmstrip import Filmstrip
from app_gui.heatmap import ScheduleHeatmap
from app_gui.model_control import ModelControl
from app_gui.panels import ElidedLabel, ModelPanel, RunPanel
from app_gui.player import FramePlayer
from app_gui.run_control import GENERATE_FPS, RunControl, RunState
from app_gui.settings import Settings
from app_gui.takes import TakesControl
from app_gui.takes_panel import TakesPanel
from app_gui.worker import Generation, Task
from engine.takes import Takes

EXPORT_TOOLTIP = "sample with graphs written by ardiff-export for the current checkpoint (AOTInductor, ONNX)"
MINIMUM_SIZE = (640, 480)  # the Run controls (Generate, Cancel, Save) stay on screen down to this
OPEN_TIP = "Open a video, an image or a frame folder (Ctrl+O)"
PLAYER_KEYS = (
    ("Space", "play / pause"), ("Left, ,", "one frame back"), ("Right, .", "one frame forward"),
    ("Home / End", "first / last frame"), ("J", "play backwards (again: faster)"), ("K", "pause"),
    ("L", "play forwards (again: faster)"),
)


class MainWindow(ModelControl, ClipControl, RunControl, TakesControl, QMainWindow):
    """ardiff's desktop window: builds the widgets and menus and composes the parts (model, clip, run, takes);
    signals let tests (and scripts) wait for the background work."""

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
        self.takes = Takes()  # every run's result; the current one is on screen (`result`)
        self.ask_unsaved = True  # ask Save / Discard / Cancel before unsaved takes could be lost
        self.generation: Generation | None = None
        self._last_generation: Generation | None = None
        self.errors: list[tuple[str, str]] = []  # every (title, message) shown, newest last
        self.last_dialog: QMessageBox | None = None
        self._tasks: set = set()  # running Tasks: held so they outlive the call that started them
        self._run: RunState | None = None  # bookkeeping of the current (or last) generation
        self._device_shown = self.settings.device
        self._precision_shown = self.settings.precision

        # Qt appends the application display name ("ardiff") to every window title itself
        self.setWindowTitle("continue a video")
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
        self.compare_view = CompareView()
        # two players side by side need more width than a small window has: they scroll
        self.compare_tab = compare_scroll = QScrollArea()
        compare_scroll.setWidget(self.compare_view)
        compare_scroll.setWidgetResizable(True)
        compare_scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.tabs.addTab(compare_scroll, "Compare")
        self.filmstrip = Filmstrip()
        self.filmstrip.frameClicked.connect(self._filmstrip_clicked)
        self.heatmap = ScheduleHeatmap()
        heat_box = QGroupBox("Noise schedule: dark = clean, yellow = noise")  # short: fits a small window
        heat_box.setToolTip("Frames go across, sampling rows down; dark is clean, yellow is noise; the white "
                            "line is where sampling is now")
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

        self.takes_panel = TakesPanel()
        self.takes_panel.takeChosen.connect(self.select_take)
        self.takes_panel.saveRequested.connect(self.choose_save_path)
        self.takes_panel.deleteRequested.connect(self.delete_take)
        self.takes_panel.compareRequested.connect(self.compare_takes)

        # The settings scroll; the takes list and the Run controls sit below them, always on screen however
        # small the window.
        right_inner = QWidget()
        right_layout = QVBoxLayout(right_inner)
        right_layout.addWidget(self.model_panel)
        right_layout.addWidget(param_box)
        right_layout.addStretch(1)
        self.settings_scroll = scroll = QScrollArea()
        scroll.setWidget(right_inner)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        right = QWidget()
        right.setMinimumWidth(330)
        right_column = QVBoxLayout(right)
        right_column.setContentsMargins(0, 0, 0, 0)
        settings_and_takes = QSplitter(Qt.Orientation.Vertical)  # the takes list keeps its own share
        settings_and_takes.addWidget(scroll)
        settings_and_takes.addWidget(self.takes_panel)
        settings_and_takes.setStretchFactor(0, 3)
        settings_and_takes.setStretchFactor(1, 1)
        settings_and_takes.setChildrenCollapsible(False)
        right_column.addWidget(settings_and_takes, 1)
        right_column.addWidget(self.run_panel)

        main = QSplitter(Qt.Orientation.Horizontal)
        main.addWidget(left)
        main.addWidget(right)
        main.setStretchFactor(0, 1)
        main.setStretchFactor(1, 0)
        main.setChildrenCollapsible(False)
        self.setCentralWidget(main)

        self.status_model = ElidedLabel()
        self.statusBar().addPermanentWidget(self.status_model)
        self.setMinimumSize(*MINIMUM_SIZE)
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
        self.act_open = self._action("&Open clip…", self.choose_clip, [QKeySequence.StandardKey.Open], OPEN_TIP)
        file_menu.addAction(self.act_open)
        self.recent_menu = QMenu("Open &recent", self)
        file_menu.addMenu(self.recent_menu)
        file_menu.addSeparator()
        self.act_save = self._action("&Save take…", lambda: self.choose_save_path(), [QKeySequence.StandardKey.Save],
                                     "Save the take on screen: the file, what it holds and its size")
        self.act_save_frame = self._action("Save current frame as PNG…", self.choose_frame_path)
        self.act_copy = self._action("&Copy frame", self.copy_frame, [QKeySequence.StandardKey.Copy],
                                     "Copy the frame on screen to the clipboard")
        for a in (self.act_save, self.act_save_frame, self.act_copy):
            file_menu.addAction(a)
        file_menu.addSeparator()
        # Ctrl+Q on every platform (Qt's standard Quit key is empty on Windows)
        quit_keys = [QKeySequence.StandardKey.Quit]
        if QKeySequence(QKeySequence.StandardKey.Quit) != QKeySequence("Ctrl+Q"):
            quit_keys.append("Ctrl+Q")
        self.act_quit = self._action("&Quit", self.close, quit_keys)
        file_menu.addAction(self.act_quit)

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
        self.act_dice = self._action("New random &seed", self.params.roll_seed, ["Ctrl+R"])
        for a in (self.act_generate, self.act_cancel, self.act_further, None, self.act_dice):
            run_menu.addSeparator() if a is None else run_menu.addAction(a)

        # The keys of desktop players (mpv, VLC) and editors (J / K / L): they act on the tab on screen.
        play_menu = bar.addMenu("&Playback")
        player = self._active_player
        self.act_play = self._action("&Play / pause", self.toggle_play, ["Space"])
        self.act_back = self._action("Frame &back", lambda: player().step(-1), ["Left", ","])
        self.act_forward = self._action("Frame &forward", lambda: player().step(1), ["Right", "."])
        self.act_first = self._action("F&irst frame", lambda: player().first(), ["Home"])
        self.act_last = self._action("&Last frame", lambda: player().last(), ["End"])
        self.act_reverse = self._action("Play backwards / faster (&J)", lambda: player().shuttle(-1), ["J"])
        self.act_pause = self._action("Pause (&K)", lambda: player().stop(), ["K"])
        self.act_shuttle = self._action("Play forwards / faster (&L)", lambda: player().shuttle(1), ["L"])
        for a in (self.act_play, self.act_back, self.act_forward, self.act_first, self.act_last, None,
                  self.act_reverse, self.act_pause, self.act_shuttle):
            play_menu.addSeparator() if a is None else play_menu.addAction(a)

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
        for a in (self.act_open_ckpt, self.act_open_ref, self.act_default_model, self.act_open_export):
            a.setEnabled(not busy)
        # Open stays enabled while a run goes, so Ctrl+O can say why it waits instead of doing nothing.
        self.act_open.setToolTip(OPEN_BUSY if busy else OPEN_TIP)
        self.act_open.setStatusTip(OPEN_BUSY if busy else OPEN_TIP)
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
            "yellow is noise; the white line is where sampling is now.\n\n"
            "Takes — every run is kept as a take (Takes list): click to show one, Ctrl+click two and "
            "Compare to play them side by side, Del deletes, Save… saves any; you are asked before unsaved "
            "takes are lost.\n\nPlayer keys:\n" +
            "\n".join(f"{key} — {what}" for key, what in PLAYER_KEYS)), QMessageBox.StandardButton.Ok, self)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.open()  # not exec(): the event loop (and any running generation) carries on

    def closeEvent(self, event) -> None:
        """Quit: a run is cancelled first (its frames become a take); unsaved takes ask Save / Discard /
        Cancel, and Cancel keeps the window open."""
        if self.generation is not None:
            self.generation.cancel()  # ends within a row; never leave a thread emitting into a dead window
            self.generation.wait(10.0)
            end = time.monotonic() + 10.0  # deliver the run's last (queued) events: the partial take
            while self.generation is not None and time.monotonic() < end:
                QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
        if not self.confirm_unsaved("quitting"):
            event.ignore()
            return
        for task in list(self._tasks):  # a model or clip still loading: let it finish before we go
            task.wait(10.0)
        self._store_settings()
        super().closeEvent(event)

"""The ardiff terminal app: pick a clip, set the run, watch frames arrive, keep every run as a take, play
and save them.

The layout is drawn first and the model loaded behind it (a worker); the app consumes the pipeline's events
(app_tui.live), keeps the session's takes (app_tui.session, engine.takes) and asks before unsaved takes would
be lost (app_tui.prompts). Keys: app_tui.keys. What it remembers between sessions: app_tui.prefs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import queue
from pathlib import Path

import numpy as np
from textual import on, work
from textual.app import App, ComposeResult
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, Checkbox, DirectoryTree, Footer, Header, Input, Label, ProgressBar, Select
from textual.worker import Worker

from app_tui.clip import Clip, load_clip
from app_tui.keys import APP_BINDINGS, MainScreen
from app_tui.live import EVENT_BUFFER, REFRESH_HZ, LiveRun
from app_tui.prefs import Prefs
from app_tui.prompts import UnsavedScreen
from app_tui.screens import HelpScreen, SaveScreen
from app_tui.session import TakeSession
from app_tui.settings import (
    DEVICES,
    HISTORY_GUIDANCE_HELP,
    INT_FIELDS,
    PRECISION_HELP,
    PRECISIONS,
    Settings,
    SettingsError,
    parse_settings,
)
from app_tui.takes import TakesScreen
from app_tui.player import Player, PlayerKeys
from app_tui.widgets.files import VideoTree
from app_tui.widgets.filmstrip import Filmstrip
from app_tui.widgets.heatmap import ScheduleHeatmap
from app_tui.widgets.log import LogView
from app_tui.widgets.preview import FramePreview, ImageMode
from app_tui.worker import Job, PipelineCache, one_line, preload, run_job
from engine.errors import ArdiffError
from engine.run import PRECISION_LABELS, Plan
from engine.takes import Takes

ADAPT_HELP = ("adapt to this clip: fine-tune the model on the clip first (slower; kept only when it predicts "
              "held-out frames of the clip better). Needs a clip.")
# actions that act on the main screen: off while a dialog is on top (its own keys work there)
_MAIN_ONLY = {"generate", "cancel", "save", "open", "takes", "play", "step", "first", "last", "focus_files"}


def _tree_root(clip: Path | None, last_dir: str = "") -> Path:
    """The working directory, like any terminal tool; the clip's folder when the clip lives elsewhere; with
    no clip, the folder last opened from when it is elsewhere and still there."""
    cwd = Path.cwd()
    if clip is None:
        last = Path(last_dir) if last_dir else None
        return last if last is not None and last.is_dir() else cwd
    folder = clip.expanduser().resolve().parent
    return cwd if folder.is_relative_to(cwd) else folder


class ArdiffApp(LiveRun, TakeSession, PlayerKeys, App[list[Path]]):
    """Continue a video with AR-Diffusion from a terminal. `exit` returns the paths saved, for printing.

    `prefs`: what to remember between sessions (main() loads them from the config folder; None: defaults,
    and nothing is written, as in tests and screenshots)."""

    CSS_PATH = "app.tcss"
    TITLE = "ardiff"
    ENABLE_COMMAND_PALETTE = False
    AUTO_FOCUS = "#files"  # start on the tree, not in a text field, so single-letter keys work at once
    BINDINGS = APP_BINDINGS

    def __init__(self, clip: str | Path | None = None, settings: Settings | None = None,
                 image_mode: ImageMode = "auto", start_dir: str | Path | None = None,
                 screenshot_after: tuple[int, str] | None = None, prefs: Prefs | None = None,
                 preload_model: bool = True) -> None:
        super().__init__()
        self.remember = prefs is not None
        self.prefs = prefs if prefs is not None else Prefs()
        self.initial_clip = Path(clip) if clip else None
        self.initial = settings or self.prefs.settings()
        self.image_mode: ImageMode = image_mode
        self.start_dir = Path(start_dir) if start_dir else _tree_root(self.initial_clip, self.prefs.last_dir)
        self.screenshot_after = screenshot_after
        self.preload_model = preload_model
        self.clip: Clip | None = None
        self.pipes = PipelineCache()
        self.takes = Takes()
        self.take_input_hw: dict[int, tuple[int, int] | None] = {}  # take -> its clip's (height, width)
        self.player = Player(self, self._show_frame)
        self.job: Job | None = None
        self.job_worker: Worker | None = None
        self.load_worker: Worker | None = None
        self.model_worker: Worker | None = None
        self.save_worker: Worker | None = None
        self.running = False
        self.model_loading = False
        self.frames: list[np.ndarray] = []  # on screen: the running job's frames, or the shown take's video
        self.num_context = 0
        self.num_new = 0
        self.plan: Plan | None = None  # the running (or last) run's plan
        self.last_done = None  # the last run's engine.pipeline.Done
        self.saved: list[Path] = []
        self.messages: list[str] = []  # every log line as plain text
        self.errors: list[str] = []
        self._leaving = False  # set just before exit: the worker then stops talking to the UI
        # Events from the worker thread, applied by _pump; bounded so a stalled terminal pauses the model
        # instead of filling memory.
        self._events: queue.Queue[tuple[Job, object]] = queue.Queue(maxsize=EVENT_BUFFER)
        self._shoot = False  # --screenshot-after: the frame has arrived
        # Arrived but not yet drawn (see _draw_pending).
        self._pending: list[np.ndarray] = []
        self._pending_reset = False
        self._newest: tuple[np.ndarray, str] | None = None
        self._progress = None

    @property
    def unsaved(self) -> bool:
        """Whether any take would be lost if the session ended now."""
        return bool(self.takes.unsaved())

    def get_default_screen(self) -> Screen:
        return MainScreen(id="_default")

    # ------------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        text_only = self.image_mode == "text"
        yield Header(icon="▶")
        with Horizontal(id="body"):
            with Vertical(id="sidebar"):
                # scrolls when the terminal is too short for the form; the buttons below stay in view
                with VerticalScroll(id="sidebar-scroll"):
                    with Vertical(id="clip-panel") as panel:
                        panel.border_title = "Clip"
                        yield Input(str(self.initial_clip or ""), placeholder="clip path, enter opens",
                                    id="path", compact=True)
                        yield VideoTree(self.start_dir, id="files")
                    with Grid(id="form") as form:
                        form.border_title = "Settings"
                        for field, label in INT_FIELDS.items():
                            yield Label(label)
                            yield Input(str(getattr(self.initial, field)), id=f"set-{field}", type="integer",
                                        compact=True)
                        yield Label("hist. guide")
                        guidance = self.initial.history_guidance
                        yield Input("" if guidance is None else str(guidance), placeholder="model default",
                                    id="set-history_guidance", type="number", valid_empty=True, compact=True,
                                    tooltip=f"history guidance: {HISTORY_GUIDANCE_HELP}")
                        yield Label("checkpoint")
                        yield Input(str(self.initial.checkpoint or ""), placeholder="embedded default",
                                    id="set-checkpoint", compact=True)
                        yield Label("device")
                        devices = list(dict.fromkeys([*DEVICES, self.initial.device]))  # keeps e.g. cuda:1
                        yield Select([(d, d) for d in devices], value=self.initial.device, allow_blank=False,
                                     id="set-device", compact=True)
                        yield Label("precision")
                        yield Select([(PRECISION_LABELS[p], p) for p in PRECISIONS],
                                     value=self.initial.precision, allow_blank=False, id="set-precision",
                                     compact=True, tooltip=PRECISION_HELP)
                        yield Label("adapt")
                        yield Checkbox("to this clip", self.initial.adapt, id="set-adapt", compact=True,
                                       tooltip=ADAPT_HELP, disabled=True)
                with Horizontal(id="buttons"):
                    yield Button("Generate", id="generate", variant="primary", compact=True,
                                 disabled=self.preload_model)
                    yield Button("Cancel", id="cancel", variant="error", compact=True, disabled=True)
                    yield Button("Save", id="save", variant="success", compact=True, disabled=True)
            with Vertical(id="main"):
                with Horizontal(id="previews"):
                    yield FramePreview("Context: last frame", self.image_mode, empty="open a clip (o)",
                                       id="context-preview")
                    result = FramePreview("Newest frame", self.image_mode, empty="generate (g) to see frames",
                                          id="newest-preview")
                    result.can_focus = True  # the player's panel: Space, arrows, Home/End play the take
                    yield result
                yield Filmstrip(text_only=text_only, id="filmstrip")
                with Horizontal(id="lower"):
                    yield ScheduleHeatmap(text_only=text_only, id="heatmap")
                    log = LogView(id="log")
                    log.border_title = "Log"
                    yield log
        with Horizontal(id="status"):
            # a real 0 while idle: total None would draw Textual's indeterminate pulse
            yield ProgressBar(total=1, id="progress", show_eta=False, show_percentage=True)
            yield Label("idle", id="stats")
        yield Footer()

    def on_mount(self) -> None:
        self._fit_layout()
        self.set_interval(1 / REFRESH_HZ, self._pump)
        self.sub_title = "no clip"
        if self.preload_model:
            self.model_loading = True
            self._stats("loading the model ...")  # on_ready starts it: the layout is painted first
        if self.initial_clip:
            self.open_clip(self.initial_clip)
        else:
            self.say("open a clip: type a path (o) or pick one in the tree; ? shows the keys")

    @property
    def main_screen(self) -> Screen:
        """The app's own screen (self.screen is a dialog while one is open)."""
        return self.screen_stack[0]

    def on_resize(self) -> None:
        self._fit_layout()

    def _fit_layout(self) -> None:
        width, height = self.size
        self.screen.set_class(width < 100 or height < 32, "-small")

    # ------------------------------------------------------------------ the model, behind the layout

    def on_ready(self) -> None:
        """Textual posts Ready right after the first paint: only now start loading torch and the model."""
        if self.preload_model and self.model_worker is None:
            self.model_worker = self._preload(self.initial)

    @work(thread=True, group="model", exit_on_error=False, description="load the model")
    def _preload(self, settings: Settings) -> None:
        where = settings.checkpoint or "the embedded default model"
        self.call_from_thread(self.say, f"loading {where} ...")
        try:
            described = preload(settings, self.pipes)
        except Exception as err:  # shown once; Generate tries again with what the form says then
            message = one_line(err)
            if not isinstance(err, ArdiffError):
                message = f"{type(err).__name__}: {message}"
            self.call_from_thread(self._model_loaded, None, message)
        else:
            self.call_from_thread(self._model_loaded, described, None)

    def _model_loaded(self, described: str | None, problem: str | None) -> None:
        self.model_loading = False
        if described is not None:
            self.say(f"model ready: {described}")
            self._stats("idle")
        else:
            self.say(f"the model did not load: {problem}", "yellow")
            self._stats("no model loaded: check the checkpoint, then generate")
        self._set_buttons()

    # ------------------------------------------------------------------ messages to the user

    def say(self, text: str, style: str = "") -> None:
        """A line in the log pane (and in `messages`, which tests and the screenshot read)."""
        self.messages.append(text)
        self.main_screen.query_one("#log", LogView).write(text, style)

    def show_error(self, message: str, field: str | None = None) -> None:
        """A one-line problem: logged in red, a toast, and the field to fix focused. Nothing else changes."""
        self.errors.append(message)
        self.say(f"error: {message}", "bold red")
        self.notify(message, title="ardiff", severity="error", timeout=8)
        if field:
            widget = self.main_screen.query_one(f"#set-{field}")
            widget.add_class("-invalid")
            widget.focus()

    # ------------------------------------------------------------------ clip

    @on(Input.Submitted, "#path")
    def _path_submitted(self, event: Input.Submitted) -> None:
        if event.value.strip():
            self.request_open(Path(event.value.strip()))

    @on(DirectoryTree.FileSelected)
    def _file_selected(self, event: DirectoryTree.FileSelected) -> None:
        self.main_screen.query_one("#path", Input).value = str(event.path)
        self.request_open(event.path)

    def request_open(self, path: Path) -> None:
        """Open a clip the person picked: never mid-run (saying why); asks first when takes are unsaved
        (Discard drops them). The takes that are kept stay in the list, labelled with their own clip."""
        if self.running:
            self.notify("a run is in progress: esc cancels it, then open the clip", severity="warning")
            return

        def discard() -> None:
            for take in self.takes.unsaved():
                self.takes.remove(take.number)
            self.say("discarded the unsaved takes")

        self.ask_unsaved("Open another clip", lambda: self.open_clip(path), discard=discard)

    def open_clip(self, path: Path) -> None:
        """Load a clip on a worker thread; a bad file leaves the current clip as it was."""
        self.say(f"opening {path}")
        self.load_worker = self._load_clip(path)

    @work(thread=True, group="load", exclusive=True, exit_on_error=False, description="open clip")
    def _load_clip(self, path: Path) -> None:
        try:
            clip = load_clip(path)
        except ArdiffError as err:
            self.call_from_thread(self.show_error, one_line(err))
        except Exception as err:  # a decoder bug: one line, never a traceback on screen
            self.call_from_thread(self.show_error,
                                  f"cannot open {path}: {type(err).__name__}: {one_line(err)}")
        else:
            self.call_from_thread(self._clip_loaded, clip)

    def _clip_loaded(self, clip: Clip) -> None:
        if self.clip is not None and self.takes.current is not None:
            self.clear_result()  # the old result is not this clip's: it stays in the takes list (t)
            self.say("the takes of the other clip are in the takes list (t)")
        self.clip = clip
        self.sub_title = clip.summary()
        self.prefs.last_dir = str(clip.path.expanduser().resolve().parent)
        self.say(f"opened {clip.summary()}")
        self.main_screen.query_one("#context-preview", FramePreview).show(
            clip.tail[-1], f"frame {clip.num_frames - 1}, {clip.info.width}x{clip.info.height}")
        context = self._int_setting("context")
        if context is not None and context > clip.num_frames:
            self.say(f"note: the clip has {clip.num_frames} frames, fewer than context {context}: a run uses "
                     f"all {clip.num_frames}", "yellow")
        self._set_buttons()

    def _int_setting(self, field: str) -> int | None:
        try:
            return int(self.main_screen.query_one(f"#set-{field}", Input).value)
        except ValueError:
            return None

    # ------------------------------------------------------------------ generation

    def read_settings(self) -> Settings:
        """The form as Settings (SettingsError names the field to fix)."""
        values = {field: self.main_screen.query_one(f"#set-{field}", Input).value for field in INT_FIELDS}
        values["history_guidance"] = self.main_screen.query_one("#set-history_guidance", Input).value
        values["checkpoint"] = self.main_screen.query_one("#set-checkpoint", Input).value
        values["device"] = str(self.main_screen.query_one("#set-device", Select).value)
        values["precision"] = str(self.main_screen.query_one("#set-precision", Select).value)
        values["adapt"] = "on" if self.main_screen.query_one("#set-adapt", Checkbox).value else "off"
        return parse_settings(values)

    @on(Input.Changed)
    def _clear_invalid(self, event: Input.Changed) -> None:
        event.input.remove_class("-invalid")

    @on(Button.Pressed, "#generate")
    def _generate_pressed(self) -> None:
        self.action_generate()

    @on(Button.Pressed, "#cancel")
    def _cancel_pressed(self) -> None:
        self.action_cancel()

    @on(Button.Pressed, "#save")
    def _save_pressed(self) -> None:
        self.action_save()

    def action_generate(self) -> None:
        """Check the settings and the clip here (instant messages), then run on a worker thread. A new run
        never replaces a result: it becomes a take of its own."""
        if self.running:
            self.notify("a run is in progress; esc cancels it", severity="warning")
            return
        if self.model_loading:
            self.notify("the model is still loading: Generate works once it is ready", severity="warning")
            return
        try:
            settings = self.read_settings()
        except SettingsError as err:
            self.show_error(one_line(err), err.field)
            return
        clip = self.clip
        if clip is None:
            self.say("no clip open: generating from nothing")
        elif len(clip.tail) < settings.context:  # a short clip: all of it is the context, said aloud
            self.say(f"the clip has {len(clip.tail)} frame(s), fewer than context {settings.context}: using "
                     f"all {len(clip.tail)}", "yellow")
            settings = dataclasses.replace(settings, context=len(clip.tail))
        self._store_prefs()
        self.job = Job(settings, clip.tail if clip else None,  # the plan takes the last `context` frames
                       clip=clip.path if clip else None,
                       input_hw=(clip.info.height, clip.info.width) if clip else None,
                       fps=clip.info.fps if clip else None)
        self.running = True
        self.player.clear()
        self._set_buttons()
        where = settings.checkpoint or "the embedded default model"
        self.say(f"loading {where} on {settings.device}, precision {settings.precision} ...")
        self._stats("loading model ...")
        self.job_worker = self._run_job(self.job)

    @work(thread=True, group="generate", exit_on_error=False, description="generate")
    def _run_job(self, job: Job) -> None:
        run_job(job, self.pipes, lambda event: self._emit(job, event))

    def action_cancel(self) -> None:
        """Esc: stop the run within one row (or one adapting step), keeping its frames as a take."""
        if self.running and self.job:
            if not self.job.cancel.is_set():
                self.job.cancel.set()
                self.say("cancelling: the run stops after the current row")
                self._stats("cancelling ...")
        else:
            self.set_focus(None)

    def _set_buttons(self) -> None:
        screen = self.main_screen
        screen.query_one("#generate", Button).disabled = self.running or self.model_loading
        screen.query_one("#cancel", Button).disabled = not self.running
        screen.query_one("#save", Button).disabled = self.takes.current is None
        screen.query_one("#set-adapt", Checkbox).disabled = self.clip is None  # nothing to adapt to
        self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Keys that would do nothing are off (and so not in the footer): the player's without a take or
        mid-run, Cancel with no run, Save with no take; the main screen's while a dialog is on top."""
        if action in _MAIN_ONLY and self.screen is not self.main_screen:
            return False
        if action == "quit" and isinstance(self.screen, (UnsavedScreen, SaveScreen)):
            return False
        if action in ("play", "step", "first", "last"):
            return self.takes.current is not None and not self.running
        if action == "cancel":
            return self.running
        if action == "save":
            return self.takes.current is not None
        return True

    # ------------------------------------------------------------------ save, takes, player

    def action_save(self) -> None:
        """Ctrl+S: save the shown take (mid-run too: the run's own frames become a take when it ends)."""
        take = self.takes.current
        if take is None:
            self.notify("nothing to save yet: generate first", severity="warning")
            return
        self.save_take_dialog(take.number)

    def action_takes(self) -> None:
        if not isinstance(self.screen, TakesScreen):
            self.push_screen(TakesScreen())

    # ------------------------------------------------------------------ other keys

    def action_open(self) -> None:
        if self.running:
            self.notify("a run is in progress: esc cancels it, then open a clip", severity="warning")
            return
        self.main_screen.query_one("#path", Input).focus()

    def action_focus_files(self) -> None:
        self.main_screen.query_one("#files", VideoTree).focus()

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    async def action_quit(self) -> None:
        """Stop a run first (within a row: its frames become a take); with unsaved takes, ask."""
        if self.running and self.job:
            self.action_cancel()
            if self.job_worker is not None:
                await self.job_worker.wait()
            await self._pump()  # Done(cancelled) with the frames made so far: a take
        self.ask_unsaved("Quit", self._leave)

    def _leave(self) -> None:
        self._store_prefs()
        self._leaving = True
        self.exit(list(self.saved))

    def _store_prefs(self) -> None:
        """Remember the settings (only when the app was given prefs to keep: main(), not tests)."""
        if not self.remember:
            return
        try:
            self.prefs.remember(self.read_settings())
        except SettingsError:
            pass  # a half-typed field: keep what the last good form said
        self.prefs.save()

    async def _screenshot_now(self, path: str) -> None:
        """--screenshot-after: let the screen catch up (no events are applied meanwhile), save, leave."""
        await asyncio.sleep(0.3)
        self.save_screenshot(filename=Path(path).name, path=str(Path(path).parent or "."))
        self.say(f"screenshot saved to {path}")
        self._leaving = True
        if self.job:
            self.job.cancel.set()
        self.exit(list(self.saved))

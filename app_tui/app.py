"""The ardiff terminal app: pick a clip, set the run, watch frames arrive, save them.

The app only consumes the pipeline's events (see app_tui.worker); it holds the frames made so far, so a
cancelled or failed run never loses them.
"""

from __future__ import annotations

import asyncio
import queue
import time
import traceback
from pathlib import Path

import numpy as np
from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.css.query import NoMatches
from textual.widgets import Button, DirectoryTree, Footer, Header, Input, Label, ProgressBar, RichLog, Select
from textual.worker import Worker

from app_tui.clip import Clip, load_clip
from app_tui.screens import HelpScreen, SaveScreen
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
from app_tui.widgets.filmstrip import Filmstrip
from app_tui.widgets.files import VideoTree
from app_tui.widgets.heatmap import ScheduleHeatmap
from app_tui.widgets.preview import FramePreview, ImageMode
from app_tui.worker import Failed, Job, PipelineCache, Started, one_line, run_job
from engine.errors import ArdiffError
from engine.pipeline import Done, FrameReady, Progress
from engine.run import DEFAULT_FPS, PRECISION_LABELS, Plan, clock
from engine.video_io import write_video

REFRESH_HZ = 10  # live views redraw at most this often; enough to watch, cheap over SSH
EVENT_BUFFER = 4096  # events the model may run ahead of the screen (a few MB of frames at most)


def _tree_root(clip: Path | None) -> Path:
    """The working directory, like any terminal tool; the clip's folder when the clip lives elsewhere."""
    cwd = Path.cwd()
    if clip is None:
        return cwd
    folder = clip.expanduser().resolve().parent
    return cwd if folder.is_relative_to(cwd) else folder


class ArdiffApp(App[list[Path]]):
    """Continue a video with AR-Diffusion from a terminal. `exit` returns the paths saved, for printing."""

    CSS_PATH = "app.tcss"
    TITLE = "ardiff"
    ENABLE_COMMAND_PALETTE = False
    AUTO_FOCUS = "#files"  # start on the tree, not in a text field, so single-letter keys work at once
    BINDINGS = [
        Binding("g,f5", "generate", "Generate", key_display="g"),
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "save", "Save", priority=True),
        Binding("o", "open", "Open"),
        Binding("f", "focus_files", "Files", show=False),
        Binding("question_mark,f1", "help", "Help", key_display="?"),
        Binding("q,f10,ctrl+q", "quit", "Quit", key_display="q"),
    ]

    def __init__(self, clip: str | Path | None = None, settings: Settings | None = None,
                 image_mode: ImageMode = "auto", start_dir: str | Path | None = None,
                 screenshot_after: tuple[int, str] | None = None) -> None:
        super().__init__()
        self.initial_clip = Path(clip) if clip else None
        self.initial = settings or Settings()
        self.image_mode: ImageMode = image_mode
        self.start_dir = Path(start_dir) if start_dir else _tree_root(self.initial_clip)
        self.screenshot_after = screenshot_after
        self.clip: Clip | None = None
        self.pipes = PipelineCache()
        self.job: Job | None = None
        self.job_worker: Worker | None = None
        self.load_worker: Worker | None = None
        self.save_worker: Worker | None = None
        self.running = False
        self.frames: list[np.ndarray] = []  # the output so far: fitted context first, then new frames
        self.num_context = 0
        self.num_new = 0
        self.plan: Plan | None = None  # the running (or last) run's plan
        self.last_done: Done | None = None
        self.unsaved = False
        self.saved: list[Path] = []
        self.messages: list[str] = []  # every log line as plain text
        self.errors: list[str] = []
        self._quit_armed = False
        self._leaving = False  # set just before exit: the worker then stops talking to the UI
        # Events from the worker thread, applied by _pump; bounded so a stalled terminal pauses the model
        # instead of filling memory.
        self._events: queue.Queue[tuple[Job, object]] = queue.Queue(maxsize=EVENT_BUFFER)
        self._shoot = False  # --screenshot-after: the frame has arrived
        # Arrived but not yet drawn (see _draw_pending).
        self._pending: list[np.ndarray] = []
        self._pending_reset = False
        self._newest: tuple[np.ndarray, str] | None = None
        self._progress: Progress | None = None

    # ------------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        text_only = self.image_mode == "text"
        yield Header(icon="▶")
        with Horizontal(id="body"):
            with Vertical(id="sidebar"):
                with Vertical(id="clip-panel") as panel:
                    panel.border_title = "Clip"
                    yield Input(str(self.initial_clip or ""), placeholder="clip path, enter opens", id="path",
                                compact=True)
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
                    yield Select([(PRECISION_LABELS[p], p) for p in PRECISIONS], value=self.initial.precision,
                                 allow_blank=False, id="set-precision", compact=True, tooltip=PRECISION_HELP)
                with Horizontal(id="buttons"):
                    yield Button("Generate", id="generate", variant="primary", compact=True)
                    yield Button("Cancel", id="cancel", variant="error", compact=True, disabled=True)
                    yield Button("Save", id="save", variant="success", compact=True, disabled=True)
            with Vertical(id="main"):
                with Horizontal(id="previews"):
                    yield FramePreview("Context: last frame", self.image_mode, empty="open a clip (o)",
                                       id="context-preview")
                    yield FramePreview("Newest frame", self.image_mode, empty="generate (g) to see frames",
                                       id="newest-preview")
                yield Filmstrip(text_only=text_only, id="filmstrip")
                with Horizontal(id="lower"):
                    yield ScheduleHeatmap(text_only=text_only, id="heatmap")
                    log = RichLog(id="log", wrap=True, markup=False, min_width=10)
                    log.border_title = "Log"
                    yield log
        with Horizontal(id="status"):
            yield ProgressBar(id="progress", show_eta=False, show_percentage=True)
            yield Label("idle", id="stats")
        yield Footer()

    def on_mount(self) -> None:
        self._fit_layout()
        self.set_interval(1 / REFRESH_HZ, self._pump)
        self.sub_title = "no clip"
        if self.initial_clip:
            self.open_clip(self.initial_clip)
        else:
            self.say("open a clip: type a path (o) or pick one in the tree; ? shows the keys")

    @property
    def main_screen(self):
        """The app's own screen (self.screen is the help or save dialog while one is open)."""
        return self.screen_stack[0]

    def on_resize(self) -> None:
        self._fit_layout()

    def _fit_layout(self) -> None:
        width, height = self.size
        self.screen.set_class(width < 100 or height < 32, "-small")

    # ------------------------------------------------------------------ messages to the user

    def say(self, text: str, style: str = "") -> None:
        """A line in the log pane (and in `messages`, which tests and the screenshot read)."""
        self.messages.append(text)
        line = Text(time.strftime("%H:%M:%S "), style="dim")
        line.append(text, style=style)
        self.main_screen.query_one("#log", RichLog).write(line)

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
            self.open_clip(Path(event.value.strip()))

    @on(DirectoryTree.FileSelected)
    def _file_selected(self, event: DirectoryTree.FileSelected) -> None:
        self.main_screen.query_one("#path", Input).value = str(event.path)
        self.open_clip(event.path)

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
        self.clip = clip
        self.sub_title = clip.summary()
        self.say(f"opened {clip.summary()}")
        self.main_screen.query_one("#context-preview", FramePreview).show(
            clip.tail[-1], f"frame {clip.num_frames - 1}, {clip.info.width}x{clip.info.height}")
        context = self._int_setting("context")
        if context is not None and context > clip.num_frames:
            self.say(f"note: the clip has {clip.num_frames} frames, fewer than context {context}", "yellow")

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
        """Check the settings and the clip here (instant messages), then run on a worker thread."""
        if self.running:
            self.notify("a run is in progress; esc cancels it", severity="warning")
            return
        try:
            settings = self.read_settings()
        except SettingsError as err:
            self.show_error(one_line(err), err.field)
            return
        context = self.clip.tail if self.clip else None  # the plan takes the last `context` frames of it
        if self.clip is None:
            self.say("no clip open: generating from nothing")
        self.job = Job(settings, context)
        self.running = True
        self._quit_armed = False
        self._set_buttons()
        where = settings.checkpoint or "the embedded default model"
        self.say(f"loading {where} on {settings.device}, precision {settings.precision} ...")
        self._stats("loading model ...")
        self.job_worker = self._run_job(self.job)

    @work(thread=True, group="generate", exit_on_error=False, description="generate")
    def _run_job(self, job: Job) -> None:
        run_job(job, self.pipes, lambda event: self._emit(job, event))

    def _emit(self, job: Job, event: object) -> None:
        """Worker thread: queue an event for the UI. Blocks only while the queue is full (a stalled
        terminal), so the model runs at its own speed, not at the terminal's."""
        while True:
            if self._leaving or not self.is_running:  # the app is going: stop the model within a row
                job.cancel.set()
                return
            try:
                self._events.put((job, event), timeout=0.2)
                return
            except queue.Full:
                continue

    async def _pump(self) -> None:
        """UI thread, REFRESH_HZ times a second: apply every queued event, then draw once."""
        while not self._leaving:
            try:
                job, event = self._events.get_nowait()
            except queue.Empty:
                break
            if job is not self.job:
                continue  # a late event from a run the user already replaced
            try:
                self._apply(event)
            except Exception as err:  # a bug in drawing must not kill the run or the app
                self.say(f"display error: {type(err).__name__}: {one_line(err)}", "red")
                self.log.error(traceback.format_exc())
            if self._shoot:
                break
        self._draw_pending()
        if self._shoot and self.screenshot_after:
            self._shoot = False
            await self._screenshot_now(self.screenshot_after[1])

    def _apply(self, event: object) -> None:
        if isinstance(event, FrameReady):
            self._on_frame(event)
        elif isinstance(event, Progress):
            self._on_progress(event)
        elif isinstance(event, Started):
            self._on_started(event)
        elif isinstance(event, Done):
            self._on_done(event)
        elif isinstance(event, Failed):
            self._on_failed(event)

    def _on_started(self, event: Started) -> None:
        plan = self.plan = event.plan
        self.say(event.description)
        if plan.fit_note:
            self.say(f"input {plan.fit_note} for the model")
        self.num_context, self.num_new = plan.num_context, plan.num_new
        self.frames = list(plan.context)
        self.last_done = None
        self._pending, self._pending_reset, self._newest, self._progress = [], False, None, None
        self.sub_title = f"{self.clip.summary() if self.clip else 'from nothing'} | {event.description}"
        self.main_screen.query_one("#filmstrip", Filmstrip).set_frames(self.frames, self.num_context)
        self.main_screen.query_one("#heatmap", ScheduleHeatmap).set_schedule(
            plan.levels, plan.steps, self.num_context)
        if self.num_context:
            self.main_screen.query_one("#context-preview", FramePreview).show(
                self.frames[-1], f"frame {self.num_context - 1}, as the model sees it")
        self.main_screen.query_one("#newest-preview", FramePreview).show(None)
        self.main_screen.query_one("#progress", ProgressBar).update(
            total=plan.total_rows, progress=0)
        self._stats(f"0/{self.num_new} frames")

    def _on_frame(self, event: FrameReady) -> None:
        # Only state here: drawing happens once per _pump, however many frames arrived since.
        if event.index == len(self.frames):
            self.frames.append(event.image)
            self._pending.append(event.image)
        else:  # not expected from the pipeline, but an index is an index
            self.frames[event.index:event.index + 1] = [event.image]
            self._pending_reset = True
        new = event.index - self.num_context + 1
        self._newest = (event.image, f"frame {event.index} ({new}/{self.num_new} new)")
        self.unsaved = True
        if self.screenshot_after and new == self.screenshot_after[0]:
            self._shoot = True

    def _on_progress(self, event: Progress) -> None:
        self._progress = event

    def _draw_pending(self) -> None:
        """Draw what arrived since the last flush (a timer calls this REFRESH_HZ times a second)."""
        if self._leaving or not self.screen_stack:
            return
        try:
            strip = self.main_screen.query_one("#filmstrip", Filmstrip)
        except NoMatches:  # shutting down: the widgets are already gone
            return
        if self._pending_reset:
            strip.set_frames(self.frames, self.num_context)
        else:
            for frame in self._pending:
                strip.add(frame)
        if self._pending or self._pending_reset:
            self.main_screen.query_one("#save", Button).disabled = len(self.frames) <= self.num_context
        self._pending, self._pending_reset = [], False
        if self._newest is not None:
            self.main_screen.query_one("#newest-preview", FramePreview).show(*self._newest)
            self._newest = None
        event, self._progress = self._progress, None
        if event is None:
            return
        bar = self.main_screen.query_one("#progress", ProgressBar)
        bar.update(total=event.total_rows, progress=event.row)
        self.main_screen.query_one("#heatmap", ScheduleHeatmap).set_row(event.row)
        rate = event.frames_done / event.elapsed if event.elapsed > 0 else 0.0
        left = self.plan.seconds_left(event.row, event.elapsed) if self.plan else None  # weighs rows by work
        made = len(self.frames) - self.num_context  # counts frames already shown, not only finished rows
        self._stats(
            f"{made}/{self.num_new} frames  row {event.row}/{event.total_rows}  "
            f"{rate:.1f} fr/s  ETA {'?' if left is None else clock(left)}")

    def _stats(self, text: str) -> None:
        # A fixed size: no relayout of the whole screen per row.
        self.main_screen.query_one("#stats", Label).update(text, layout=False)

    def _on_done(self, event: Done) -> None:
        self._draw_pending()
        self.running = False
        self.last_done = event
        self.frames = list(event.video)
        self.main_screen.query_one("#filmstrip", Filmstrip).set_frames(self.frames, event.num_context)
        new = len(event.video) - event.num_context
        self.unsaved = new > 0
        rate = f", {new / event.elapsed:.1f} frames/s" if event.elapsed > 0 and new else ""
        if event.cancelled:
            summary = f"cancelled: kept {len(event.video)} frames ({event.num_context} context + {new} new)"
            self.say(f"{summary}; ctrl+s saves them", "yellow")
        else:
            summary = f"done: {len(event.video)} frames ({event.num_context} context + {new} new)"
            self.say(f"{summary} in {event.elapsed:.1f} s{rate}; ctrl+s saves", "green")
        self._stats(f"{summary.split(':')[0]} in {clock(event.elapsed)}")
        self._set_buttons()

    def _on_failed(self, event: Failed) -> None:
        self._draw_pending()
        self.running = False
        self._stats("failed")
        self.show_error(event.message, event.field)
        if event.details:
            self.say(f"details: {event.details}", "dim")
        self._set_buttons()

    def action_cancel(self) -> None:
        """Esc: stop the run within one row, keeping its frames; with nothing running, leave the field."""
        if self.running and self.job:
            if not self.job.cancel.is_set():
                self.job.cancel.set()
                self.say("cancelling: the run stops after the current row")
                self._stats("cancelling ...")
        else:
            self.set_focus(None)

    def _set_buttons(self) -> None:
        self.main_screen.query_one("#generate", Button).disabled = self.running
        self.main_screen.query_one("#cancel", Button).disabled = not self.running
        self.main_screen.query_one("#save", Button).disabled = not self.frames

    # ------------------------------------------------------------------ save

    def suggested_output(self) -> str:
        stem = f"{self.clip.path.stem}_ardiff" if self.clip else "ardiff"
        return str(Path("out") / f"{stem}.mp4")

    def action_save(self) -> None:
        if not self.frames or (self.num_context == len(self.frames) and not self.last_done):
            self.notify("nothing to save yet: generate first", severity="warning")
            return
        video = np.stack(self.frames)
        if self.running:
            self.say(f"saving the {len(video)} frames made so far; the run goes on")
        fps = self.clip.info.fps if self.clip else DEFAULT_FPS

        def chosen(path: str | None) -> None:
            if path:
                self.save_worker = self._write(path, video, fps)

        self.push_screen(SaveScreen(self.suggested_output(), len(video)), chosen)

    @work(thread=True, group="save", exit_on_error=False, description="save")
    def _write(self, path: str, video: np.ndarray, fps: float) -> None:
        try:
            written = write_video(path, video, fps=fps)
        except ArdiffError as err:
            self.call_from_thread(self.show_error, one_line(err))
        except Exception as err:
            self.call_from_thread(self.show_error,
                                  f"cannot save {path}: {type(err).__name__}: {one_line(err)}")
        else:
            self.call_from_thread(self._saved, written.resolve(), len(video))

    def _saved(self, path: Path, count: int) -> None:
        self.saved.append(path)
        self.unsaved = False
        self.say(f"saved {count} frames to {path}", "green")
        self.notify(str(path), title=f"saved {count} frames")

    # ------------------------------------------------------------------ other keys

    def action_open(self) -> None:
        self.main_screen.query_one("#path", Input).focus()

    def action_focus_files(self) -> None:
        self.main_screen.query_one("#files", VideoTree).focus()

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    async def action_quit(self) -> None:
        """Stop a run first (within a row); with unsaved frames, the first press only warns."""
        if self.running and self.job:
            self.action_cancel()
            if self.job_worker is not None:
                await self.job_worker.wait()
            await self._pump()  # Done(cancelled) with the frames made so far
        if self.unsaved and not self._quit_armed:
            self._quit_armed = True
            self.notify(f"{len(self.frames)} frames are not saved: ctrl+s saves them, q again quits",
                        severity="warning", timeout=6)
            return
        self._leaving = True
        self.exit(list(self.saved))

    async def _screenshot_now(self, path: str) -> None:
        """--screenshot-after: let the screen catch up (no events are applied meanwhile), save, leave."""
        await asyncio.sleep(0.3)
        self.save_screenshot(filename=Path(path).name, path=str(Path(path).parent or "."))
        self.say(f"screenshot saved to {path}")
        self._leaving = True
        if self.job:
            self.job.cancel.set()
        self.exit(list(self.saved))

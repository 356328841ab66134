"""A run as it happens: the worker thread's events queued, applied on the UI thread and drawn at most
REFRESH_HZ times a second (a mixin of ArdiffApp; the app owns the widgets and the takes).

Events: Adapting per fine-tuning step and one Adapted (with "adapt to this clip"), Started (the plan), then
FrameReady / Progress per row, then Done, or one Failed. Done, finished or cancelled, becomes a take.
"""

from __future__ import annotations

import queue
import traceback

import numpy as np
from textual.css.query import NoMatches
from textual.widgets import ProgressBar

from app_tui.widgets.filmstrip import Filmstrip
from app_tui.widgets.heatmap import ScheduleHeatmap
from app_tui.widgets.preview import FramePreview
from app_tui.worker import Failed, Job, Started, one_line
from engine.eta import RunClock
from engine.run import DEFAULT_FPS, clock

REFRESH_HZ = 10  # live views redraw at most this often; enough to watch, cheap over SSH
EVENT_BUFFER = 4096  # events the model may run ahead of the screen (a few MB of frames at most)


class LiveRun:
    """ArdiffApp's handling of the running job's events (see the module docstring)."""

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
        # engine.pipeline is loaded by now (the worker imported it to make these events)
        from engine.pipeline import Adapted, Adapting, Done, FrameReady, Progress

        if isinstance(event, FrameReady):
            self._on_frame(event)
        elif isinstance(event, Progress):
            self._progress = event
        elif isinstance(event, Adapting):
            self._on_adapting(event)
        elif isinstance(event, Adapted):
            self.say(event.message, "green" if event.kept else "yellow")
        elif isinstance(event, Started):
            self._on_started(event)
        elif isinstance(event, Done):
            self._on_done(event)
        elif isinstance(event, Failed):
            self._on_failed(event)

    def _on_adapting(self, event) -> None:
        if event.step <= 1:
            self.say(f"adapting the model to the clip: {event.total} steps (esc cancels)")
        self.main_screen.query_one("#progress", ProgressBar).update(total=event.total, progress=event.step)
        left = "?" if event.seconds_left is None else clock(event.seconds_left)
        self._stats(f"adapting {event.step}/{event.total}  loss {event.loss:.4f}  ETA {left}")

    def _on_started(self, event: Started) -> None:
        plan = self.plan = event.plan
        self.clock = RunClock(plan)  # the ETA the desktop app shows too: warm-up and decoding counted
        self.say(event.description)
        if plan.fit_note:
            self.say(f"input {plan.fit_note} for the model")
        self.num_context, self.num_new = plan.num_context, plan.num_new
        self.frames = list(plan.context)
        self.last_done = None
        self.player.clear()
        self._pending, self._pending_reset, self._newest, self._progress = [], False, None, None
        clip = self.job.clip.name if self.job and self.job.clip else "from nothing"
        self.sub_title = f"{clip} | {event.description}"
        self.main_screen.query_one("#filmstrip", Filmstrip).set_frames(self.frames, self.num_context)
        self.main_screen.query_one("#heatmap", ScheduleHeatmap).set_schedule(
            plan.levels, plan.steps, self.num_context)
        if self.num_context:
            self.main_screen.query_one("#context-preview", FramePreview).show(
                self.frames[-1], f"frame {self.num_context - 1}, as the model sees it")
        result = self.main_screen.query_one("#newest-preview", FramePreview)
        result.border_title = "Newest frame"
        result.show(None)
        self.main_screen.query_one("#progress", ProgressBar).update(total=plan.total_rows, progress=0)
        self._stats(f"0/{self.num_new} frames")

    def _on_frame(self, event) -> None:
        # Only state here: drawing happens once per _pump, however many frames arrived since.
        if event.index == len(self.frames):
            self.frames.append(event.image)
            self._pending.append(event.image)
        else:  # not expected from the pipeline, but an index is an index
            self.frames[event.index:event.index + 1] = [event.image]
            self._pending_reset = True
        new = event.index - self.num_context + 1
        self._newest = (event.image, f"frame {event.index} ({new}/{self.num_new} new)")
        if self.screenshot_after and new == self.screenshot_after[0]:
            self._shoot = True

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
        left = self.clock.row_done(event.row, event.elapsed) if self.plan else None
        made = len(self.frames) - self.num_context  # counts frames already shown, not only finished rows
        self._stats(
            f"{made}/{self.num_new} frames  row {event.row}/{event.total_rows}  "
            f"{rate:.1f} fr/s  ETA {'?' if left is None else clock(left)}")

    def _stats(self, text: str) -> None:
        # A fixed size: no relayout of the whole screen per row.
        self.main_screen.query_one("#stats").update(text, layout=False)

    def _on_done(self, event) -> None:
        self._draw_pending()
        self.running = False
        self.last_done = event
        new = len(event.video) - event.num_context
        rate = f", {new / event.elapsed:.1f} frames/s" if event.elapsed > 0 and new else ""
        word = "cancelled" if event.cancelled else "done"
        summary = f"{word}: {len(event.video)} frames ({event.num_context} context + {new} new)"
        job = self.job
        if new > 0 and job is not None and self.plan is not None:
            take = self.takes.add(np.asarray(event.video), event.num_context, job.fps or DEFAULT_FPS,
                                  job.clip, self.plan.request, cancelled=event.cancelled)
            self.take_input_hw[take.number] = job.input_hw
            self.say(f"{summary} in {event.elapsed:.1f} s{rate}: take {take.number}; ctrl+s saves, "
                     f"t lists the takes", "yellow" if event.cancelled else "green")
            self.show_take(take.number)
        else:
            self.say(f"{summary}: nothing new to keep", "yellow")
            self.frames = list(event.video)
            if self.takes.current is not None:  # on screen again: the take Ctrl+S would save
                self.show_take(self.takes.current.number, focus=False)
        self._stats(f"{word} in {clock(event.elapsed)}")
        self._set_buttons()

    def _on_failed(self, event: Failed) -> None:
        self._draw_pending()
        self.running = False
        self._stats("failed")
        self.show_error(event.message, event.field)
        if event.details:
            self.say(f"details: {event.details}", "dim")
        if self.takes.current is not None:  # what is on screen again: the shown take, not the failed run
            self.show_take(self.takes.current.number, focus=False)  # the field to fix keeps the focus
        self._set_buttons()

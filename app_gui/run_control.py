"""The window's run part: plan a run from the parameters, start it on a worker thread, show its events as
they arrive (frames, progress, done, failure), and keep what arrived.

A mixin of `MainWindow` (which sets up all the state): it keeps `generation` and the run's bookkeeping
(`RunState`), and uses the window's `pipeline`, `loading_model`, `model_error`, `params`, `plan_label`,
`clip`, `clip_path`, `clip_fps`, `takes`, `result`, `result_marker`, `result_fps`, the players, `filmstrip`,
`heatmap`, `tabs`, `run_panel`, `show_error`, `_add_take`, `_show_take`, `_refresh_context_shade`,
`_update_actions`, `_store_settings` and its signals. Every run that made frames becomes a take
(`engine.takes`), so a new run never replaces an old result.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.eta import RunClock
from app_gui.heatmap import schedule_levels
from app_gui.worker import Generation, Job
from engine.errors import RunError
from engine.run import DEFAULT_ADAPT_STEPS, RunRequest, clock
from engine.run import DEFAULT_FPS as GENERATE_FPS  # a video made from nothing has no rate of its own


@dataclass
class RunState:
    """One generation as the window tracks it: result frames so far (None = pending) and how to show them."""

    offset: int  # result index of the run's frame 0 (frames in front come from an earlier result)
    frames: list
    marker: int  # first frame the model made, for the player's marker and the filmstrip's colours
    fps: float
    num_new: int
    head: int  # frames in front of the first new one (earlier result + context)
    request: RunRequest
    clip: Path | None  # the clip the result continues (None: from nothing), for the take
    parent: int | None = None  # the take continued further, if any
    input_hw: tuple[int, int] | None = None  # the clip's frame size, for saving at the input's size
    plan: Any = None  # the engine's Plan of this run: its rows, and the work the ETA weighs them by
    clock: RunClock | None = None
    adapting: bool = False  # the run is fine-tuning on the clip (no row sampled yet)


class RunControl:
    """One generation at a time: start, cancel, follow, finish."""

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
        if self.clip is not None and not p.generate_mode:
            context = min(context, len(self.clip))  # a short clip is used whole
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
        """Start a run with the panel's settings: continue the clip, or generate from nothing. A clip shorter
        than Context frames is used whole, and the status bar says so."""
        if self.is_generating():
            return False
        if self.params.generate_mode:
            return self._start(None, None, GENERATE_FPS, clip=None)
        if self.clip is None:
            self.show_error("No clip", "Open a clip first (Ctrl+O), or choose “Generate from nothing”.")
            return False
        hw = (int(self.clip.shape[1]), int(self.clip.shape[2]))
        return self._start(self.clip, None, self.clip_fps, clip=self.clip_path, input_hw=hw)

    def continue_further(self) -> bool:
        """Continue the take on screen again from its end: a new take, its frames appended to that take's."""
        if self.is_generating():
            return False
        take = self.takes.current
        if take is None or take.num_new == 0:
            self.show_error("Nothing to continue",
                            "Generate a result first; then it can be continued further.")
            return False
        c = min(self.params.context.value(), len(take.video))
        return self._start(take.video[-c:], take.video[:-c], take.fps, take.num_context, clip=take.clip,
                           parent=take.number, input_hw=take.input_hw)

    def run_request(self, context: int | None) -> RunRequest:
        """The engine's request from the panel (`context` None: from nothing); RunError names a bad field."""
        p = self.params
        fields = {"new_frames": p.new_frames.value(), "s": p.s_spin.value(), "steps": p.steps.value(),
                  "seed": p.seed.value(), "class_label": p.class_value(), "guidance_scale": p.guidance.value(),
                  "history_guidance": p.history_guidance_value()}
        if context is not None:
            fields["context"] = context
            fields["adapt_steps"] = DEFAULT_ADAPT_STEPS if p.adapt.isChecked() else 0
        return RunRequest(**fields)

    def _start(self, frames: np.ndarray | None, prefix: np.ndarray | None, fps: float,
               marker: int | None = None, *, clip: str | Path | None, parent: int | None = None,
               input_hw: tuple[int, int] | None = None) -> bool:
        """Run on the last Context frames of `frames` (None: from nothing); `prefix` frames go in front of the
        result. `marker` is the first frame the model made (default: right after the context)."""
        if self.pipeline is None:
            if self.loading_model:
                self.show_error("Model not ready", "The model is still loading; try again in a moment.")
            else:
                self.show_error("No model", (self.model_error or "No model is loaded.") +
                                "\nOpen a checkpoint from the Model menu.")
            return False
        pipe = self.pipeline
        wanted = self.params.context.value()
        context = None if frames is None else min(wanted, len(frames))
        try:
            request = self.run_request(context)
            plan = pipe.plan(request, frames)  # the rows the sampler will run, checked up front
        except (RunError, ValueError) as err:
            self.show_error("Cannot start", str(err))
            return False
        fitted, num_context = plan.context, plan.num_context
        head = fitted if prefix is None or not len(prefix) else np.concatenate([prefix, fitted])
        offset = len(head) - num_context
        marker = num_context if marker is None else marker
        total = len(head) + request.new_frames
        self._run = RunState(offset=offset, frames=list(head), marker=marker, fps=fps,
                             num_new=request.new_frames, head=len(head), request=request,
                             clip=None if clip is None else Path(clip), parent=parent, input_hw=input_hw)

        self.result_player.set_frames(list(head), fps, marker=marker, total=total)
        self.result_player.seek(max(0, len(head) - 1))
        self.filmstrip.start_run([], total)
        self.filmstrip.num_context = marker
        for i, frame in enumerate(head):
            self.filmstrip.set_frame(i, frame)
        self._show_plan(plan)
        self.tabs.setCurrentWidget(self.result_player)
        self.run_panel.start(request.new_frames, plan.total_rows)
        status = "Sampling… (Esc cancels and keeps the frames made so far)"
        if context is not None and context < wanted:
            status = (f"The clip has only {len(frames)} frame{'s' * (len(frames) != 1)}: the model sees all "
                      f"of them (Context frames is {wanted}). " + status)
        if request.adapt_steps:
            status = "Adapting the model to the clip first… (Esc cancels)"
        self.statusBar().showMessage(status)

        self.generation = Generation(pipe, Job(request, frames, None if clip is None else str(clip)))
        self.generation.event.connect(self._on_event)
        self.generation.failed.connect(self._on_failed)
        self.generation.start()
        self._store_settings()
        self._update_actions()
        return True

    def _show_plan(self, plan) -> None:
        """Draw the rows the engine will run, and time the run against them."""
        self._run.plan, self._run.clock = plan, RunClock(plan)
        self.heatmap.set_schedule(plan.levels, plan.steps, plan.num_context)

    def cancel(self) -> None:
        """Stop after the current row; the frames made so far stay."""
        if self.generation is None:
            return
        self.generation.cancel()
        self.run_panel.cancelling()

    def _on_event(self, event) -> None:
        from engine.pipeline import (  # loaded with the model
            Adapted,
            Adapting,
            Done,
            FrameReady,
            Planned,
            Progress,
        )

        run = self._run
        if isinstance(event, Adapting):
            run.adapting = True
            self.run_panel.show_adapting(event.step, event.total, event.loss, event.seconds_left)
        elif isinstance(event, Adapted):
            self.run_panel.label.setText(event.message)
            self.statusBar().showMessage(event.message + " · sampling… (Esc cancels)")
        elif isinstance(event, Planned):
            self._show_plan(event.plan)
            self.run_panel.start(run.num_new, event.plan.total_rows)
        elif isinstance(event, FrameReady):
            index = run.offset + event.index
            frames = run.frames
            frames += [None] * max(0, index + 1 - len(frames))
            frames[index] = event.image
            self.result_player.set_frame(index, event.image)
            self.filmstrip.set_frame(index, event.image)
        elif isinstance(event, Progress):
            run.adapting = False
            self.heatmap.set_row(event.row)
            self.run_panel.show_progress(event.row, event.total_rows, event.frames_done, run.num_new,
                                         event.elapsed, run.clock.row_done(event.row, event.elapsed))
        elif isinstance(event, Done):
            self._finish(event)
            return  # generationFinished follows
        self.eventReceived.emit(event)

    def _finish(self, done) -> None:
        run = self._run
        prefix = run.frames[: run.offset]
        video = np.concatenate([np.stack(prefix), done.video]) if prefix else done.video
        made = len(done.video) - done.num_context
        rate = made / done.elapsed if done.elapsed > 0 else 0.0
        self._end_generation()
        take = self._keep(video, made, done.cancelled)
        if done.cancelled and run.adapting:  # stopped before any row: the engine ends the run at once
            text = "Cancelled while adapting: nothing was sampled"
        elif done.cancelled:
            text = f"Cancelled: kept {made} of {run.num_new} new frames"
        else:
            text = f"Done: {made} new frames in {clock(done.elapsed)} ({rate:.1f} frames/s)"
        if take is not None:
            text += f" · take {take.number}"
        self.run_panel.label.setText(text)
        self.statusBar().showMessage(text + (" · Ctrl+S saves" if take is not None else ""), 10000)
        self.eventReceived.emit(done)
        self.generationFinished.emit(done)

    def _keep(self, video: np.ndarray, made: int, cancelled: bool):
        """The run's frames become a take (none when it made no new frame: the take on screen stays)."""
        run = self._run
        if made <= 0:
            self._show_take(self.takes.current)
            return None
        return self._add_take(video, run.marker, run.fps, run.clip, run.request, parent=run.parent,
                              cancelled=cancelled, input_hw=run.input_hw)

    def _on_failed(self, message: str) -> None:
        # Keep everything that did arrive: the context and every finished frame up to the first gap.
        run = self._run
        kept = next((i for i, f in enumerate(run.frames) if f is None), len(run.frames))
        made = kept - run.head
        self._end_generation()
        take = self._keep(np.stack(run.frames[:kept]) if made > 0 else None, made, True)
        self.run_panel.label.setText("Failed: " + message + (f" · kept take {take.number}" if take else ""))
        self.show_error("Generation failed", message)

    def _end_generation(self) -> None:
        gen, self.generation = self.generation, None
        if gen is not None:
            gen.wait(5.0)  # Done is the stream's last event: the thread is at its end
        # Held until the next run: the signal being delivered right now still belongs to it.
        self._last_generation = gen
        self._update_actions()

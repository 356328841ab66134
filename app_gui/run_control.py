"""The window's run part: plan a run from the parameters, start it on a worker thread, show its events as
they arrive (frames, progress, done, failure), and keep what arrived.

A mixin of `MainWindow` (which sets up all the state): it keeps `generation` and the run's bookkeeping
(`RunState`), and uses the window's `pipeline`, `loading_model`, `model_error`, `params`, `plan_label`,
`clip`, `clip_fps`, `result`, `result_marker`, `result_fps`, the players, `filmstrip`, `heatmap`, `tabs`,
`run_panel`, `show_error`, `_set_result`, `_show_result`, `_refresh_context_shade`, `_update_actions`,
`_store_settings` and its signals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from app_gui.heatmap import schedule_levels
from app_gui.worker import Generation, Job

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
    plan: Any = None  # the engine's Plan of this run: its rows, and the work the ETA weighs them by


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
        try:
            plan = pipe.plan(job.request(), context)  # the rows the sampler will run, checked up front
        except ValueError as err:
            self.show_error("Cannot start", str(err))
            return False
        fitted, num_context, levels = plan.context, plan.num_context, plan.levels
        head = fitted if prefix is None or not len(prefix) else np.concatenate([prefix, fitted])
        offset = len(head) - num_context
        marker = num_context if marker is None else marker
        total = len(head) + job.num_new
        self._run = RunState(offset=offset, frames=list(head), marker=marker, fps=fps, num_new=job.num_new,
                             head=len(head), plan=plan)

        self.result_player.set_frames(list(head), fps, marker=marker, total=total)
        self.result_player.seek(max(0, len(head) - 1))
        self.filmstrip.start_run([], total)
        self.filmstrip.num_context = marker
        for i, frame in enumerate(head):
            self.filmstrip.set_frame(i, frame)
        self.heatmap.set_schedule(levels, job.steps, num_context)
        self.tabs.setCurrentWidget(self.result_player)
        self.run_panel.start(job.num_new, plan.total_rows)
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
                                         event.elapsed, run.plan.seconds_left(event.row, event.elapsed))
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

    def _end_generation(self) -> None:
        gen, self.generation = self.generation, None
        if gen is not None:
            gen.wait(5.0)  # Done is the stream's last event: the thread is at its end
        # Held until the next run: the signal being delivered right now still belongs to it.
        self._last_generation = gen
        self._update_actions()

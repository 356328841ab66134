"""Run slow work (model loading, clip reading, sampling) off the GUI thread and report back by Qt signals.

Work runs on a plain Python thread; the QObject that carries the signals lives on the GUI thread, so Qt
delivers every emission as a queued call on the GUI thread: slots may touch widgets, and the event loop
keeps running while the model samples. Cancelling sets a `threading.Event` that the pipeline checks once
per row; the stream then still ends with `Done(cancelled=True)` carrying the frames made so far.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, Signal

from engine.errors import ArdiffError
from engine.run import RunRequest


def describe_error(err: BaseException) -> str:
    """A message for a person: our own errors are already one clear line; anything else gets its type."""
    if isinstance(err, ArdiffError):
        return str(err)
    if isinstance(err, ValueError):  # argument checks in the pipeline: also written for people
        return str(err)
    if isinstance(err, MemoryError) or "out of memory" in str(err).lower():
        return f"Out of memory: {err}. Try fewer new frames, or the CPU device."
    return f"{type(err).__name__}: {err}"


class Task(QObject):
    """Run `fn(*args)` on a thread once; emits `finished(result)` or `failed(message)` on the GUI thread."""

    finished = Signal(object)
    failed = Signal(str)

    def __init__(self, fn: Callable[..., Any], *args: Any, name: str = "ardiff-task") -> None:
        super().__init__()
        self._fn, self._args = fn, args
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Task:
        self._thread.start()
        return self

    def is_running(self) -> bool:
        return self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Join the thread; True when it ended."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        try:
            result = self._fn(*self._args)
        except Exception as err:  # noqa: BLE001 - every failure becomes a dialog, never a crash
            if not isinstance(err, ValueError):
                traceback.print_exc()
            self.failed.emit(describe_error(err))
        else:
            self.finished.emit(result)


@dataclass(frozen=True)
class Job:
    """One run as the person set it up: the engine's checked request and the frames it continues (the whole
    clip, or the result continued further; the run sees their last `request.context`), None from nothing."""

    request: RunRequest
    frames: np.ndarray | None
    clip: str | None = None  # the clip file continued: adapting reads more of it than `frames` holds


class Generation(QObject):
    """Iterates a pipeline's event stream on a thread and re-emits each event as a signal.

    `event(Adapting | Adapted | Planned | FrameReady | Progress | Done)` fires for every event in order;
    `failed(message)` if the pipeline raised (bad arguments, out of memory) or the stream ended without Done
    (never expected). Exactly one of Done or failed ends a run.
    """

    event = Signal(object)
    failed = Signal(str)

    def __init__(self, pipeline: Any, job: Job) -> None:
        super().__init__()
        self.pipeline, self.job = pipeline, job
        self.cancel_event = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ardiff-generate", daemon=True)

    def start(self) -> Generation:
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Ask the pipeline to stop; it finishes the current row and sends Done(cancelled=True)."""
        self.cancel_event.set()

    def is_running(self) -> bool:
        return self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        from engine.pipeline import Done  # the engine is loaded with the model: no cost here

        done = False
        try:
            adapt_clip = None
            if self.job.request.adapt_steps and self.job.clip is not None:
                from engine.adapt import read_adapt_clip

                adapt_clip = read_adapt_clip(self.job.clip, self.pipeline.resolution)
            for event in self.pipeline.run(self.job.request, self.job.frames, self.cancel_event,
                                           adapt_clip=adapt_clip):
                done = done or isinstance(event, Done)
                self.event.emit(event)
        except Exception as err:  # noqa: BLE001 - shown in a dialog; frames already made stay on screen
            if not isinstance(err, ValueError):
                traceback.print_exc()
            self.failed.emit(describe_error(err))
            return
        if not done:  # the engine always ends a stream with Done; anything else is a bug worth a dialog
            self.failed.emit("the run ended without a result")

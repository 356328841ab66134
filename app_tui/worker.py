"""One generation job, run on a worker thread: load the model, stream the pipeline's events to the UI.

Knows nothing of Textual: the app passes `emit`, which hands each event to the UI thread and returns when
the UI has drawn it (so a slow terminal throttles the model instead of queueing thousands of frames).
torch (engine.pipeline) is imported here on first use, on the worker thread, so the layout is drawn first.
"""

from __future__ import annotations

import tempfile
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from app_tui.settings import Settings, form_field
from engine.errors import ArdiffError, CheckpointError, RunError, WeightsUnavailableError, one_line
from engine.run import Plan

if TYPE_CHECKING:
    from engine.pipeline import Pipeline


@dataclass
class Started:
    """The model is loaded and the run is planned: what the UI needs before the first frame."""

    description: str  # Pipeline.describe(), plus the form's history guidance when it overrides the model's
    plan: Plan  # the engine's plan: fitted context, the rows' levels (the whole run known in advance), work


@dataclass
class Failed:
    """The job stopped on a problem; `message` is one line fit for the screen."""

    message: str
    field: str | None = None  # the setting to fix, when one is to blame
    details: Path | None = None  # traceback file, for bugs only


@dataclass
class Job:
    """What to run. `context`: the clip's last frames (the plan takes the last `settings.context` of them);
    None generates from nothing. Set `cancel` to stop within one row."""

    settings: Settings
    context: np.ndarray | None
    cancel: threading.Event = field(default_factory=threading.Event)
    clip: Path | None = None  # the clip continued (its takes are labelled with it); None: from nothing
    input_hw: tuple[int, int] | None = None  # the clip's height and width, for saving at the input's size
    fps: float | None = None  # the clip's frame rate; None: engine.run.DEFAULT_FPS


class PipelineCache:
    """Keeps the last loaded pipeline, so pressing Generate again does not reload the weights."""

    def __init__(self) -> None:
        self._key: tuple[str | None, str, str] | None = None
        self._pipe: Pipeline | None = None
        self._lock = threading.Lock()

    def get(self, checkpoint: Path | None, device: str, precision: str = "auto") -> Pipeline:
        """The pipeline for these settings: the cached one, or a fresh load when any of them changed."""
        key = (str(checkpoint) if checkpoint else None, device, precision)
        from engine.threads import apply_thread_policy

        apply_thread_policy()  # what main() configured (engine.threads), before torch loads
        from engine.pipeline import load_pipeline

        with self._lock:
            if self._key != key or self._pipe is None:
                self._pipe, self._key = None, None  # free the old model before loading the next
                self._pipe, self._key = load_pipeline(checkpoint, device, precision=precision), key
            return self._pipe


def run_job(job: Job, cache: PipelineCache, emit: Callable[[object], None]) -> None:
    """Run `job`, passing Started, then FrameReady/Progress events, then Done (or one Failed) to `emit`."""
    from engine.pipeline import Planned

    s = job.settings
    try:
        request = s.request(continuing=job.context is not None)
        pipe = cache.get(s.checkpoint, request.device, request.precision)
        adapt_clip = None
        if request.adapt_steps and job.clip is not None:  # adapting learns from more of the clip than the context
            from engine.adapt import read_adapt_clip

            adapt_clip = read_adapt_clip(job.clip, pipe.resolution)
        for event in pipe.run(request, job.context, job.cancel, adapt_clip=adapt_clip):
            emit(Started(_describe(pipe, s), event.plan) if isinstance(event, Planned) else event)
    except (WeightsUnavailableError, CheckpointError) as err:
        emit(Failed(one_line(err), field="checkpoint"))
    except RunError as err:
        emit(Failed(one_line(err), field=form_field(err.field)))
    except ArdiffError as err:
        emit(Failed(one_line(err), field=_field_for(err)))
    except ValueError as err:  # the pipeline's argument checks, resolve_device
        emit(Failed(one_line(err), field=_field_for(err)))
    except Exception as err:  # a bug or the machine (CUDA out of memory): one line here, the rest in a file
        emit(Failed(f"{type(err).__name__}: {one_line(err)}", details=_save_traceback()))


def preload(settings: Settings, cache: PipelineCache) -> str:
    """Load the model `settings` name into `cache` (the app does this behind its first paint); returns the
    model's one-line description. Raises what loading raises."""
    request = settings.request()
    pipe = cache.get(settings.checkpoint, request.device, request.precision)
    return pipe.describe()


def _describe(pipe: Pipeline, s: Settings) -> str:
    """The run in one line: describe() names the model's own history guidance (when not 1), so a
    different value from the form is added, else the log would claim a value the run does not use."""
    if s.history_guidance is None or s.history_guidance == pipe.history_guidance:
        return pipe.describe()
    own = pipe.history_guidance
    return f"{pipe.describe()}; history guidance {s.history_guidance:g} (the model's own: {own:g})"


def _field_for(err: BaseException) -> str | None:
    text = str(err)
    for needle, name in (("history guidance", "history_guidance"), ("precision", "precision"),
                         ("device", "device"), ("checkpoint", "checkpoint"), ("safetensors", "checkpoint"),
                         ("steps", "steps"), ("context", "context")):
        if needle in text:
            return name
    return None


def _save_traceback() -> Path:
    with tempfile.NamedTemporaryFile("w", prefix="ardiff-tui-", suffix=".log", delete=False) as f:
        f.write(traceback.format_exc())
    return Path(f.name)

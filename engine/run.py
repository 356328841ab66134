"""The run vocabulary: what one continuation or generation asks for, its defaults and its one validation,
the plan of the rows it will run, and the lists every surface offers (devices, precisions, backends).

No torch here, so the command line's --help and the apps' forms come up before torch has loaded. The CLI,
the GUI, the TUI and `ardiff eval` build a `RunRequest`; `Pipeline.plan` turns it into a `Plan` against a
model; a run yields that plan first, so what a surface draws is what the sampler runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from engine.errors import RunError

if TYPE_CHECKING:
    from engine.schedulers.ad import ADScheduler

DEVICES = ("auto", "cpu", "cuda")  # and "cuda:N"
DEVICE_LABELS = {"auto": "Auto", "cpu": "CPU", "cuda": "CUDA"}
PRECISIONS = ("auto", "fp32", "bf16")
PRECISION_LABELS = {"auto": "Auto", "fp32": "float32", "bf16": "bfloat16"}
# One wording for --help, the forms' tooltips and the help screens.
PRECISION_HELP = ("auto: bfloat16 where the CPU/GPU does it natively, else float32; "
                  "fp32: the same result on every machine; bf16: always bfloat16")
BACKENDS = ("eager", "compile", "aoti", "onnx", "tensorrt")
SAMPLERS = ("cached", "reference")
DEFAULT_FPS = 8.0  # the rate of a video made from nothing (a continued clip keeps its own)
DEFAULT_ADAPT_STEPS = 150  # fine-tuning steps of "adapt to this clip" when it is turned on without a number


def frame_rate(fps: float) -> str:
    """A frame rate for people, as every surface shows it: at most two decimals, none when whole ('15 fps',
    '29.97 fps'); a container's 14.9999 reads as 15."""
    return f"{round(fps, 2):g} fps"


def clock(seconds: float) -> str:
    """A run's duration for people, as every surface shows it: '4.2 s' under ten seconds, else 'm:ss', and
    'hhmm' past an hour (e.g. '1h05')."""
    if seconds < 10:
        return f"{max(0.0, seconds):.1f} s"
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds // 60 % 60:02d}"
    return f"{seconds // 60}:{seconds % 60:02d}"


def check_precision(precision: str) -> None:
    """ValueError unless `precision` is one of PRECISIONS."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def check_device_name(device: str) -> None:
    """RunError unless `device` is auto, cpu, cuda or cuda:N (whether it exists is the pipeline's
    question)."""
    numbered = isinstance(device, str) and device.startswith("cuda:") and device[5:].isdigit()
    if not (numbered or device in DEVICES):
        raise RunError("device", f"device must be auto, cpu or cuda, got {device!r}")


# field -> (words for people, smallest allowed value)
_INTS = {"new_frames": ("new frames", 1), "s": ("s", 0), "steps": ("steps", 1), "seed": ("seed", 0),
         "context": ("context", 1), "min_context": ("min context", 0), "adapt_steps": ("adapt steps", 0)}
MINIMUMS = {name: low for name, (_, low) in _INTS.items()}  # the smallest each whole-number setting takes
SEED_MAX = 2**64 - 1  # the largest seed torch.Generator.manual_seed takes


@dataclass(frozen=True)
class RunRequest:
    """One run as a person asks for it. The defaults here are every surface's defaults.

    `context` is how many frames from the end of the clip the model sees (a continuation only);
    `history_guidance` None samples with the model's own (`Pipeline.history_guidance`), 1.0 is off;
    `fps` is the rate of a video generated from nothing. A request that exists is valid: the checks that
    need no model run when it is made, with a `RunError` naming the field; those that need the model
    (context <= window - 1, steps <= T, the class label) run in `Pipeline.plan`.
    """

    new_frames: int = 16
    s: int = 5
    steps: int = 50
    seed: int = 0
    context: int = 8
    min_context: int = 1  # clean frames kept in view once any exists
    history_guidance: float | None = None
    guidance_scale: float = 1.0  # classifier-free guidance on x0 (class-conditional models)
    class_label: int | None = None
    fps: float = DEFAULT_FPS
    device: str = "auto"
    precision: str = "auto"
    backend: str = "eager"
    sampler: str = "cached"
    clip_x0: float | None = None
    adapt_steps: int = 0  # > 0: fine-tune the DiT on the clip first, kept only if it predicts held-out frames better

    def __post_init__(self) -> None:
        for name, (label, low) in _INTS.items():
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise RunError(name, f"{label} must be a whole number, got {value!r}")
            if value < low:
                raise RunError(name, f"{label} must be at least {low}, got {value}")
        if self.seed > SEED_MAX:
            raise RunError("seed", f"seed must be in 0..{SEED_MAX} (what torch.Generator takes), got {self.seed}")
        hg = self.history_guidance
        if hg is not None and not (_is_number(hg) and hg >= 0):
            raise RunError("history_guidance", f"history guidance must be a number >= 0, got {hg!r}")
        if not _is_number(self.guidance_scale):
            raise RunError("guidance_scale",
                           f"guidance scale must be a finite number, got {self.guidance_scale!r}")
        label = self.class_label
        whole = isinstance(label, (int, np.integer)) and not isinstance(label, bool)
        if label is not None and not (whole and label >= 0):
            raise RunError("class_label", f"class label must be a whole number >= 0, got {label!r}")
        if not (_is_number(self.fps) and self.fps > 0):
            raise RunError("fps", f"fps must be a number > 0, got {self.fps!r}")
        check_device_name(self.device)
        if self.precision not in PRECISIONS:
            raise RunError("precision",
                           f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.backend not in BACKENDS:
            raise RunError("backend", f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.sampler not in SAMPLERS:
            raise RunError("sampler", f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.clip_x0 is not None and not (_is_number(self.clip_x0) and self.clip_x0 > 0):
            raise RunError("clip_x0", f"clip_x0 must be a number > 0, got {self.clip_x0!r}")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and math.isfinite(value)


def scheduler_for(request: RunRequest, window: int, num_context: int) -> ADScheduler:
    """The AD scheduler a run of `request` uses on a model that sees `window` frames, after `num_context`
    clean frames: the one place the min-context rule lives (clamped to window - 1; with context, to it)."""
    from engine.schedulers.ad import ADScheduler

    min_context = min(request.min_context, window - 1)
    if num_context:
        min_context = min(min_context, num_context)
    return ADScheduler(request.steps, request.s, window, min_context)


@dataclass(frozen=True)
class Plan:
    """A request planned against a model, before any network call: what will run, row by row.

    `levels` [rows + 1, context + new] are the DDIM levels of every frame before the first row and after
    each row, exactly the rows the sampler runs; `frame_evaluations` [rows] is the work of each row in
    frames pushed through the DiT (guidance calls included), so an ETA can weigh rows that differ.
    """

    request: RunRequest
    context: np.ndarray  # the fitted context frames, uint8 [C, R, R, 3] (C = 0 from nothing)
    fit_note: str | None  # how the clip was resized for the model, or None when it fitted
    levels: np.ndarray
    window: int  # frames the network sees at once
    history_guidance: float  # the weight the run uses (the model's own when the request says None)
    frame_evaluations: np.ndarray

    @property
    def num_context(self) -> int:
        return len(self.context)

    @property
    def num_new(self) -> int:
        return self.request.new_frames

    @property
    def total_rows(self) -> int:
        return len(self.levels) - 1

    @property
    def steps(self) -> int:
        return self.request.steps

    def seconds_left(self, rows_done: int, elapsed: float) -> float | None:
        """Remaining time, from the time the rows done took and the work the rest will take; None before the
        first row."""
        done = float(self.frame_evaluations[:rows_done].sum())
        if rows_done <= 0 or done <= 0:
            return None
        return elapsed * float(self.frame_evaluations[rows_done:].sum()) / done


def plan_rows(request: RunRequest, window: int, num_context: int, *, cached: bool | None = None,
              guided: bool = False, history_guidance: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(levels [rows + 1, context + new], frame evaluations [rows]) of `request` on a `window`-frame model.

    The work per row follows the samplers: the reference sampler pushes the whole window; the cached one
    only the frames not in its key/value cache (the cache restarts when the window slides). History guidance
    adds a call for the frames in flight where frames came before them; classifier-free guidance doubles
    every call's batch. Unguided, the sum equals the sampler's `SamplerStats.frame_forwards`.
    """
    scheduler = scheduler_for(request, window, num_context)
    rows = list(scheduler.rows(request.new_frames, num_context))
    levels = np.stack([rows[0].level_from] + [r.level_to for r in rows])
    cached = request.sampler == "cached" if cached is None else cached
    work = np.zeros(len(rows), np.int64)
    cache_start, cache_end = -1, 0
    for i, row in enumerate(rows):
        a, b = row.window
        if cached:
            start = cache_end if cache_start == a else a
            cache_start, cache_end = a, row.first
        else:
            start = a
        free = b - row.first if history_guidance != 1.0 and row.first != a else 0  # no history: no free call
        work[i] = (b - start + free) * (2 if guided else 1)
    return levels, work

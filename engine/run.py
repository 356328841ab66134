"""The run vocabulary: what one continuation or generation asks for, its defaults and its one validation,
the plan of the rows it will run, and the lists every surface offers (devices, precisions, backends).

No torch here, so the command line's --help and the apps' forms come up before torch has loaded. The CLI,
the GUI, the TUI and `ardiff eval` build a `RunRequest`; `Pipeline.plan` turns it into a `Plan` against a
model; a run yields that plan first, so what a surface draws is what the sampler runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
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
DEFAULT_ADAPT_STEPS = 300  # fine-tuning steps of "adapt to this clip" when it is turned on without a number


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
class _Repeat:
    """Explicit rows [start, stop) repeated `copies` times before row `stop`, each copy `shift` frames later."""

    start: int
    stop: int
    shift: int
    copies: int

    @property
    def period(self) -> int:
        return self.stop - self.start


class LevelMatrix:
    """The [rows + 1, frames] DDIM levels of a plan, kept as the scheduler's rows are: per row, the first frame
    not yet clean and the levels of the frames in flight after it (earlier frames are clean, later ones noise).

    A long run repeats one block of rows, shifted, until its end (the AD rules look only at the frames in
    flight); that block is stored once with how often it repeats, so 100,000 frames cost what a few windows
    do. Indexing (an int, a slice, an index array, then columns) and `np.asarray` build only the rows asked
    for.
    """

    ndim = 2
    dtype = np.dtype(np.int64)

    def __init__(self, firsts: np.ndarray, offsets: np.ndarray, values: np.ndarray, num_context: int,
                 num_frames: int, num_steps: int, repeat: _Repeat | None = None) -> None:
        self._firsts, self._offsets, self._values = firsts, offsets, values
        self.num_context, self.num_frames, self.num_steps = num_context, num_frames, num_steps
        self._repeat = repeat
        extra = 0 if repeat is None else repeat.copies * repeat.period
        self.shape = (len(firsts) + extra + 1, num_frames)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"LevelMatrix(shape={self.shape}, steps={self.num_steps})"

    @property
    def nbytes(self) -> int:
        """Bytes this plan's levels hold (not the full matrix's)."""
        return self._firsts.nbytes + self._offsets.nbytes + self._values.nbytes

    def _source(self, row: int) -> tuple[int, int]:
        """(stored row, frames it is shifted by) of network call `row` (0-based)."""
        rep = self._repeat
        if rep is None or row < rep.stop:
            return row, 0
        if row < rep.stop + rep.copies * rep.period:
            copy, offset = divmod(row - rep.stop, rep.period)
            return rep.start + offset, (copy + 1) * rep.shift
        return row - rep.copies * rep.period, rep.copies * rep.shift

    def _rows(self, indices: np.ndarray) -> np.ndarray:
        out = np.full((len(indices), self.num_frames), self.num_steps, np.int64)
        for k, r in enumerate(indices.tolist()):
            if r == 0:  # before the first call: the context clean, every new frame pure noise
                out[k, :self.num_context] = 0
                continue
            stored, shift = self._source(r - 1)
            first = int(self._firsts[stored]) + shift
            segment = self._values[self._offsets[stored]:self._offsets[stored + 1]]
            out[k, :first] = 0
            out[k, first:first + len(segment)] = segment
        return out

    def __getitem__(self, key):
        columns = None
        if isinstance(key, tuple):
            if len(key) != 2:
                raise IndexError(f"a level matrix has 2 dimensions, got an index of {len(key)}")
            key, columns = key
        if isinstance(key, (int, np.integer)):
            index = int(key) + len(self) if key < 0 else int(key)
            if not 0 <= index < len(self):
                raise IndexError(f"row {key} is outside 0..{len(self) - 1}")
            rows = self._rows(np.array([index]))[0]
            return rows if columns is None else rows[columns]
        if isinstance(key, slice):
            indices = np.arange(*key.indices(len(self)))
        else:
            indices = np.asarray(key)
            if indices.dtype == bool:
                indices = np.flatnonzero(indices)
            indices = np.where(indices < 0, indices + len(self), indices)
            if indices.size and not (0 <= indices.min() and indices.max() < len(self)):
                raise IndexError(f"rows outside 0..{len(self) - 1}")
        rows = self._rows(indices.astype(np.int64).reshape(-1)).reshape(*indices.shape, self.num_frames)
        return rows if columns is None else rows[..., columns]

    def __iter__(self):
        for r in range(len(self)):
            yield self[r]

    def clean_counts(self) -> np.ndarray:
        """[rows + 1] frames clean before the first call and after each one, without building any row: frames
        finish in order, so each call's first frame not yet clean counts those before it, and the last call
        leaves every frame clean."""
        if self._repeat is None:
            firsts = np.asarray(self._firsts, np.int64)
        else:
            firsts = np.array([self._firsts[stored] + shift for stored, shift in map(self._source, range(len(self) - 1))],
                              np.int64)
        return np.append(firsts, self.num_frames)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        full = self._rows(np.arange(len(self)))
        return full if dtype is None else full.astype(dtype)


def _plan_levels(scheduler: ADScheduler, num_new: int, num_context: int) -> tuple[LevelMatrix, list, _Repeat | None]:
    """The plan's levels from the scheduler's own rows, and those rows' (first, window) for the work count.

    Once the clean prefix covers a window, the rows depend only on the frames in flight (not on where they
    are) until the end comes within a window: the first flight state seen twice marks a block that repeats,
    shifted, for as long. The rows are then taken from a run shorter by whole repeats, and the repeats are
    put back as a count, not as rows.
    """
    total, window = num_context + num_new, scheduler.window
    steady = max(scheduler.min_context, window)  # from here, the context and the window's start are fixed
    seen: dict[bytes, tuple[int, int]] = {}  # flight state before a row -> (that row, its first frame)
    repeat, looking, rows = None, True, []
    for index, row in enumerate(scheduler.rows(num_new, num_context)):
        rows.append(row)
        if not looking or row.first < steady:
            continue
        state = row.segment_from.tobytes()
        if row.first + window > total:
            looking = False  # the end is in view: no block can repeat any more
        elif state in seen:
            start, first = seen[state]
            shift = row.first - first
            copies = (total - row.first - window) // shift  # every repeat stays a window short of the end
            if copies > 0:
                repeat = _Repeat(start, index, shift, copies)
                break
            looking = False
        else:
            seen[state] = (index, row.first)
    if repeat is not None:  # the rows of the run shorter by the repeats; those rows already made are its first
        rows = list(scheduler.rows(num_new - repeat.copies * repeat.shift, num_context))
    firsts, offsets, values, spans = [], [0], [], []
    for row in rows:
        firsts.append(row.first)
        values.append(row.segment_to)
        offsets.append(offsets[-1] + len(row.segment_to))
        spans.append((row.first, *row.window))
    matrix = LevelMatrix(np.asarray(firsts, np.int64), np.asarray(offsets, np.int64),
                         np.concatenate(values).astype(np.int32), num_context, total, scheduler.num_steps, repeat)
    return matrix, spans, repeat


@dataclass(frozen=True)
class Plan:
    """A request planned against a model, before any network call: what will run, row by row.

    `levels` [rows + 1, context + new] are the DDIM levels of every frame before the first row and after
    each row, exactly the rows the sampler runs (a `LevelMatrix`: indexed like an array, stored compactly, so
    a plan of 100,000 frames is cheap; `level_matrix(rows)` draws a window of it); `frame_evaluations` [rows]
    is the work of each row in frames pushed through the DiT (guidance calls included), so an ETA can weigh
    rows that differ.
    """

    request: RunRequest
    context: np.ndarray  # the fitted context frames, uint8 [C, R, R, 3] (C = 0 from nothing)
    fit_note: str | None  # how the clip was resized for the model, or None when it fitted
    levels: LevelMatrix
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

    def level_matrix(self, rows: slice = slice(None)) -> np.ndarray:
        """The levels of the matrix rows `rows` (0: before the first network call) as an array
        [len(rows), context + new]: what a heat map draws, built for those rows only."""
        return self.levels[rows]

    @cached_property
    def _work_before(self) -> np.ndarray:
        """[rows + 1] the work of the first k rows, so an ETA after every row of a long run costs O(1)."""
        return np.concatenate([[0], np.cumsum(self.frame_evaluations)])

    def seconds_left(self, rows_done: int, elapsed: float) -> float | None:
        """Remaining time, from the time the rows done took and the work the rest will take; None before the
        first row."""
        if rows_done <= 0:
            return None
        before = self._work_before
        done = float(before[min(rows_done, len(before) - 1)])
        if done <= 0:
            return None
        return elapsed * (float(before[-1]) - done) / done


def plan_rows(request: RunRequest, window: int, num_context: int, *, cached: bool | None = None,
              guided: bool = False, history_guidance: float = 1.0) -> tuple[LevelMatrix, np.ndarray]:
    """(levels [rows + 1, context + new], frame evaluations [rows]) of `request` on a `window`-frame model.

    The work per row follows the samplers: the reference sampler pushes the whole window; the cached one
    only the frames not in its key/value cache (the cache restarts when the window slides). History guidance
    adds a call for the frames in flight where frames came before them; classifier-free guidance doubles
    every call's batch. Unguided, the sum equals the sampler's `SamplerStats.frame_forwards`.
    """
    scheduler = scheduler_for(request, window, num_context)
    levels, spans, repeat = _plan_levels(scheduler, request.new_frames, num_context)
    cached = request.sampler == "cached" if cached is None else cached
    work = np.zeros(len(spans), np.int64)
    cache_start, cache_end = -1, 0
    for i, (first, a, b) in enumerate(spans):
        if cached:
            start = cache_end if cache_start == a else a
            cache_start, cache_end = a, first
        else:
            start = a
        free = b - first if history_guidance != 1.0 and first != a else 0  # no history: no free call
        work[i] = (b - start + free) * (2 if guided else 1)
    if repeat is None:
        return levels, work
    # a repeat's first row follows the block's last row, as the stored row `stop` does: it does that row's work
    block = np.concatenate([work[repeat.stop:repeat.stop + 1], work[repeat.start + 1:repeat.stop]])
    inserted = repeat.copies * repeat.period
    full = np.empty(len(work) + inserted, np.int64)  # filled in place: no second copy of a long run's work
    full[:repeat.stop] = work[:repeat.stop]
    full[repeat.stop:repeat.stop + inserted].reshape(repeat.copies, repeat.period)[:] = block
    full[repeat.stop + inserted:] = work[repeat.stop:]
    return levels, full

"""Resource estimates: refuse, before anything is allocated, a request that could not finish on this machine.

A request is beyond reason when its memory estimate is over half of this machine's memory (the smaller of
physical memory and the cgroup limit) or its time estimate is over a day. Estimates are lower bounds (the
least memory the arrays need, the least work at an optimistic peak speed), so nothing that could run is
refused; the message gives the estimate so the user sees by how much.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from engine.errors import TooLargeError

MEMORY_FRACTION = 0.5
MAX_SECONDS = 24 * 3600.0
# Optimistic peak throughput for the time lower bound: no CPU reaches 2 TFLOP/s in float32 on these models, no
# GPU 2 PFLOP/s; a request that needs over a day even at these speeds is refused.
PEAK_FLOPS = {"cpu": 2e12, "cuda": 2e15}


def machine_memory() -> int:
    """Bytes of memory this process may use: physical memory, or the cgroup (container) limit if smaller."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            total = int(text)
    return total


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'; for messages."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} EiB"  # unreachable


def human_seconds(s: float) -> str:
    """Seconds in the largest unit that keeps the number readable: '3.2 days', '5.0 h', '12 s'."""
    if s >= 2 * 86400:
        return f"{s / 86400:.1f} days" if s < 365 * 86400 else f"{s / (365 * 86400):.3g} years"
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"


def check_memory(estimate: float, what: str, available: int | None = None) -> None:
    """Raise TooLargeError when `what` needs more than half of this machine's memory."""
    available = machine_memory() if available is None else available
    if estimate > MEMORY_FRACTION * available:
        raise TooLargeError(f"{what} needs at least {human_bytes(estimate)} of memory; this machine has "
                            f"{human_bytes(available)} and ardiff uses at most half: ask for less")


def check_time(seconds: float, what: str) -> None:
    """Raise TooLargeError when `what` would take over a day even at an optimistic speed."""
    if seconds > MAX_SECONDS:
        raise TooLargeError(f"{what} would take at least {human_seconds(seconds)} even at an optimistic "
                            f"peak speed; ardiff refuses runs over a day: ask for less")


@dataclass(frozen=True)
class SamplingEstimate:
    """Lower bounds for one sampling run: bytes held at once, DiT frame-forwards, seconds at peak speed."""

    memory: float
    frame_forwards: float
    seconds: float


def estimate_sampling(num_context: int, num_new: int, steps: int, image_size: int, latent_tokens: int,
                      latent_dim: int, dit_parameters: int, device_type: str = "cpu") -> SamplingEstimate:
    """The least a run of `num_new` frames after `num_context` costs: the noise [N, L, D] float32 drawn up
    front, the finished uint8 video held twice (the frame list and the stacked result); every new frame is
    forwarded once per DDIM level (N * steps frame-forwards, about 2 * parameters * L FLOPs each)."""
    frame_bytes = image_size * image_size * 3
    memory = num_new * latent_tokens * latent_dim * 4 + 2 * (num_context + num_new) * frame_bytes
    forwards = float(num_new) * steps
    seconds = forwards * 2.0 * dit_parameters * latent_tokens / PEAK_FLOPS.get(device_type, PEAK_FLOPS["cpu"])
    return SamplingEstimate(memory, forwards, seconds)


def check_sampling(num_context: int, num_new: int, steps: int, image_size: int, latent_tokens: int,
                   latent_dim: int, dit_parameters: int, device_type: str = "cpu") -> SamplingEstimate:
    """Refuse a sampling run beyond reason (see the module docstring); returns the estimate otherwise."""
    est = estimate_sampling(num_context, num_new, steps, image_size, latent_tokens, latent_dim, dit_parameters,
                            device_type)
    what = f"{num_new} new frames at {image_size}x{image_size}"
    check_memory(est.memory, what)
    check_time(est.seconds, f"{what} with {steps} steps ({est.frame_forwards:.3g} DiT frame-forwards)")
    return est


def min_schedule_rows(num_frames: int, steps: int, window: int) -> int:
    """A lower bound on the AD scheduler's rows: every frame must drop `steps` levels, and a row lowers at
    most `window` frames by one level each."""
    return max(steps, math.ceil(num_frames * steps / window))


def check_level_matrix(num_frames: int, num_context: int, steps: int, window: int, full: bool = False) -> None:
    """Refuse a plan over half the machine's memory: its compact levels and per-row work (8 bytes a row,
    engine.run.LevelMatrix), or with `full` the whole [rows + 1, frames] int64 matrix (a heat map, --text)."""
    rows = min_schedule_rows(num_frames, steps, window)
    if full:
        check_memory(8.0 * (rows + 1) * (num_frames + num_context),
                     f"the level matrix of {num_frames} frames (at least {rows} rows)")
    else:
        check_memory(8.0 * (rows + 1), f"the plan of {num_frames} frames (at least {rows} rows)")


def check_model(parameters: int, what: str) -> None:
    """Refuse building a model of `parameters` float32 weights over half the machine's memory."""
    check_memory(4.0 * parameters, f"{what} ({parameters:.3g} parameters in float32)")

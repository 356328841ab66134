"""Shared helpers for the benchmark scripts: timing with medians, and a header naming machine and date."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import sys
import time
from typing import Callable


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), or what the platform says."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "cpu"


def machine() -> str:
    import torch  # here, so scripts that time start-up can import this module without torch

    from engine.device import cpu_supports_bf16

    return (f"{cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
            f"native bf16: {'yes' if cpu_supports_bf16() else 'no'}")


def header(title: str) -> str:
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    env = " ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS",) if k in os.environ)
    command = " ".join(([env] if env else []) + [".venv/bin/python"] + sys.argv)
    return f"## {title}\n\n{date}; {machine()}\n`{command}`\n"


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of `fn` in seconds (these machines are shared and noisy: medians, not means)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)

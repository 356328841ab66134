"""The process a run lives in: its place among torchrun's processes, its device and precision (resolved by
the engine's `engine.device.resolve_device`, the one rule every surface uses), the seeds, and the
Ctrl-C / SIGTERM handlers that ask the loop to stop at the end of a step.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from engine import device as engine_device
from engine.device import resolve_device
from trainer.config import ConfigError


@dataclass
class Process:
    """This process: its rank among `world` processes, the device it trains on, and its precision."""

    rank: int
    world: int
    device: torch.device
    bf16: bool  # bf16 autocast, else float32
    precision_note: str  # what was chosen and why, for the console

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def ddp(self) -> bool:
        return self.world > 1

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)


def init_process(device: str, precision: str) -> Process:
    """Resolve the device and precision; under torchrun (WORLD_SIZE > 1) join the process group (NCCL on
    CUDA, gloo on CPU) and take the GPU of LOCAL_RANK."""
    try:
        dev, dtype = resolve_device(device, precision)
    except ValueError as err:
        raise ConfigError(f"device: {err}") from None
    note = precision_note(precision, dev, dtype is not None)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Process(0, 1, dev, dtype is not None, note)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    if dev.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    return Process(dist.get_rank(), world, dev, dtype is not None, note)


def leave_process_group(finished: bool) -> None:
    """Leave the process group, if this process joined one. After a run every rank finished, the ranks first
    wait for each other: a rank that closed its gloo connections while another still used them made that one
    abort at exit ("terminate called without an active exception"). After a failure nobody waits, since the
    other ranks may never come."""
    if dist.is_available() and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def precision_note(precision: str, device: torch.device, bf16: bool) -> str:
    """Why the run computes in bf16 autocast or float32, in words for the console."""
    if precision == "fp32":
        return "fp32 (asked for)"
    if precision == "bf16":
        if device.type == "cpu" and not engine_device.cpu_supports_bf16():
            return ("bf16 autocast (asked for; this CPU has no AMX/AVX512-BF16, so bf16 is emulated and "
                    "slower than fp32 here)")
        return "bf16 autocast (asked for)"
    if not bf16:
        return "fp32 (auto: this CPU has no AMX/AVX512-BF16; bf16 would be emulated and ~4x slower)"
    if device.type == "cuda":
        return "bf16 autocast (auto: CUDA)"
    return "bf16 autocast (auto: this CPU has AMX/AVX512-BF16)"


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return the generator of the per-sample draws (compositions, noise),
    which are made for the whole global batch and sliced per rank."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed + 1)


class StopRequest:
    """SIGINT/SIGTERM handlers that ask the loop to finish the step, save and exit; a second Ctrl-C aborts."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum

    def __enter__(self) -> "StopRequest":
        with contextlib.suppress(ValueError):  # not the main thread: no handlers
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)

    def why(self) -> str:
        return {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}.get(self.signal, "a stop request")

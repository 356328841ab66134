"""Where and at what precision a model runs: parse a device name, resolve "auto", say why in words.

The pipeline, the exporter and the trainer all resolve devices and precisions here, so "auto" means the
same thing everywhere: bfloat16 autocast on CUDA and on CPUs with native bfloat16 (AMX or AVX512-BF16),
float32 elsewhere.
"""

from __future__ import annotations

import torch

from engine.run import check_precision


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bfloat16 matrix units (AMX or AVX512-BF16); without them bf16 is emulated
    and far slower than float32."""
    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


def parse_device(device: str | torch.device) -> torch.device:
    """"cpu" | "cuda[:i]" -> torch.device; anything else is a ValueError naming what is allowed."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    return dev


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for `precision` ("auto" | "fp32" | "bf16") on `device`; None means float32."""
    check_precision(precision)
    if precision != "auto":
        return None if precision == "fp32" else torch.bfloat16
    return torch.bfloat16 if device.type == "cuda" or cpu_supports_bf16() else None


def resolve_device(device: str = "auto", precision: str = "auto") -> tuple[torch.device, torch.dtype | None]:
    """("auto" | "cpu" | "cuda[:i]", "auto" | "fp32" | "bf16") -> (device, autocast dtype; None: float32).

    "fp32" makes results the same on every CPU, whatever its matrix units.
    """
    check_precision(precision)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = parse_device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but this torch has no CUDA device; use --device cpu")
    return dev, autocast_dtype(dev, precision)


def describe_precision(device: torch.device, dtype: torch.dtype | None) -> str:
    """E.g. "float32 (this CPU has no native bfloat16)" or "bfloat16 autocast": what runs, and why where the
    CPU decided it."""
    words = "float32" if dtype is None else f"{str(dtype)[6:]} autocast"
    if device.type == "cpu" and not cpu_supports_bf16():
        words += (" (this CPU has no native bfloat16)" if dtype is None
                  else " (emulated on this CPU: slower than float32)")
    return words

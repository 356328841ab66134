"""The generation settings the user types, parsed and checked before anything runs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from engine.errors import ArdiffError
from engine.hub import checkpoint_arg
from engine.precision import PRECISIONS

DEVICES = ("auto", "cpu", "cuda")
# One wording for --help, the form's tooltip and the help screen.
PRECISION_HELP = ("auto: bfloat16 where the CPU/GPU does it natively, else float32; "
                  "fp32: the same result on every machine; bf16: always bfloat16")
# The CLI's --history-guidance wording (engine/cli.py), plus what blank means and what it costs.
HISTORY_GUIDANCE_HELP = ("lean on the context: x0 = free + W (x0 - free), free = the frames in flight "
                         "without what came before; 1 = off, 0 = ignore the context; any W other than 1 "
                         "costs one more DiT call per row (blank: the model's own)")


class SettingsError(ArdiffError):
    """A setting the user must fix; `field` names the input to focus."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Settings:
    """What one Generate press asks for. `checkpoint` None means the embedded default model."""

    s: int = 5
    frames: int = 32
    steps: int = 50
    context: int = 8
    seed: int = 0
    checkpoint: Path | str | None = None  # a path, or an hf:/https:// reference (engine.hub)
    device: str = "auto"
    precision: str = "auto"  # "auto" | "fp32" | "bf16", as load_pipeline takes it
    history_guidance: float | None = None  # None: the model's own (Pipeline.history_guidance); 1.0 is off


# field -> (label shown in the form, smallest allowed value)
INT_FIELDS: dict[str, tuple[str, int]] = {
    "s": ("s", 0),
    "frames": ("new frames", 1),
    "steps": ("steps", 1),
    "context": ("context", 1),
    "seed": ("seed", 0),
}


def parse_settings(values: dict[str, str]) -> Settings:
    """Form text -> Settings; the first bad field raises SettingsError saying what to type instead."""
    parsed: dict[str, object] = {}
    for field, (label, low) in INT_FIELDS.items():
        text = values.get(field, "").strip()
        try:
            number = int(text)
        except ValueError:
            raise SettingsError(field, f"{label} must be a whole number, got {text!r}") from None
        if number < low:
            raise SettingsError(field, f"{label} must be at least {low}, got {number}")
        parsed[field] = number
    checkpoint = values.get("checkpoint", "").strip()
    parsed["checkpoint"] = checkpoint_arg(checkpoint) if checkpoint else None  # a path, or hf:/https:// as typed
    device = values.get("device", "auto").strip() or "auto"
    if device not in DEVICES and not device.startswith("cuda:"):
        raise SettingsError("device", f"device must be auto, cpu or cuda, got {device!r}")
    parsed["device"] = device
    precision = values.get("precision", "auto").strip() or "auto"
    if precision not in PRECISIONS:
        raise SettingsError("precision", f"precision must be {', '.join(PRECISIONS)}, got {precision!r}")
    parsed["precision"] = precision
    parsed["history_guidance"] = parse_history_guidance(values.get("history_guidance", ""))
    return Settings(**parsed)  # type: ignore[arg-type]


def parse_history_guidance(text: str) -> float | None:
    """Blank -> None (the model's own); otherwise a finite number >= 0, as the sampler accepts."""
    text = text.strip()
    if not text:
        return None
    try:
        weight = float(text)
    except ValueError:
        weight = math.nan
    if not (math.isfinite(weight) and weight >= 0):
        raise SettingsError("history_guidance", f"history guidance must be a number >= 0 (1 = off), or blank "
                                                f"for the model's own, got {text!r}")
    return weight

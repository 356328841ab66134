"""The generation settings the user types: the form's text parsed into a run request (engine.run), whose
own checks name the field to fix."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from engine.errors import RunError
from engine.hub import checkpoint_arg
from engine.run import DEFAULT_ADAPT_STEPS, DEVICES, PRECISION_HELP, PRECISIONS, RunRequest

__all__ = ["DEVICES", "PRECISIONS", "PRECISION_HELP", "HISTORY_GUIDANCE_HELP", "Settings", "SettingsError",
           "form_field", "parse_settings", "parse_history_guidance"]
# The CLI's --history-guidance wording (engine/cli.py), plus what blank means and what it costs.
HISTORY_GUIDANCE_HELP = ("lean on the context: x0 = free + W (x0 - free), free = the frames in flight "
                         "without what came before; 1 = off, 0 = ignore the context; any W other than 1 "
                         "costs one more DiT call per row (blank: the model's own)")


class SettingsError(RunError):
    """A setting the user must fix; `field` names the input to focus (the form's name for it)."""


# RunRequest field -> the form's input, where the two names differ
_FORM_FIELDS = {"new_frames": "frames"}


@dataclass(frozen=True)
class Settings:
    """What one Generate press asks for: a run request's fields (the engine's defaults) and the model to
    load. `checkpoint` None means the embedded default model."""

    s: int = RunRequest.s
    frames: int = RunRequest.new_frames
    steps: int = RunRequest.steps
    context: int = RunRequest.context
    seed: int = RunRequest.seed
    checkpoint: Path | str | None = None  # a path, or an hf:/https:// reference (engine.hub)
    device: str = RunRequest.device
    precision: str = RunRequest.precision  # "auto" | "fp32" | "bf16", as load_pipeline takes it
    history_guidance: float | None = None  # None: the model's own (Pipeline.history_guidance); 1.0 is off
    adapt: bool = False  # "adapt to this clip": fine-tune on the clip first (engine.run.DEFAULT_ADAPT_STEPS)

    def request(self, continuing: bool = True) -> RunRequest:
        """The run these settings ask for (adapting only when `continuing` a clip: there is nothing to adapt
        to otherwise); SettingsError (naming the form's field) when one cannot work."""
        adapt_steps = DEFAULT_ADAPT_STEPS if self.adapt and continuing else 0
        try:
            return RunRequest(new_frames=self.frames, s=self.s, steps=self.steps, context=self.context,
                              seed=self.seed, device=self.device, precision=self.precision,
                              history_guidance=self.history_guidance, adapt_steps=adapt_steps)
        except RunError as err:
            raise SettingsError(form_field(err.field), str(err)) from None


def form_field(name: str) -> str:
    """The form's input for a RunRequest field (engine.errors.RunError.field)."""
    return _FORM_FIELDS.get(name, name)


# field -> label shown in the form
INT_FIELDS: dict[str, str] = {"s": "s", "frames": "new frames", "steps": "steps", "context": "context",
                              "seed": "seed"}


def parse_settings(values: dict[str, str]) -> Settings:
    """Form text -> Settings; the first bad field raises SettingsError saying what to type instead."""
    parsed: dict[str, object] = {}
    for field, label in INT_FIELDS.items():
        text = values.get(field, "").strip()
        try:
            parsed[field] = int(text)
        except ValueError:
            raise SettingsError(field, f"{label} must be a whole number, got {text!r}") from None
    checkpoint = values.get("checkpoint", "").strip()
    parsed["checkpoint"] = checkpoint_arg(checkpoint) if checkpoint else None  # a path, or hf:/https:// as typed
    parsed["device"] = values.get("device", "auto").strip() or "auto"
    parsed["precision"] = values.get("precision", "auto").strip() or "auto"
    parsed["history_guidance"] = parse_history_guidance(values.get("history_guidance", ""))
    parsed["adapt"] = values.get("adapt", "") == "on"
    settings = Settings(**parsed)  # type: ignore[arg-type]
    settings.request()  # the engine's checks, in the order of its fields
    return settings


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

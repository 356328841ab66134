"""What ardiff-tui remembers between sessions: the run settings, the save choices, "adapt to this clip" and
the last folder, in `tui.json` in the platform's config folder (engine.settings_file: per-field fallback,
atomic write; a damaged file never stops the app)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from app_tui.settings import Settings
from engine import settings_file
from engine.hub import checkpoint_arg
from engine.run import DEVICES, PRECISIONS, RunRequest
from engine.save_options import PARTS, SIZES, SaveOptions

FILE_NAME = "tui.json"


def config_path() -> Path:
    """Where the TUI's settings live (looked up on each call, so tests can redirect it)."""
    return settings_file.config_path(FILE_NAME)


@dataclass
class Prefs:
    """The remembered choices; field defaults are the first-run values (the engine's, engine.run)."""

    s: int = RunRequest.s
    frames: int = RunRequest.new_frames
    steps: int = RunRequest.steps
    context: int = RunRequest.context
    seed: int = RunRequest.seed
    history_guidance: float | None = None  # None: the model's own
    checkpoint: str = ""  # "": the embedded default model
    device: str = RunRequest.device
    precision: str = RunRequest.precision
    adapt: bool = False
    save_part: str = SaveOptions.part
    save_size: str = SaveOptions.size
    last_dir: str = ""
    path: Path | None = field(default=None, repr=False, compare=False)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> Prefs:
        """Read `path` (default: config_path()); a missing or damaged file, or a bad field, gives defaults."""
        prefs = cls(path=Path(path) if path is not None else config_path())
        data = settings_file.read_json(prefs.path)
        if data is None:
            return prefs
        settings_file.apply_fields(prefs, data, skip=("path",))
        hg = data.get("history_guidance")  # a number >= 0 (JSON allows NaN; the sampler does not)
        if isinstance(hg, (int, float)) and not isinstance(hg, bool) and math.isfinite(hg) and hg >= 0:
            prefs.history_guidance = float(hg)
        if prefs.device not in DEVICES and not prefs.device.startswith("cuda:"):
            prefs.device = RunRequest.device
        if prefs.precision not in PRECISIONS:
            prefs.precision = RunRequest.precision
        if prefs.save_part not in PARTS:
            prefs.save_part = SaveOptions.part
        if prefs.save_size not in SIZES:
            prefs.save_size = SaveOptions.size
        try:
            prefs.settings().request()  # numbers the engine refuses (a hand-edited file): the defaults
        except Exception:
            for name in ("s", "frames", "steps", "context", "seed"):
                setattr(prefs, name, getattr(cls, name))
        return prefs

    def save(self) -> bool:
        """Write atomically; False when it could not be written (the app goes on)."""
        return settings_file.write_json(self.path or config_path(), settings_file.to_json(self, ("path",)))

    def settings(self) -> Settings:
        """The run settings these prefs hold."""
        return Settings(s=self.s, frames=self.frames, steps=self.steps, context=self.context, seed=self.seed,
                        checkpoint=checkpoint_arg(self.checkpoint) if self.checkpoint else None,
                        device=self.device, precision=self.precision,
                        history_guidance=self.history_guidance, adapt=self.adapt)

    def remember(self, settings: Settings) -> None:
        """Take the run settings of a Generate press."""
        self.s, self.frames, self.steps = settings.s, settings.frames, settings.steps
        self.context, self.seed = settings.context, settings.seed
        self.history_guidance = settings.history_guidance
        self.checkpoint = "" if settings.checkpoint is None else str(settings.checkpoint)
        self.device, self.precision, self.adapt = settings.device, settings.precision, settings.adapt

    @property
    def save_options(self) -> SaveOptions:
        return SaveOptions(self.save_part, self.save_size)

"""Settings that survive between runs: the last parameters, model, device, precision, folders, recent clips.

Stored as one small JSON file in the platform's config folder (platformdirs), so a person finds the app
as they left it. Unknown or malformed values fall back to defaults: a damaged file never stops the app.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from engine import settings_file
from engine.run import DEVICES, PRECISIONS, RunRequest
from engine.save_options import PARTS, SIZES

APP_NAME = settings_file.APP_NAME
FILE_NAME = "gui.json"
MAX_RECENT = 8
MODEL_HISTORY_GUIDANCE = None  # "the model's own" history guidance, as engine.run.RunRequest says it


def config_path() -> Path:
    """Where the settings live (looked up on each call, so tests can redirect platformdirs)."""
    return settings_file.config_path(FILE_NAME)


@dataclass
class Settings:
    """Everything the window restores on start. Field defaults are the first-run values."""

    s: int = RunRequest.s
    new_frames: int = RunRequest.new_frames
    steps: int = RunRequest.steps
    context: int = RunRequest.context
    seed: int = RunRequest.seed
    guidance: float = RunRequest.guidance_scale
    history_guidance: float | None = MODEL_HISTORY_GUIDANCE  # >= 0: x0 = free + w (x0 - free); 1 = off
    class_label: int = -1  # -1: unconditional
    adapt: bool = False  # "adapt to this clip" (RunRequest.adapt_steps = DEFAULT_ADAPT_STEPS when on)
    save_part: str = "all"  # engine.save_options.SaveOptions: what a save holds ("all" | "new")
    save_size: str = "model"  # ... and at what size ("model" | "input")
    checkpoint: str = ""  # "" = the embedded default model
    device: str = RunRequest.device
    precision: str = RunRequest.precision  # "auto" | "fp32" | "bf16", as load_pipeline takes it
    threads: int = 0  # CPU threads for torch; 0 = automatic (engine.threads: free cores, one kept for the UI)
    recent: list[str] = field(default_factory=list)
    last_dir: str = ""
    save_dir: str = ""
    geometry: str = ""  # QMainWindow.saveGeometry() as hex
    path: Path | None = field(default=None, repr=False, compare=False)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> Settings:
        """Read settings from `path` (default: `config_path()`); missing or broken files give defaults."""
        path = Path(path) if path is not None else config_path()
        settings = cls(path=path)
        data = settings_file.read_json(path)
        if data is None:
            return settings
        settings_file.apply_fields(settings, data, skip=("path", "history_guidance"))
        settings.recent = [p for p in settings.recent if isinstance(p, str)][:MAX_RECENT]
        if settings.device not in DEVICES:
            settings.device = "auto"
        if settings.precision not in PRECISIONS:
            settings.precision = "auto"
        if settings.save_part not in PARTS:
            settings.save_part = "all"
        if settings.save_size not in SIZES:
            settings.save_size = "model"
        settings.threads = max(settings.threads, 0)  # negative: automatic, as 0
        hg = data.get("history_guidance")  # a number >= 0, else the model's own (old files stored -1 for it)
        if isinstance(hg, (int, float)) and not isinstance(hg, bool) and math.isfinite(hg) and hg >= 0:
            settings.history_guidance = float(hg)  # JSON allows NaN; the sampler does not
        return settings

    def save(self) -> None:
        """Write atomically (temp file + rename): a crash mid-write keeps the previous settings."""
        # a read-only home must not break the app; settings are a convenience
        settings_file.write_json(self.path or config_path(), settings_file.to_json(self, leave_out=("path",)))

    def add_recent(self, clip: str | os.PathLike) -> None:
        """Put `clip` first in the recent list (no duplicates, at most MAX_RECENT)."""
        text = str(Path(clip).resolve())
        self.recent = [text] + [p for p in self.recent if p != text]
        del self.recent[MAX_RECENT:]

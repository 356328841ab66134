"""What a saved result holds and where it goes, the same in the CLI, the GUI and the TUI: the clip and its
continuation or the new frames only, at the model's size or the input clip's, and the suggested file name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from engine.errors import RunError

PARTS = ("all", "new")
PART_LABELS = {"all": "clip + continuation", "new": "new frames only"}
SIZES = ("model", "input")
SIZE_LABELS = {"model": "the model's size", "input": "the input clip's size"}
SUFFIX = "_continued"  # <clip stem>_continued.mp4: every surface suggests this name
MAX_SIDE = 4096  # an upscale past this is refused: the input's size, not a typo, is what people want


@dataclass(frozen=True)
class SaveOptions:
    """`part`: "all" (the context frames, then the new ones) or "new"; `size`: "model" (as made) or "input"
    (upscaled to the side of the square the model saw of the input clip, with Lanczos)."""

    part: str = "all"
    size: str = "model"

    def __post_init__(self) -> None:
        if self.part not in PARTS:
            raise RunError("part", f"save part must be one of {', '.join(PARTS)}, got {self.part!r}")
        if self.size not in SIZES:
            raise RunError("size", f"save size must be one of {', '.join(SIZES)}, got {self.size!r}")


def frames_to_save(video: np.ndarray, num_context: int, options: SaveOptions,
                   input_hw: Sequence[int] | None = None) -> np.ndarray:
    """The frames a save writes: `video` uint8 [context + new, R, R, 3] cut to `options.part` and, for
    size "input", resized to the side of the centred square of an input of height/width `input_hw` (the part
    of the clip the model saw). A result from nothing has no input size: it stays at the model's."""
    frames = video[num_context:] if options.part == "new" else video
    if options.size == "model" or input_hw is None or len(frames) == 0:
        return frames
    side = min(int(input_hw[0]), int(input_hw[1]))
    if side < 1 or side > MAX_SIDE:
        raise RunError("size", f"an input of {input_hw[1]}x{input_hw[0]} cannot be the save size "
                               f"(sides 1..{MAX_SIDE})")
    if side == frames.shape[1] == frames.shape[2]:
        return frames
    return np.stack([np.asarray(Image.fromarray(f).resize((side, side), Image.Resampling.LANCZOS)) for f in frames])


def suggested_output(clip: str | Path | None, folder: str | Path | None = None, suffix: str = ".mp4") -> Path:
    """Where a result is saved unless the person says otherwise: `<clip stem>_continued<suffix>` in `folder`
    (default: beside the clip; the working folder for a result from nothing), numbered `-2`, `-3`, ... past
    names that exist, so a suggestion never overwrites a file."""
    clip = None if clip is None else Path(clip)
    stem = (clip.stem if clip is not None else "ardiff") + SUFFIX
    where = Path(folder) if folder is not None else (clip.parent if clip is not None else Path("."))
    candidate = where / f"{stem}{suffix}"
    number = 2
    while candidate.exists() or candidate.is_symlink():
        candidate = where / f"{stem}-{number}{suffix}"
        number += 1
    return candidate

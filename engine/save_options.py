"""What a saved result holds and where it goes, the same in the CLI, the GUI and the TUI: the clip and its
continuation or the new frames only, at the model's size or the input clip's, and the suggested file name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

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


def save_side(options: SaveOptions, input_hw: Sequence[int] | None) -> int | None:
    """The side of the square frames a save writes at size "input": that of the centred square of an input
    of height/width `input_hw` (the part of the clip the model saw); None at the model's size or for a
    result from nothing. RunError("size") for a side outside 1..MAX_SIDE, so a surface can refuse before
    sampling."""
    if options.size == "model" or input_hw is None:
        return None
    side = min(int(input_hw[0]), int(input_hw[1]))
    if side < 1 or side > MAX_SIDE:
        raise RunError("size", f"an input of {input_hw[1]}x{input_hw[0]} cannot be the save size "
                               f"(sides 1..{MAX_SIDE})")
    return side


def frames_to_save(video: np.ndarray, num_context: int, options: SaveOptions,
                   input_hw: Sequence[int] | None = None) -> np.ndarray:
    """The frames a save writes: `video` uint8 [context + new, R, R, 3] cut to `options.part` and, for
    size "input", resized to `save_side` with Lanczos. A result from nothing has no input size: it stays at
    the model's."""
    frames = video[num_context:] if options.part == "new" else video
    side = save_side(options, input_hw)
    if side is None or len(frames) == 0:
        return frames
    if side == frames.shape[1] == frames.shape[2]:
        return frames
    from PIL import Image  # on first use: the CLI's --help and the apps' forms start without it

    return np.stack([np.asarray(Image.fromarray(f).resize((side, side), Image.Resampling.LANCZOS)) for f in frames])


def suggested_output(clip: str | Path | None, folder: str | Path | None = None, suffix: str = ".mp4",
                     companions: Callable[[Path], Iterable[Path]] | None = None) -> Path:
    """Where a result is saved unless the person says otherwise: `<clip stem>_continued<suffix>` in `folder`
    (default: beside the clip; the working folder for a result from nothing), numbered `-2`, `-3`, ... past
    names that exist (a dangling symlink too), so a suggestion never overwrites a file. `companions(name)`:
    the files a save writes beside `name` (the CLI's contact sheet), which must not exist either."""
    clip = None if clip is None else Path(clip)
    stem = (clip.stem if clip is not None else "ardiff") + SUFFIX
    where = Path(folder) if folder is not None else (clip.parent if clip is not None else Path("."))

    def taken(path: Path) -> bool:
        return any(p.exists() or p.is_symlink() for p in [path, *(companions(path) if companions else ())])

    candidate = where / f"{stem}{suffix}"
    number = 2
    while taken(candidate):
        candidate = where / f"{stem}-{number}{suffix}"
        number += 1
    return candidate

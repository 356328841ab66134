"""The clip being continued: its facts and its last frames (the only ones a context can use)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import VideoError
from engine.video_io import CLIP_EXTENSIONS, VideoInfo, iter_frames, probe_video

# The model sees at most window - 1 context frames (15 for every preset); keep a margin, not the whole clip,
# so an HD film does not fill memory.
MAX_TAIL = 31


@dataclass(frozen=True)
class Clip:
    """A loaded clip: `tail` holds its last (up to MAX_TAIL) frames, uint8 [N, H, W, 3]."""

    path: Path
    info: VideoInfo
    num_frames: int
    tail: np.ndarray

    def summary(self) -> str:
        """One line for the title bar and the log."""
        return (f"{self.path.name}: {self.num_frames} frames, {self.info.width}x{self.info.height} "
                f"@ {self.info.fps:g} fps")


def load_clip(path: str | Path) -> Clip:
    """Probe and decode a video file, an image (a one-frame clip) or a frame folder; VideoError (one line) for
    anything unreadable."""
    path = Path(path).expanduser()
    if path.is_file() and path.suffix.lower() not in CLIP_EXTENSIONS:
        raise VideoError(f"{path}: not a video or image ({path.suffix or 'no extension'}); "
                         f"pick one of {', '.join(sorted(CLIP_EXTENSIONS))} or a folder of frames")
    info = probe_video(path)
    count = 0
    tail: deque[np.ndarray] = deque(maxlen=MAX_TAIL)
    for frame in iter_frames(path):
        tail.append(frame)
        count += 1
    return Clip(path=path, info=info, num_frames=count, tail=np.stack(tail))


def context_frames(clip: Clip, count: int) -> np.ndarray:
    """The last `count` frames, or VideoError saying why the clip is too short for that context."""
    if count > clip.num_frames:
        raise VideoError(f"{clip.path.name} has only {clip.num_frames} frame(s), fewer than context {count}; "
                         f"set context to {clip.num_frames} or less, or pick a longer clip")
    if count > len(clip.tail):
        raise VideoError(f"context {count} is more than ardiff-tui keeps ({len(clip.tail)} frames)")
    return clip.tail[-count:]

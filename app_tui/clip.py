"""The clip being continued: its facts and its last frames (the only ones a context can use); which of
them the model sees is the run's plan (engine.pipeline.Pipeline.plan)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import VideoError
from engine.run import frame_rate
from engine.video_io import CLIP_EXTENSIONS, VideoInfo, probe_video, read_tail

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
                f"@ {frame_rate(self.info.fps)}")


def load_clip(path: str | Path) -> Clip:
    """Probe and decode a video file, an image (a one-frame clip) or a frame folder; VideoError (one line) for
    anything unreadable."""
    path = Path(path).expanduser()
    if path.is_file() and path.suffix.lower() not in CLIP_EXTENSIONS:
        raise VideoError(f"{path}: not a video or image ({path.suffix or 'no extension'}); "
                         f"pick one of {', '.join(sorted(CLIP_EXTENSIONS))} or a folder of frames")
    info = probe_video(path)
    tail = read_tail(path, MAX_TAIL, info.num_frames)
    # the container's count where it has one (a tail read from far into the clip does not count it)
    count = info.num_frames if info.num_frames and len(tail) == MAX_TAIL else len(tail)
    return Clip(path=path, info=info, num_frames=count, tail=tail)

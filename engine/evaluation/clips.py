"""The clips an evaluation reads: videos found in a folder (or named), each cut into clips of the first
frames, checked for length before anything is sampled."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import ArdiffError


@dataclass
class Clip:
    """An evaluation clip: its first frames as read (uint8 [T, H, W, 3], source resolution)."""

    name: str
    frames: np.ndarray
    path: str | None = None


def find_videos(folder: str | os.PathLike) -> list[Path]:
    """Video files (by extension) and frame folders (sub-folders holding PNG/JPG frames) directly in `folder`,
    in natural order; hidden entries are ignored."""
    from engine.video_io import VIDEO_EXTENSIONS, list_frame_files, natural_key

    folder = Path(folder)
    if not folder.exists():
        raise ArdiffError(f"{folder}: no such file or folder")
    if not folder.is_dir():
        raise ArdiffError(f"{folder} is not a folder of videos")
    found = []
    for p in folder.iterdir():
        if p.name.startswith("."):
            continue
        if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS:
            found.append(p)
        elif p.is_dir() and list_frame_files(p):
            found.append(p)
    return sorted(found, key=lambda p: natural_key(p.name))


def video_paths(source: str | os.PathLike | Sequence[str | os.PathLike], what: str = "videos") -> list[Path]:
    """A folder of videos, one video (file or frame folder), or a list of them -> paths."""
    from engine.video_io import list_frame_files

    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise ArdiffError(f"{what} {path}: no such file or folder")
        if path.is_dir() and not list_frame_files(path):
            videos = find_videos(path)
            if not videos:
                raise ArdiffError(f"{what} {path} holds no videos (video files or folders of PNG/JPG frames)")
            return videos
        return [path]
    paths = []
    for item in source:
        paths.extend(video_paths(item, what))
    if not paths:
        raise ArdiffError(f"{what}: no videos given")
    return paths


def load_clips(source: str | os.PathLike | Sequence[str | os.PathLike], context: int, frames: int,
               per_video: int = 1) -> list[Clip]:
    """Read ``per_video`` consecutive, non-overlapping clips of ``context + frames`` frames from every video in
    ``source`` (folder, file or list), from its first frame on; a long held-out video then gives several clips.

    A video too short for even one clip raises an ArdiffError naming it and its length; one too short for
    ``per_video`` clips gives as many as it holds."""
    from engine.video_io import read_video

    if per_video < 1:
        raise ArdiffError(f"clips per video must be at least 1, got {per_video}")
    need = context + frames
    clips = []
    for path in video_paths(source, "clips"):
        video = read_video(path, max_frames=need * per_video)
        if len(video) < need:
            raise ArdiffError(f"clip {path} has {len(video)} frames; --context {context} + --frames {frames} "
                              f"needs {need}")
        count = len(video) // need
        for k in range(count):
            name = path.name if count == 1 else f"{path.name}@{k * need}"
            clips.append(Clip(name, video[k * need:(k + 1) * need], str(path)))
    return clips


"""A directory tree that lists folders, video files and images only (hidden entries left out)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from textual.widgets import DirectoryTree

from engine.video_io import CLIP_EXTENSIONS


class VideoTree(DirectoryTree):
    """DirectoryTree filtered to what ardiff can read: videos, images, and folders (a frame folder is a clip)."""

    # Plain glyphs: emoji icons are missing from many terminal fonts (and from SSH sessions' fonts).
    ICON_NODE = "▸ "
    ICON_NODE_EXPANDED = "▾ "
    ICON_FILE = "  "

    def filter_paths(self, paths: Iterable[Path]) -> Iterable[Path]:
        return [p for p in paths if not p.name.startswith(".")
                and (p.is_dir() or p.suffix.lower() in CLIP_EXTENSIONS)]

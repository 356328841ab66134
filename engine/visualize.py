"""Small pictures for people: the AD schedule as a heat map and a video as a contact sheet (PIL only).

The colours live here, so the GUI, the TUI and the files the CLI writes agree: viridis for noise levels,
blue for the person's own frames and orange for the frames the model made.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from engine.atomic import atomic_path
from engine.errors import VideoError
from engine.video_io import _check_frames

CONTEXT_COLOUR = (66, 133, 244)  # blue: the user's clip
NEW_COLOUR = (255, 152, 0)  # orange: frames the model made

# Viridis at five stops: dark purple (clean) to yellow (pure noise); readable in grey and by the colour-blind.
_STOPS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64)


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> uint8 RGB, interpolating the viridis stops."""
    x = np.clip(values, 0.0, 1.0) * (len(_STOPS) - 1)
    lo = np.floor(x).astype(int).clip(0, len(_STOPS) - 2)
    frac = (x - lo)[..., None]
    return np.round(_STOPS[lo] * (1 - frac) + _STOPS[lo + 1] * frac).astype(np.uint8)


def schedule_heatmap(levels: np.ndarray, num_steps: int, path: str | os.PathLike, num_context: int = 0,
                     max_side: int = 1600) -> Path:
    """Draw a [rows + 1, frames] level matrix: frames across, rows down, colour = noise level (0..n)."""
    num_rows, num_frames = levels.shape
    cell_w = int(np.clip(max_side // max(num_frames, 1), 1, 24))
    cell_h = int(np.clip(max_side // max(num_rows, 1), 1, 12))
    image = colormap(levels / max(num_steps, 1)).repeat(cell_h, 0).repeat(cell_w, 1)
    margin, bar = 28, 16
    canvas = Image.new("RGB", (image.shape[1] + 2 * margin + bar + 60, image.shape[0] + 2 * margin), "white")
    canvas.paste(Image.fromarray(image), (margin, margin))
    draw = ImageDraw.Draw(canvas)
    if num_context:  # context frames are clean throughout; a line marks where new frames begin
        x = margin + num_context * cell_w
        draw.line([(x, margin - 6), (x, margin + image.shape[0])], fill="red", width=1)
    draw.text((margin, 6), "frames ->", fill="black")
    draw.text((4, margin), "rows", fill="black")
    # Colour bar: 0 (clean) at the bottom, n (noise) on top.
    bar_x = margin * 2 + image.shape[1]
    height = max(image.shape[0], 40)
    ramp = colormap(np.linspace(1, 0, height))[:, None, :].repeat(bar, 1)
    canvas.paste(Image.fromarray(ramp[: canvas.height - 2 * margin]), (bar_x, margin))
    draw.text((bar_x + bar + 4, margin), f"n={num_steps} noise", fill="black")
    draw.text((bar_x + bar + 4, margin + min(height, canvas.height - 2 * margin) - 12), "0 clean", fill="black")
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return Path(path)


def _thumbnails(frames: np.ndarray, thumb: int) -> np.ndarray:
    height, width = frames.shape[1:3]
    scale = thumb / max(height, width)
    if scale >= 1:
        return frames
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    return np.stack(
        [np.asarray(Image.fromarray(f).resize((new_w, new_h), Image.Resampling.BOX)) for f in frames]
    )


def contact_sheet(
    frames: np.ndarray,
    columns: int = 8,
    context: int = 0,
    path: str | os.PathLike[str] | None = None,
    thumb: int = 128,
    border: int = 2,
) -> np.ndarray:
    """A grid of thumbnails (at most ``thumb`` px on the long side), ``columns`` per row.

    Each thumbnail gets a ``border``-px frame: blue for the first ``context`` frames (the
    user's clip), orange for the rest (generated), so a reader sees where the model took
    over. Returns the uint8 RGB image; also saves it as PNG (atomically) when ``path`` is given.
    """
    frames = _thumbnails(_check_frames(frames, str(path) if path else "contact_sheet"), thumb)
    if columns < 1:
        raise ValueError(f"columns must be >= 1 (got {columns})")
    count, height, width = frames.shape[:3]
    rows, columns = -(-count // columns), min(columns, count)
    cell_h, cell_w = height + 2 * border, width + 2 * border
    gap = 2
    sheet = np.full((rows * (cell_h + gap) + gap, columns * (cell_w + gap) + gap, 3), 24, dtype=np.uint8)
    for i, frame in enumerate(frames):
        top = gap + (i // columns) * (cell_h + gap)
        left = gap + (i % columns) * (cell_w + gap)
        sheet[top : top + cell_h, left : left + cell_w] = (
            CONTEXT_COLOUR if i < context else NEW_COLOUR
        )
        sheet[top + border : top + border + height, left + border : left + border + width] = frame
    if path is not None:
        try:
            with atomic_path(path) as tmp:
                Image.fromarray(sheet).save(tmp, format="PNG")
        except OSError as err:
            raise VideoError(f"{path}: cannot write image ({err.strerror or err})") from err
    return sheet

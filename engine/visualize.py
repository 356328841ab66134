"""Small pictures for people: the AD schedule as a heat map (PIL only, no plotting library)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from engine.atomic import atomic_path

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

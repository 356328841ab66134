"""Pictures as terminal cells: half-cell colour blocks, or plain characters for text-only terminals.

Pure functions (numpy in, rows of Rich segments out), shared by the filmstrip, the heat map and the text
preview. Segments, not Rich Text: a live view redraws these many times a second.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image
from rich.segment import Segment
from rich.style import Style

# Dark to bright; a text-only terminal still shows shapes and motion.
ASCII_RAMP = " .:-=+*#%@"
HALF = "▀"


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 [H, W, 3] -> [height, width, 3]: box filter when shrinking (no aliasing), nearest when
    enlarging (a 16x16 frame stays crisp instead of blurring)."""
    width, height = max(1, width), max(1, height)
    if image.shape[1] == width and image.shape[0] == height:
        return image
    shrink = width <= image.shape[1] and height <= image.shape[0]
    method = Image.Resampling.BOX if shrink else Image.Resampling.NEAREST
    return np.asarray(Image.fromarray(image).resize((width, height), method))


@lru_cache(maxsize=65536)
def half_style(top: int, bottom: int) -> Style:
    """The style of a '▀' cell: upper pixel as foreground, lower as background (colours as 0xRRGGBB)."""
    return Style.parse(f"#{top:06x} on #{bottom:06x}")


def pack_rgb(pixels: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] -> int [...] as 0xRRGGBB, a hashable colour per pixel."""
    p = pixels.astype(np.int64)
    return (p[..., 0] << 16) | (p[..., 1] << 8) | p[..., 2]


def halfcell_rows(pixels: np.ndarray) -> list[list[Segment]]:
    """Pixels [2 * rows, cols, 3] -> `rows` rows of '▀' segments, two pixels per cell, square pixels."""
    packed = pack_rgb(pixels)
    return [[Segment(HALF, half_style(int(t), int(b))) for t, b in zip(packed[2 * r], packed[2 * r + 1])]
            for r in range(len(packed) // 2)]


def halfcell_image(image: np.ndarray, cols: int, rows: int) -> list[list[Segment]]:
    """A frame fitted to exactly cols x rows half cells."""
    return halfcell_rows(resize(image, cols, rows * 2))


def ascii_lines(image: np.ndarray, cols: int, rows: int) -> list[str]:
    """`rows` strings of `cols` characters from ASCII_RAMP by luminance: no colour at all."""
    pixels = resize(image, cols, rows).astype(np.float32)
    luma = pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    index = np.clip((luma / 256.0 * len(ASCII_RAMP)).astype(int), 0, len(ASCII_RAMP) - 1)
    return ["".join(ASCII_RAMP[i] for i in row) for row in index]

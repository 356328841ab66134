"""Synthetic videos with known physics, so that continuation has a right answer.

``synthetic:bouncing``: coloured circles and squares moving at constant velocity and bouncing
elastically off the walls, over a plain or softly shaded static background. Positions are
closed-form (a triangle wave per axis), so frame t of a scene is the same whether it is
rendered alone or as part of a longer clip: ``render(seed, n, start=k)`` is the ground-truth
continuation of ``render(seed, k)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from engine.frames import frames_to_tensor

__all__ = ["SYNTHETIC_DATASETS", "BouncingShapesDataset", "Scene", "Shape", "bouncing_clip"]


@dataclass(frozen=True)
class Shape:
    """One moving shape; positions in pixels (pixel centres at i + 0.5), velocity in px/frame."""

    kind: str  # "circle" | "square"
    radius: float  # circle radius, or half the square's side
    colour: tuple[float, float, float]  # RGB 0..255
    x0: float
    y0: float
    vx: float
    vy: float


@dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...]
    background: np.ndarray  # float32 [H, W, 3], static


def _fold(p: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Position of a point moving freely along p, reflected elastically between lo and hi."""
    span = hi - lo
    m = np.mod(p - lo, 2 * span)
    return lo + np.where(m <= span, m, 2 * span - m)


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    i, f = int(h * 6) % 6, h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return tuple(255.0 * c for c in rgb)  # type: ignore[return-value]


class BouncingShapesDataset(Dataset):
    """``num_items`` scenes of ``num_frames`` frames; item i is fixed by (seed, i).

    Item: float32 ``[num_frames, 3, size, size]`` in [-1, 1], like ``VideoClipDataset``.
    ``speed`` and ``radius`` are fractions of ``size`` (per frame / of the shape);
    ``background``: "soft" (gentle static shading) or "plain".
    """

    def __init__(
        self,
        num_frames: int,
        size: int = 64,
        num_items: int = 10_000,
        seed: int = 0,
        num_shapes: tuple[int, int] = (1, 3),
        speed: tuple[float, float] = (0.02, 0.06),
        radius: tuple[float, float] = (0.08, 0.16),
        background: str = "soft",
    ) -> None:
        if num_frames < 1 or size < 8 or num_items < 1:
            raise ValueError(
                f"need num_frames >= 1, size >= 8, num_items >= 1 (got {num_frames}, {size}, {num_items})"
            )
        if background not in ("soft", "plain"):
            raise ValueError(f"background must be 'soft' or 'plain' (got {background!r})")
        if not 1 <= num_shapes[0] <= num_shapes[1]:
            raise ValueError(f"num_shapes must be (min, max) with 1 <= min <= max (got {num_shapes})")
        self.num_frames, self.size, self.num_items, self.seed = num_frames, size, num_items, seed
        self.num_shapes, self.speed, self.radius, self.background = num_shapes, speed, radius, background

    def __len__(self) -> int:
        return self.num_items

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < self.num_items:
            raise IndexError(f"index {index} out of range for {self.num_items} items")
        return frames_to_tensor(self.clip(index))

    def scene_seed(self, index: int) -> int:
        """The render seed of item ``index`` (mixes the dataset seed and the index)."""
        return int(np.random.SeedSequence((self.seed, index)).generate_state(1)[0])

    def clip(self, index: int, num_frames: int | None = None, start: int = 0) -> np.ndarray:
        """Item ``index`` as uint8 ``[N, size, size, 3]``; ``start``/``num_frames`` reach past
        the item's clip to give its ground-truth continuation."""
        return self.render(self.scene_seed(index), num_frames or self.num_frames, start)

    def scene(self, seed: int) -> Scene:
        """The shapes and background that ``seed`` stands for."""
        rng = np.random.default_rng(seed)
        count = int(rng.integers(self.num_shapes[0], self.num_shapes[1] + 1))
        return Scene(tuple(self._random_shape(rng) for _ in range(count)), self._random_background(rng))

    def trajectory(self, seed: int, num_frames: int, start: int = 0) -> np.ndarray:
        """Shape centres ``[num_frames, num_shapes, 2]`` (x, y) for frames start..start+n-1."""
        t = np.arange(start, start + num_frames, dtype=np.float64)[:, None]
        shapes = self.scene(seed).shapes
        lo = np.array([s.radius for s in shapes])
        hi = self.size - lo
        x = _fold(np.array([s.x0 for s in shapes]) + t * np.array([s.vx for s in shapes]), lo, hi)
        y = _fold(np.array([s.y0 for s in shapes]) + t * np.array([s.vy for s in shapes]), lo, hi)
        return np.stack([x, y], axis=-1)

    def render(self, seed: int, num_frames: int, start: int = 0) -> np.ndarray:
        """Frames ``start .. start + num_frames - 1`` of scene ``seed`` as uint8 ``[N, size, size, 3]``."""
        if num_frames < 1 or start < 0:
            raise ValueError(f"need num_frames >= 1 and start >= 0 (got {num_frames}, {start})")
        scene = self.scene(seed)
        centres = self.trajectory(seed, num_frames, start)
        grid = np.arange(self.size, dtype=np.float32) + 0.5
        image = np.broadcast_to(scene.background, (num_frames, self.size, self.size, 3)).copy()
        for k, shape in enumerate(scene.shapes):  # later shapes are drawn over earlier ones
            dx = grid[None, None, :] - centres[:, k, 0, None, None].astype(np.float32)
            dy = grid[None, :, None] - centres[:, k, 1, None, None].astype(np.float32)
            dist = (
                np.sqrt(dx * dx + dy * dy) if shape.kind == "circle" else np.maximum(np.abs(dx), np.abs(dy))
            )
            # Anti-aliased edge: coverage falls from 1 to 0 over one pixel at the boundary.
            cover = np.clip(shape.radius - dist + 0.5, 0.0, 1.0)[..., None]
            image = image * (1 - cover) + np.asarray(shape.colour, dtype=np.float32) * cover
        return np.clip(np.round(image), 0, 255).astype(np.uint8)

    def _random_shape(self, rng: np.random.Generator) -> Shape:
        radius = float(rng.uniform(*self.radius)) * self.size
        speed = float(rng.uniform(*self.speed)) * self.size
        angle = float(rng.uniform(0, 2 * np.pi))
        # Saturated, bright colours: always distinct from the muted background.
        colour = _hsv_to_rgb(float(rng.random()), float(rng.uniform(0.6, 1.0)), float(rng.uniform(0.75, 1.0)))
        x0, y0 = rng.uniform(radius, self.size - radius, size=2)
        kind = "circle" if rng.random() < 0.5 else "square"
        return Shape(kind, radius, colour, float(x0), float(y0), speed * np.cos(angle), speed * np.sin(angle))

    def _random_background(self, rng: np.random.Generator) -> np.ndarray:
        base = np.asarray(
            _hsv_to_rgb(float(rng.random()), float(rng.uniform(0, 0.4)), float(rng.uniform(0.15, 0.45))),
            dtype=np.float32,
        )
        if self.background == "plain":
            return np.broadcast_to(base, (self.size, self.size, 3)).astype(np.float32)
        # Soft shading: a gentle gradient plus one low-frequency wave, static over time.
        yy, xx = np.mgrid[0 : self.size, 0 : self.size].astype(np.float32) / self.size
        gx, gy, phase = rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(0, 2 * np.pi)
        freq = rng.uniform(1, 3, size=2)
        shade = 20 * (gx * (xx - 0.5) + gy * (yy - 0.5)) + 8 * np.sin(
            2 * np.pi * (freq[0] * xx + freq[1] * yy) + phase
        )
        return (base + shade[..., None]).astype(np.float32)


def bouncing_clip(
    seed: int, num_frames: int, size: int = 64, start: int = 0, **scene_options: object
) -> np.ndarray:
    """A bouncing-shapes clip as uint8 ``[num_frames, size, size, 3]`` (for evaluation code):
    the same scene for the same ``seed``, so ``start`` gives its continuation."""
    dataset = BouncingShapesDataset(num_frames, size=size, num_items=1, **scene_options)  # type: ignore[arg-type]
    return dataset.render(seed, num_frames, start)


SYNTHETIC_DATASETS: dict[str, Callable[..., Dataset]] = {"bouncing": BouncingShapesDataset}

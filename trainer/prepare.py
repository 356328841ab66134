"""Shrink source videos to training size once, as lossless PNG frame folders.

Seeking into a 720p H.264 file and decoding a GOP for every 16-frame clip costs more CPU than a small
model's training step; decoding each source once and keeping the centre-cropped, box-filtered frames at
training size makes data loading nearly free. The folders are ordinary trainer sources (shot cuts are
found in them as in the original files), so `--set data=OUT` trains on them directly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from engine.atomic import atomic_path
from engine.errors import ArdiffError
from engine.video_io import fit_frames, iter_frames
from trainer.data import DEFAULT_CUT_THRESHOLD, colour_histogram, histogram_distance


def prepare_sources(
    sources: list[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    size: int,
    frame_stride: int = 1,
    split_shots: bool = False,
    min_frames: int = 1,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Write ``out_dir/<source stem>/00000.png ...`` (uint8 RGB, ``size x size``) for every source.

    ``split_shots``: one folder per shot instead, ``<stem>-shot<k>`` (cut where the colour histogram jumps,
    as the trainer's index does), keeping shots of at least ``min_frames`` frames: evaluation clips then
    never straddle a cut. A folder that already exists is kept (re-running resumes); each folder appears
    atomically, so an interrupted run never leaves a half-written folder that training would pick up.
    """
    if size < 8:
        raise ArdiffError(f"prepare: size must be >= 8, got {size}")
    if frame_stride < 1 or min_frames < 1:
        raise ArdiffError(f"prepare: frame stride and min frames must be >= 1, got {frame_stride}, {min_frames}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stems = [Path(s).stem for s in sources]
    if len(set(stems)) != len(stems):
        raise ArdiffError(f"prepare: two sources share a name ({', '.join(stems)}); rename one")
    written = []
    for source, stem in zip(sources, stems):
        if not split_shots and (out / stem).exists():
            log(f"{out / stem}: exists, kept")
            written.append(out / stem)
            continue
        frames = (fit_frames(np.asarray(f)[None], size)[0] for f in iter_frames(source, stride=frame_stride))
        shots = _shots(frames) if split_shots else [list(frames)]
        kept = 0
        for k, shot in enumerate(shots):
            target = out / (f"{stem}-shot{k:03d}" if split_shots else stem)
            if len(shot) < min_frames:
                continue
            kept += 1
            written.append(target)
            if not target.exists():
                _write_folder(target, shot)
        what = f"{kept} of {len(shots)} shots" if split_shots else f"{len(shots[0])} frames"
        log(f"{out}/{stem}: {what} at {size}x{size}")
    return written


def _shots(frames: Iterator[np.ndarray]) -> list[list[np.ndarray]]:
    """Group a stream of frames into shots at colour-histogram jumps (``DEFAULT_CUT_THRESHOLD``)."""
    shots: list[list[np.ndarray]] = []
    previous = None
    for frame in frames:
        hist = colour_histogram(frame)
        if previous is None or histogram_distance(previous, hist) > DEFAULT_CUT_THRESHOLD:
            shots.append([])
        shots[-1].append(frame)
        previous = hist
    return shots


def _write_folder(target: Path, frames: list[np.ndarray]) -> None:
    with atomic_path(target, directory=True) as tmp:
        for k, frame in enumerate(frames):
            Image.fromarray(frame).save(tmp / f"{k:05d}.png", compress_level=1)


def prepare_synthetic(
    spec: str,
    out_dir: str | os.PathLike[str],
    size: int,
    count: int,
    num_frames: int,
    seed: int,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Render ``count`` clips of a synthetic dataset (``synthetic:bouncing``) as PNG folders
    ``out_dir/<name>-<seed>-<i>/``: fixed evaluation sets that `ardiff eval` reads like real videos.

    Training uses the dataset seed of its config (0 by default), so a different ``seed`` gives scenes the
    model never trained on."""
    from trainer.synthetic import SYNTHETIC_DATASETS

    name = spec.removeprefix("synthetic:")
    if not spec.startswith("synthetic:") or name not in SYNTHETIC_DATASETS:
        raise ArdiffError(f"prepare: unknown synthetic dataset {spec!r}; known: "
                          + ", ".join(f"synthetic:{k}" for k in sorted(SYNTHETIC_DATASETS)))
    if count < 1 or num_frames < 1:
        raise ArdiffError(f"prepare: --count and --frames must be >= 1, got {count} and {num_frames}")
    dataset = SYNTHETIC_DATASETS[name](num_frames, size=size, num_items=count, seed=seed)
    out = Path(out_dir)
    written = []
    for i in range(count):
        target = out / f"{name}-{seed}-{i:03d}"
        if not target.exists():
            _write_folder(target, list(dataset.clip(i)))
        written.append(target)
    log(f"{out}: {count} {name} clips of {num_frames} frames at {size}x{size} (dataset seed {seed})")
    return written

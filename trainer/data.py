"""The trainer's datasets: clips from a folder of videos, single frames, and synthetic data.

Every dataset returns float32 ``[F, 3, size, size]`` in [-1, 1] (F = 1 for frame datasets), so
the VAE image stage and the diffusion stage share one loader. Real videos are indexed once:
each file is decoded at a small size to find shot cuts (a clip that straddles a cut teaches the
model that scenes teleport) and to record frame timestamps for seeking. The index is cached as
JSON per file, keyed by path, size, mtime and analysis parameters, so a second start is instant.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import av
import numpy as np
import platformdirs
import torch
from torch.utils.data import Dataset

from engine.errors import VideoError
from engine.frames import frames_to_tensor, tensor_to_frames
from engine.video_io import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    fit_frames,
    iter_frames,
    list_frame_files,
    natural_key,
    open_video_stream,
    probe_video,
    read_image,
)

__all__ = [
    "DEFAULT_CUT_THRESHOLD",
    "DatasetReport",
    "DatasetWarning",
    "ImageFrameDataset",
    "SourceIndex",
    "VideoClipDataset",
    "colour_histogram",
    "default_cache_dir",
    "discover_sources",
    "frames_to_tensor",
    "histogram_distance",
    "index_source",
    "make_dataset",
    "scan_sources",
    "tensor_to_frames",
]

# Half-L1 distance between 8x8x8 RGB histograms (0 = same colours, 1 = disjoint). On real
# footage in-shot motion stays below ~0.14 and hard cuts land at 0.27-0.9.
DEFAULT_CUT_THRESHOLD = 0.2
_HIST_BINS = 8
_ANALYSIS_SIDE = 64  # long side of the frames the cut detector looks at
_INDEX_VERSION = 1  # bump when the analysis changes, so stale cache entries are ignored
# A video is decoded whole and kept in memory (at training size) when it is this short:
# cheap to decode once, and every later item is a slice.
_SMALL_VIDEO_FRAMES = 1000


class DatasetWarning(UserWarning):
    """A file in the dataset folder was skipped (corrupt, empty, not a video, too short)."""


# --------------------------------------------------------------------------- tensors


# --------------------------------------------------------------------------- shot cuts


def colour_histogram(frame: np.ndarray, bins: int = _HIST_BINS) -> np.ndarray:
    """Normalised joint RGB histogram (``bins**3`` cells) of a uint8 ``[H, W, 3]`` frame."""
    q = frame.astype(np.int32) * bins >> 8
    cells = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    hist = np.bincount(cells.ravel(), minlength=bins**3).astype(np.float64)
    return hist / hist.sum()


def histogram_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Half the L1 distance of two normalised histograms: the fraction of colour mass that moved."""
    return float(0.5 * np.abs(a - b).sum())


@dataclass
class SourceIndex:
    """What indexing learnt about one video file or frame folder (the cached JSON)."""

    path: str
    num_frames: int
    fps: float
    width: int
    height: int
    distances: list[float]  # histogram distance between frame i and i + 1
    pts: list[int] | None = None  # presentation timestamp per frame, for seeking; None: decode forward
    is_folder: bool = False  # a folder of frame images rather than a video file

    def cuts(self, threshold: float) -> list[int]:
        """Frame indices where a new shot starts."""
        return [i + 1 for i, d in enumerate(self.distances) if d > threshold]

    def shots(self, threshold: float) -> list[tuple[int, int]]:
        """Half-open frame ranges of the shots between cuts."""
        bounds = [0, *self.cuts(threshold), self.num_frames]
        return list(itertools.pairwise(bounds))


# --------------------------------------------------------------------------- discovery


def discover_sources(root: str | os.PathLike[str]) -> list[Path]:
    """Every candidate under ``root``, sorted: files (any non-hidden file that is not a frame
    image, so that junk gets reported rather than silently ignored) and folders of frames."""
    root = Path(root)
    if root.is_file():
        return [root]
    sources: list[Path] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted((d for d in dirs if not d.startswith(".")), key=natural_key)
        folder_path = Path(folder)
        names = sorted((f for f in files if not f.startswith(".")), key=natural_key)
        if any(Path(n).suffix.lower() in IMAGE_EXTENSIONS for n in names):
            sources.append(folder_path)
        sources.extend(folder_path / n for n in names if Path(n).suffix.lower() not in IMAGE_EXTENSIONS)
    return sources


# --------------------------------------------------------------------------- indexing


def _signature(path: Path) -> dict[str, Any]:
    """What changes when the content changes: size and mtime (of every frame for a folder)."""
    if path.is_dir():
        stats = [f.stat() for f in list_frame_files(path)]
        return {
            "count": len(stats),
            "size": sum(s.st_size for s in stats),
            "mtime_ns": max((s.st_mtime_ns for s in stats), default=0),
        }
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _cache_key(path: Path) -> dict[str, Any]:
    return {
        "version": _INDEX_VERSION,
        "path": str(path.resolve()),
        "bins": _HIST_BINS,
        "side": _ANALYSIS_SIDE,
        **_signature(path),
    }


def _analysis_size(width: int, height: int) -> tuple[int, int]:
    scale = min(1.0, _ANALYSIS_SIDE / max(width, height, 1))
    return max(2, round(width * scale)), max(2, round(height * scale))


def _distances(hists: list[np.ndarray]) -> list[float]:
    return [round(histogram_distance(a, b), 5) for a, b in itertools.pairwise(hists)]


def _analyze_with_pyav(path: Path) -> SourceIndex:
    hists, pts = [], []
    with open_video_stream(path) as (container, stream):
        width, height = stream.codec_context.width, stream.codec_context.height
        small_w, small_h = _analysis_size(width, height)
        fps = float(stream.average_rate or stream.guessed_rate or 24.0)
        try:
            for frame in container.decode(stream):
                pts.append(frame.pts)
                small = frame.to_ndarray(
                    format="rgb24", width=small_w, height=small_h, interpolation="FAST_BILINEAR"
                )
                hists.append(colour_histogram(small))
        except av.error.FFmpegError as err:
            raise VideoError(f"{path}: corrupt video, decoding failed after frame {len(pts)}") from err
    # Seeking by timestamp is only safe when every frame has a distinct, increasing one.
    seekable = all(p is not None for p in pts) and all(b > a for a, b in itertools.pairwise(pts))
    return SourceIndex(
        str(path), len(hists), fps, width, height, _distances(hists), pts if seekable else None
    )


def _analyze_generic(path: Path) -> SourceIndex:
    """Frame folders and files only OpenCV can read: decode in order, no timestamps."""
    info = probe_video(path)
    hists = []
    for frame in iter_frames(path):
        step = max(1, max(frame.shape[:2]) // _ANALYSIS_SIDE)
        hists.append(colour_histogram(frame[::step, ::step]))
    return SourceIndex(
        str(path), len(hists), info.fps, info.width, info.height, _distances(hists), is_folder=path.is_dir()
    )


def _analyze_source(path: Path) -> SourceIndex:
    """Decode every frame once, small: histogram distances for cuts, timestamps for seeking."""
    if path.is_dir():
        return _analyze_generic(path)
    try:
        return _analyze_with_pyav(path)
    except VideoError:
        return _analyze_generic(path)  # OpenCV fallback; raises VideoError if it fails too


def _cache_file(cache_dir: Path, key: dict[str, Any]) -> Path:
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return cache_dir / f"{digest}.json"


def _load_cached(file: Path, key: dict[str, Any]) -> SourceIndex | None:
    try:
        data = json.loads(file.read_text())
        return SourceIndex(**data["index"]) if data.get("key") == key else None
    except (OSError, ValueError, TypeError, KeyError):
        return None  # missing or damaged: re-analyse


def _store_cached(file: Path, key: dict[str, Any], index: SourceIndex) -> None:
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps({"key": key, "index": asdict(index)}))
        os.replace(tmp, file)  # atomic: a concurrent reader never sees half a file
    except OSError as err:
        warnings.warn(f"cannot cache the video index in {file.parent}: {err}", DatasetWarning, stacklevel=2)


def default_cache_dir() -> Path:
    """Where video indexes are cached unless a dataset is given ``cache_dir``."""
    return Path(platformdirs.user_cache_dir("ardiff")) / "video-index"


def index_source(
    path: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None
) -> tuple[SourceIndex, bool]:
    """The index of one video or frame folder and whether it came from the cache.
    Raises ``VideoError`` for anything unreadable."""
    path = Path(path)
    key = _cache_key(path)
    file = _cache_file(Path(cache_dir) if cache_dir else default_cache_dir(), key)
    cached = _load_cached(file, key)
    if cached is not None:
        # The entry is keyed by the resolved path; keep the path as the caller spelt it.
        return replace(cached, path=str(path)), True
    index = _analyze_source(path)
    _store_cached(file, key, index)
    return index, False


# --------------------------------------------------------------------------- report


@dataclass
class DatasetReport:
    """What a dataset found under its root; ``str()`` is a one-line summary for logs."""

    root: str
    files: int = 0  # candidates found: video files, frame folders, other files
    used: int = 0  # sources that gave at least one item
    items: int = 0  # clips (or frames) in the dataset
    frames: int = 0  # frames in the used sources
    cuts: int = 0  # shot cuts found in the used sources
    from_cache: int = 0
    analyzed: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count

    @property
    def clips(self) -> int:
        return self.items

    def skip(self, path: Path, reason: str, detail: str) -> None:
        """Count one skipped source and warn about it, once."""
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        warnings.warn(f"skipping {path}: {detail}", DatasetWarning, stacklevel=2)

    def __str__(self) -> str:
        skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items())) or "none"
        return (
            f"{self.items} items from {self.used}/{self.files} sources under {self.root} "
            f"({self.frames} frames, {self.cuts} cuts; skipped: {skipped})"
        )


def _skip_reason(path: Path) -> str:
    if path.is_file() and path.stat().st_size == 0:
        return "empty"
    if path.is_dir() or path.suffix.lower() in VIDEO_EXTENSIONS:
        return "corrupt"
    return "not_video"


def scan_sources(
    root: Path, cache_dir: str | os.PathLike[str] | None, report: DatasetReport
) -> list[SourceIndex]:
    """Index every source under ``root``; unreadable ones are skipped, warned about and counted."""
    if not root.exists():
        raise ValueError(f"{root}: dataset path does not exist")
    indexes = []
    for path in discover_sources(root):
        report.files += 1
        if path.is_symlink() and not path.exists():  # a loop or a dangling link: nothing to read
            report.skip(path, "broken_link", "a symbolic link that leads nowhere (dangling, or a loop)")
            continue
        try:
            index, cached = index_source(path, cache_dir)
        except VideoError as err:
            report.skip(path, _skip_reason(path), str(err).removeprefix(f"{path}: "))
            continue
        report.from_cache += cached
        report.analyzed += not cached
        if index.num_frames == 0:
            report.skip(path, "empty", "no frames")
            continue
        indexes.append(index)
    return indexes


# --------------------------------------------------------------------------- frame reading


class _FrameReader:
    """Reads frames of indexed sources at training size. Holds no open files, so it pickles
    into DataLoader workers; each worker rebuilds its own small in-memory cache."""

    def __init__(self, size: int, memory_cache_mb: float) -> None:
        self.size = size
        self.budget = int(memory_cache_mb * 2**20)
        self._memory: dict[str, np.ndarray] = {}
        self._folders: dict[str, list[Path]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_memory": {}, "_folders": {}}

    def read(self, source: SourceIndex, start: int, stride: int, count: int) -> np.ndarray:
        """uint8 ``[count, size, size, 3]``: frames ``start, start + stride, ...`` of ``source``."""
        whole = self._whole(source)
        if whole is not None:
            return whole[start : start + (count - 1) * stride + 1 : stride]
        if source.is_folder:
            files = self._folder_files(source)
            return self._fit_stream(
                source, (read_image(files[start + k * stride]) for k in range(count)), count
            )
        if source.pts is not None:
            frames = self._seek_read(source, start, stride, count)
            if frames is not None:
                return frames
        return self._fit_stream(
            source, iter_frames(source.path, max_frames=count, start=start, stride=stride), count
        )

    def _folder_files(self, source: SourceIndex) -> list[Path]:
        if source.path not in self._folders:
            self._folders[source.path] = list_frame_files(source.path)
        return self._folders[source.path]

    def _fit_stream(self, source: SourceIndex, frames: Iterator[np.ndarray], count: int) -> np.ndarray:
        """Fit frames one at a time as they are decoded: never a full-resolution clip in memory."""
        out = np.empty((count, self.size, self.size, 3), dtype=np.uint8)
        n = 0
        for n, frame in enumerate(frames, 1):
            out[n - 1] = fit_frames(frame[None], self.size)[0]
        if n != count:  # the file changed or decodes differently since it was indexed
            raise VideoError(
                f"{source.path}: expected {count} frames, decoded {n}; delete its index to rebuild it"
            )
        return out

    def _whole(self, source: SourceIndex) -> np.ndarray | None:
        """The whole source at training size if it is small enough to keep (decoded once)."""
        if source.path in self._memory:
            return self._memory[source.path]
        nbytes = source.num_frames * self.size * self.size * 3
        used = sum(a.nbytes for a in self._memory.values())
        if source.num_frames > _SMALL_VIDEO_FRAMES or used + nbytes > self.budget:
            return None
        frames = self._fit_stream(source, iter_frames(source.path), source.num_frames)
        self._memory[source.path] = frames
        return frames

    def _seek_read(self, source: SourceIndex, start: int, stride: int, count: int) -> np.ndarray | None:
        """Seek to the keyframe before ``start`` and decode forward; None if the container
        did not land where the index says (then the caller decodes from the beginning)."""
        assert source.pts is not None
        wanted = {source.pts[start + k * stride]: k for k in range(count)}
        last = source.pts[start + (count - 1) * stride]
        out = np.empty((count, self.size, self.size, 3), dtype=np.uint8)
        found = 0
        with open_video_stream(source.path) as (container, stream):
            try:
                container.seek(source.pts[start], stream=stream, backward=True, any_frame=False)
                for frame in container.decode(stream):
                    k = wanted.get(frame.pts)
                    if k is not None:
                        out[k] = fit_frames(frame.to_ndarray(format="rgb24")[None], self.size)[0]
                        found += 1
                    if frame.pts is None or frame.pts >= last:
                        break
            except av.error.FFmpegError:
                return None  # some containers seek badly; decoding from the start still works
        return out if found == count else None


# --------------------------------------------------------------------------- datasets


class _IndexedVideoDataset(Dataset):
    """Shared by the clip and frame datasets: index, reader, deterministic flips, epochs."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        size: int,
        flip: bool,
        cache_dir: str | os.PathLike[str] | None,
        seed: int,
        memory_cache_mb: float,
    ) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1 (got {size})")
        self.root = Path(root)
        self.size, self.flip, self.seed, self.epoch = size, flip, seed, 0
        self.report = DatasetReport(root=str(self.root))
        self.sources = scan_sources(self.root, cache_dir, self.report)
        self._reader = _FrameReader(size, memory_cache_mb)
        self._items = np.zeros((0, 2), dtype=np.int64)  # (source id, first frame) per item

    def _set_items(self, items: list[tuple[int, int]], what: str) -> None:
        if not items:
            raise ValueError(f"{self.root}: no usable {what}; found {self.report}")
        self._items = np.asarray(items, dtype=np.int64)
        self.report.items = len(items)
        used = sorted(set(self._items[:, 0].tolist()))
        self.report.used = len(used)
        self.report.frames = sum(self.sources[i].num_frames for i in used)

    def set_epoch(self, epoch: int) -> None:
        """Change the flips for a new epoch (like ``DistributedSampler.set_epoch``)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self._items)

    def _load(self, index: int, count: int, stride: int) -> torch.Tensor:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        source_id, start = (int(v) for v in self._items[index])
        frames = self._reader.read(self.sources[source_id], start, stride, count)
        # Seeded by (seed, index, epoch): the same item flips the same way in any worker.
        if self.flip and np.random.default_rng((self.seed, index, self.epoch)).random() < 0.5:
            frames = frames[:, :, ::-1]
        return frames_to_tensor(frames)

    def item_location(self, index: int) -> tuple[str, int]:
        """(source path, first frame index) of item ``index``: for debugging and tests."""
        source_id, start = (int(v) for v in self._items[index])
        return self.sources[source_id].path, start


class VideoClipDataset(_IndexedVideoDataset):
    """Clips of ``num_frames`` frames (every ``frame_stride``-th frame) from a folder of videos
    and frame folders, searched recursively, or from a single file. No clip straddles a shot
    cut. Item: float32 ``[num_frames, 3, size, size]`` in [-1, 1], centre-cropped.

    ``clip_step``: source frames between the starts of consecutive clips of one shot (default
    half a clip: overlapping clips give more variety without near-duplicates).
    ``cut_threshold``: histogram distance above which consecutive frames count as a cut.
    ``cache_dir``: where the index is cached (default: the user cache dir).
    ``memory_cache_mb``: per-process budget for keeping short videos decoded in memory.
    Skipped files are warned about once each (``DatasetWarning``) and counted in ``report``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        num_frames: int,
        frame_stride: int = 1,
        size: int = 64,
        flip: bool = True,
        cut_threshold: float = DEFAULT_CUT_THRESHOLD,
        cache_dir: str | os.PathLike[str] | None = None,
        seed: int = 0,
        clip_step: int | None = None,
        memory_cache_mb: float = 256,
    ) -> None:
        if num_frames < 1 or frame_stride < 1:
            raise ValueError(f"num_frames and frame_stride must be >= 1 (got {num_frames}, {frame_stride})")
        super().__init__(root, size, flip, cache_dir, seed, memory_cache_mb)
        self.num_frames, self.frame_stride, self.cut_threshold = num_frames, frame_stride, cut_threshold
        span = (num_frames - 1) * frame_stride + 1
        step = clip_step or max(1, span // 2)
        items = []
        for source_id, source in enumerate(self.sources):
            starts = [s for a, b in source.shots(cut_threshold) for s in range(a, b - span + 1, step)]
            if not starts:
                longest = max(b - a for a, b in source.shots(cut_threshold))
                self.report.skip(
                    Path(source.path), "too_short", f"longest shot has {longest} frames, a clip needs {span}"
                )
                continue
            self.report.cuts += len(source.cuts(cut_threshold))
            items.extend((source_id, s) for s in starts)
        self._set_items(items, f"clips of {num_frames} frames")

    def __getitem__(self, index: int) -> torch.Tensor:
        return self._load(index, self.num_frames, self.frame_stride)


class ImageFrameDataset(_IndexedVideoDataset):
    """Single frames for the VAE image stage, from the same sources and index as
    ``VideoClipDataset``: every ``frame_every``-th frame (neighbours are near-duplicates).
    Item: float32 ``[1, 3, size, size]`` in [-1, 1], the clip format with F = 1."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        size: int = 64,
        flip: bool = True,
        frame_every: int = 8,
        cut_threshold: float = DEFAULT_CUT_THRESHOLD,
        cache_dir: str | os.PathLike[str] | None = None,
        seed: int = 0,
        memory_cache_mb: float = 256,
    ) -> None:
        if frame_every < 1:
            raise ValueError(f"frame_every must be >= 1 (got {frame_every})")
        super().__init__(root, size, flip, cache_dir, seed, memory_cache_mb)
        self.frame_every = frame_every
        # Cuts do not matter for single frames; counted only so both reports read the same.
        self.report.cuts = sum(len(source.cuts(cut_threshold)) for source in self.sources)
        items = [
            (i, f) for i, source in enumerate(self.sources) for f in range(0, source.num_frames, frame_every)
        ]
        self._set_items(items, "frames")

    def __getitem__(self, index: int) -> torch.Tensor:
        return self._load(index, 1, 1)


# --------------------------------------------------------------------------- factory


def make_dataset(
    spec: str,
    num_frames: int,
    size: int = 64,
    *,
    seed: int = 0,
    flip: bool = True,
    num_items: int = 10_000,
    cache_dir: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> Dataset:
    """A dataset from a spec string: ``"synthetic:bouncing"`` or a path (file or folder).

    With ``num_frames == 1`` a path gives an ``ImageFrameDataset`` (the VAE image stage);
    ``num_items`` sizes synthetic datasets; other ``kwargs`` go to the dataset class.
    """
    if spec.startswith("synthetic:"):
        from trainer.synthetic import SYNTHETIC_DATASETS  # only synthetic specs need the generators

        name = spec.removeprefix("synthetic:")
        if name not in SYNTHETIC_DATASETS:
            raise ValueError(
                f"unknown synthetic dataset {name!r}; known: {', '.join(sorted(SYNTHETIC_DATASETS))}"
            )
        return SYNTHETIC_DATASETS[name](num_frames, size=size, num_items=num_items, seed=seed, **kwargs)
    if num_frames == 1:
        return ImageFrameDataset(spec, size=size, flip=flip, cache_dir=cache_dir, seed=seed, **kwargs)
    return VideoClipDataset(spec, num_frames, size=size, flip=flip, cache_dir=cache_dir, seed=seed, **kwargs)

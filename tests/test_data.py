"""trainer.data and trainer.synthetic: cut-aware clip index, its cache, skipped files, item
format, seeking, and the bouncing-shapes ground truth. Every video is generated in tmp_path."""

from __future__ import annotations

import copy
import os
import pickle
import warnings
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from engine.video_io import write_video
from trainer import data as data_mod
from trainer.data import (
    DatasetWarning,
    ImageFrameDataset,
    VideoClipDataset,
    frames_to_tensor,
    make_dataset,
    tensor_to_frames,
)
from trainer.synthetic import BouncingShapesDataset, bouncing_clip

SHOT = 12  # frames per synthetic shot


def shot(kind: int, n: int = SHOT, h: int = 48, w: int = 64) -> np.ndarray:
    """One "shot": a slowly moving pattern whose colours differ completely between kinds."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = []
    for t in range(n):
        wave = 0.5 + 0.5 * np.sin((xx + yy + 2 * t) / 7)
        palette = [(200, 40, 30), (30, 60, 210), (40, 190, 60)][kind]
        frames.append(np.stack([c * (0.6 + 0.4 * wave) for c in palette], axis=-1))
    return np.asarray(frames, dtype=np.uint8)


def write_mp4(path: Path, frames: np.ndarray, gop: int = 4, fps: int = 12) -> Path:
    """H.264 with a keyframe every ``gop`` frames (and B-frames), so seeking really seeks."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"g": str(gop), "keyint_min": str(gop)})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


@pytest.fixture
def three_shots(tmp_path: Path) -> Path:
    return write_mp4(tmp_path / "three_shots.mp4", np.concatenate([shot(0), shot(1), shot(2)]))


def quiet(factory, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)
        return factory(*args, **kwargs)


# --------------------------------------------------------------------------- cuts and clips


def test_cuts_are_found_and_no_clip_straddles_them(three_shots: Path, tmp_path: Path) -> None:
    ds = VideoClipDataset(three_shots, num_frames=6, size=32, clip_step=1, cache_dir=tmp_path / "cache")
    assert ds.sources[0].cuts(ds.cut_threshold) == [SHOT, 2 * SHOT]
    assert ds.report.cuts == 2 and ds.report.files == 1 and ds.report.skipped == {}
    starts = [ds.item_location(i)[1] for i in range(len(ds))]
    assert all(s // SHOT == (s + 5) // SHOT for s in starts)
    assert len(ds) == ds.report.clips == 3 * (SHOT - 6 + 1)  # every clip that fits in a shot


def test_frame_stride_and_default_clip_step(three_shots: Path, tmp_path: Path) -> None:
    ds = VideoClipDataset(three_shots, num_frames=4, frame_stride=3, size=16, cache_dir=tmp_path / "cache")
    # A clip spans (4 - 1) * 3 + 1 = 10 frames and starts every 5 by default; in a 12-frame
    # shot only the start at 0 fits (5 + 10 > 12).
    assert [ds.item_location(i)[1] for i in range(len(ds))] == [0, 12, 24]
    assert ds[0].shape == (4, 3, 16, 16)


def test_index_cache_is_reused_and_invalidated(
    three_shots: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    calls = []
    real = data_mod._analyze_source
    monkeypatch.setattr(data_mod, "_analyze_source", lambda p: calls.append(p) or real(p))
    first = VideoClipDataset(three_shots, 6, size=16, cache_dir=cache)
    assert len(calls) == 1 and first.report.analyzed == 1 and len(list(cache.glob("*.json"))) == 1
    second = VideoClipDataset(three_shots, 6, size=16, cache_dir=cache, cut_threshold=0.3)
    assert len(calls) == 1 and second.report.from_cache == 1  # other clip settings reuse the index
    os.utime(three_shots, ns=(1, 1))  # the file "changed": the old entry no longer matches
    VideoClipDataset(three_shots, 6, size=16, cache_dir=cache)
    assert len(calls) == 2


def test_damaged_cache_entry_is_rebuilt(three_shots: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    VideoClipDataset(three_shots, 6, size=16, cache_dir=cache)
    for entry in cache.glob("*.json"):
        entry.write_text("{ not json")
    ds = VideoClipDataset(three_shots, 6, size=16, cache_dir=cache)
    assert ds.report.analyzed == 1 and len(ds) > 0


# --------------------------------------------------------------------------- skipped files


def test_bad_files_are_skipped_with_one_warning_each(tmp_path: Path) -> None:
    root = tmp_path / "videos"
    (root / "nested" / "frames").mkdir(parents=True)
    good = write_mp4(root / "good.mp4", shot(0, 20))
    write_video(root / "nested" / "frames", shot(1, 10))  # a frame folder, found recursively
    (root / "corrupt.mp4").write_bytes(good.read_bytes()[:2048])
    (root / "empty.mp4").touch()
    (root / "notes.txt").write_text("shot list, not a video\n")
    write_mp4(root / "nested" / "short.mp4", shot(2, 3))
    with pytest.warns(DatasetWarning) as record:
        ds = VideoClipDataset(root, num_frames=8, size=16, cache_dir=tmp_path / "cache")
    messages = [str(w.message) for w in record if issubclass(w.category, DatasetWarning)]
    assert len(messages) == 4
    for name in ("corrupt.mp4", "empty.mp4", "notes.txt", "short.mp4"):
        assert sum(name in m for m in messages) == 1, name
    assert ds.report.skipped == {"corrupt": 1, "empty": 1, "not_video": 1, "too_short": 1}
    assert (ds.report.files, ds.report.used, ds.report.frames) == (6, 2, 30)
    assert {Path(ds.item_location(i)[0]).name for i in range(len(ds))} == {"good.mp4", "frames"}
    assert "skipped" in str(ds.report)


def test_symlink_loops_and_dangling_links_are_skipped_with_one_warning_each(tmp_path: Path) -> None:
    root = tmp_path / "videos"
    root.mkdir()
    write_mp4(root / "good.mp4", shot(0, 20))
    (root / "loop.mp4").symlink_to("loop.mp4")  # resolves to itself: ELOOP on any open
    (root / "a").symlink_to("b")
    (root / "b").symlink_to("a")  # a two-link cycle
    (root / "gone.mp4").symlink_to(tmp_path / "deleted.mp4")
    with pytest.warns(DatasetWarning) as record:
        ds = VideoClipDataset(root, num_frames=8, size=16, cache_dir=tmp_path / "cache")
    messages = [str(w.message) for w in record if issubclass(w.category, DatasetWarning)]
    for name in ("loop.mp4", "a:", "b:", "gone.mp4"):
        assert sum(name in m for m in messages) == 1, (name, messages)
    assert ds.report.skipped == {"broken_link": 4} and ds.report.used == 1
    assert all("\n" not in m for m in messages)


def test_empty_dataset_names_the_root(tmp_path: Path) -> None:
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "readme.md").write_text("nothing here")
    with pytest.raises(ValueError, match="junk"):
        quiet(VideoClipDataset, tmp_path / "junk", 4, cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="nowhere"):
        VideoClipDataset(tmp_path / "nowhere", 4, cache_dir=tmp_path / "cache")


# --------------------------------------------------------------------------- items


def test_items_are_float_clips_in_range_and_flips_are_deterministic(
    three_shots: Path, tmp_path: Path
) -> None:
    kwargs = {"num_frames": 6, "size": 32, "clip_step": 1, "cache_dir": tmp_path / "cache"}
    plain = VideoClipDataset(three_shots, flip=False, **kwargs)
    a, b = VideoClipDataset(three_shots, seed=3, **kwargs), VideoClipDataset(three_shots, seed=3, **kwargs)
    item = a[0]
    assert item.shape == (6, 3, 32, 32) and item.dtype == torch.float32
    assert -1.0 <= item.min() and item.max() <= 1.0
    flipped = []
    for i in range(len(a)):
        assert torch.equal(a[i], b[i])  # same (seed, index, epoch): same flip
        if not torch.equal(a[i], plain[i]):
            assert torch.equal(a[i], plain[i].flip(-1))  # a flip is the only difference
            flipped.append(i)
    assert 0 < len(flipped) < len(a)
    a.set_epoch(1)
    assert any(not torch.equal(a[i], b[i]) for i in range(len(a)))


def test_seeking_reads_the_same_frames_as_decoding_whole(
    three_shots: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kwargs = {
        "num_frames": 5,
        "frame_stride": 2,
        "size": 24,
        "flip": False,
        "clip_step": 1,
        "cache_dir": tmp_path / "cache",
    }
    in_memory = VideoClipDataset(three_shots, **kwargs)
    seeking = VideoClipDataset(three_shots, memory_cache_mb=0, **kwargs)
    assert seeking.sources[0].pts is not None
    seeks = []
    real = data_mod._FrameReader._seek_read
    monkeypatch.setattr(data_mod._FrameReader, "_seek_read", lambda *a: seeks.append(a[2]) or real(*a))
    for i in range(len(in_memory)):
        assert torch.equal(in_memory[i], seeking[i]), i
    assert len(seeks) == len(seeking)  # every item came from a seek, none from a full decode
    assert list(in_memory._reader._memory) == [str(three_shots)]  # short video: decoded once, kept


def test_item_matches_the_source_frames(tmp_path: Path) -> None:
    frames = np.concatenate([shot(0, 10), shot(1, 10)])
    folder = write_video(tmp_path / "frames", frames)  # PNG: exact pixels
    ds = VideoClipDataset(folder, 4, size=48, flip=False, clip_step=1, cache_dir=tmp_path / "cache")
    path, start = ds.item_location(3)
    assert Path(path) == folder
    expected = frames[start : start + 4, :, 8:56]  # centre 48x48 crop, no resize needed
    np.testing.assert_array_equal(tensor_to_frames(ds[3]), expected)


def test_dataset_pickles_for_dataloader_workers(three_shots: Path, tmp_path: Path) -> None:
    ds = VideoClipDataset(three_shots, 6, size=16, cache_dir=tmp_path / "cache")
    ds[0]  # fills the in-memory cache, which must not travel to workers
    assert pickle.dumps(ds)  # workers receive it pickled (spawn) or forked
    clone = copy.deepcopy(ds)  # the same __getstate__ path, without loading pickled bytes
    assert clone._reader._memory == {}
    assert torch.equal(clone[1], ds[1])
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2)))
    assert batch.shape == (3, 6, 3, 16, 16)
    assert torch.equal(batch[2], ds[2])


def test_image_frame_dataset(three_shots: Path, tmp_path: Path) -> None:
    ds = ImageFrameDataset(three_shots, size=16, frame_every=5, cache_dir=tmp_path / "cache")
    assert len(ds) == len(range(0, 3 * SHOT, 5))
    assert [ds.item_location(i)[1] for i in range(3)] == [0, 5, 10]
    assert ds[0].shape == (1, 3, 16, 16)


def test_tensor_conversion_round_trips() -> None:
    frames = np.random.default_rng(0).integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
    tensor = frames_to_tensor(frames)
    assert tensor.shape == (3, 3, 5, 7) and tensor.min() >= -1 and tensor.max() <= 1
    np.testing.assert_array_equal(tensor_to_frames(tensor), frames)


# --------------------------------------------------------------------------- make_dataset


def test_make_dataset_dispatches(three_shots: Path, tmp_path: Path) -> None:
    synthetic = make_dataset("synthetic:bouncing", 8, 32, num_items=5)
    assert isinstance(synthetic, BouncingShapesDataset) and len(synthetic) == 5
    assert synthetic[0].shape == (8, 3, 32, 32)
    assert isinstance(make_dataset(str(three_shots), 6, 16, cache_dir=tmp_path / "c"), VideoClipDataset)
    frames = make_dataset(str(three_shots), 1, 16, cache_dir=tmp_path / "c", frame_every=4)
    assert isinstance(frames, ImageFrameDataset) and frames[0].shape == (1, 3, 16, 16)
    with pytest.raises(ValueError, match="bouncing"):
        make_dataset("synthetic:marbles", 8, 32)


# --------------------------------------------------------------------------- bouncing shapes


def test_bouncing_items_are_deterministic_and_seeds_differ() -> None:
    ds = BouncingShapesDataset(8, size=32, num_items=4, seed=0)
    again = BouncingShapesDataset(8, size=32, num_items=4, seed=0)
    other = BouncingShapesDataset(8, size=32, num_items=4, seed=1)
    item = ds[2]
    assert item.shape == (8, 3, 32, 32) and item.dtype == torch.float32
    assert -1 <= item.min() and item.max() <= 1
    assert torch.equal(item, again[2])
    assert not torch.equal(ds[0], ds[1])
    assert not torch.equal(item, other[2])
    assert ds.render(5, 4).tolist() != ds.render(6, 4).tolist()
    with pytest.raises(IndexError):
        ds[4]


def test_bouncing_render_continues_a_clip_exactly() -> None:
    ds = BouncingShapesDataset(8, size=32, num_items=4, seed=0)
    long = ds.clip(1, num_frames=40)
    np.testing.assert_array_equal(long[:8], tensor_to_frames(ds[1]))
    np.testing.assert_array_equal(ds.clip(1, num_frames=32, start=8), long[8:])
    seed = ds.scene_seed(1)
    np.testing.assert_array_equal(ds.render(seed, 5, start=30), long[30:35])
    np.testing.assert_array_equal(bouncing_clip(seed, 40, size=32), long)


def test_bouncing_shapes_stay_inside_and_bounce() -> None:
    ds = BouncingShapesDataset(
        8, size=32, num_items=1, num_shapes=(1, 1), background="plain", speed=(0.08, 0.1)
    )
    for seed in range(5):
        scene = ds.scene(seed)
        shape = scene.shapes[0]
        centres = ds.trajectory(seed, 200)[:, 0]
        assert centres.min() >= shape.radius - 1e-9 and centres.max() <= 32 - shape.radius + 1e-9
        # Elastic bounces: per-axis speed never grows, and the direction does reverse.
        velocity = np.diff(centres, axis=0)
        assert (np.abs(velocity) <= np.abs([shape.vx, shape.vy]) + 1e-9).all()
        assert (np.sign(velocity) != np.sign(velocity[0])).any(axis=0).all()
        # Never clipped by the frame edge: the drawn area is the same in every frame.
        frames = ds.render(seed, 60).astype(np.float64)
        background, colour = scene.background[0, 0].astype(np.float64), np.asarray(shape.colour)
        coverage = np.abs(frames - background).sum(-1).sum((1, 2)) / np.abs(colour - background).sum()
        assert coverage.max() - coverage.min() < 0.02 * coverage.mean()


def test_bouncing_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        BouncingShapesDataset(0)
    with pytest.raises(ValueError):
        BouncingShapesDataset(8, background="stars")

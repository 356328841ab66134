"""`ardiff-train prepare`: sources shrunk to training size once, shot splitting, synthetic evaluation sets."""

from __future__ import annotations

import numpy as np
import pytest

from engine.video_io import fit_frames, read_video, write_video
from trainer.cli import main
from trainer.data import VideoClipDataset
from trainer.synthetic import BouncingShapesDataset


def _two_shots(n1=10, n2=7, size=40):
    """A clip whose colours jump once: frames 0..n1-1 reddish, then bluish (a hard cut)."""
    rng = np.random.default_rng(0)
    a = np.zeros((n1, size, size + 8, 3), np.uint8)
    a[..., 0] = 200
    b = np.zeros((n2, size, size + 8, 3), np.uint8)
    b[..., 2] = 200
    video = np.concatenate([a, b])
    return (video + rng.integers(0, 20, video.shape)).astype(np.uint8)


def test_prepare_writes_fitted_png_folders_that_train_like_the_source(tmp_path, capsys):
    clip = _two_shots()
    write_video(tmp_path / "src" / "film", clip)  # a PNG folder source: exact pixels
    assert main(["prepare", str(tmp_path / "src" / "film"), "-o", str(tmp_path / "out"), "--size", "16"]) == 0
    out = read_video(tmp_path / "out" / "film")
    np.testing.assert_array_equal(out, fit_frames(clip, 16))
    # The prepared folder is an ordinary trainer source: the cut is found again, no clip straddles it.
    dataset = VideoClipDataset(tmp_path / "out", num_frames=4, size=16, flip=False, cache_dir=tmp_path / "c")
    assert dataset.report.cuts == 1
    starts = [dataset.item_location(i)[1] for i in range(len(dataset))]
    assert starts and all(start + 4 <= 10 or start >= 10 for start in starts)
    # Re-running keeps what is there (resumable) and says so.
    (tmp_path / "out" / "film" / "00000.png").write_bytes(b"kept")
    assert main(["prepare", str(tmp_path / "src" / "film"), "-o", str(tmp_path / "out"), "--size", "16"]) == 0
    assert (tmp_path / "out" / "film" / "00000.png").read_bytes() == b"kept"
    assert "exists, kept" in capsys.readouterr().err


def test_prepare_split_shots_drops_short_shots_and_leaves_no_temp_folders(tmp_path, capsys):
    write_video(tmp_path / "film.mp4", _two_shots(), fps=10)
    assert main(["prepare", str(tmp_path / "film.mp4"), "-o", str(tmp_path / "out"), "--size", "16",
                 "--split-shots", "--min-frames", "8"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["film-shot000"]  # the 7-frame shot is dropped
    assert len(read_video(tmp_path / "out" / "film-shot000")) == 10
    assert "1 of 2 shots" in capsys.readouterr().err


def test_prepare_synthetic_renders_the_datasets_scenes(tmp_path):
    assert main(["prepare", "synthetic:bouncing", "-o", str(tmp_path), "--size", "24", "--count", "3",
                 "--frames", "5", "--seed", "7"]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["bouncing-7-000", "bouncing-7-001", "bouncing-7-002"]
    expected = BouncingShapesDataset(5, size=24, num_items=3, seed=7).clip(2)
    np.testing.assert_array_equal(read_video(tmp_path / names[2]), expected)


@pytest.mark.parametrize("argv, message", [
    (["synthetic:nope"], "unknown synthetic dataset"),
    (["MISSING.mp4"], "no such file"),
    (["a/x.mp4", "b/x.mp4"], "share a name"),
    (["synthetic:bouncing", "--size", "4"], ""),
])
def test_prepare_errors_are_one_line_exit_2(tmp_path, capsys, argv, message):
    if argv[0] == "a/x.mp4":
        for d in ("a", "b"):
            write_video(tmp_path / d / "x.mp4", _two_shots(4, 4), fps=5)
        argv = [str(tmp_path / a) for a in argv]
    code = main(["prepare", *argv, "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "error" in err
    assert message.lower() in err.lower()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())

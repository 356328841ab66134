"""engine.video_io: round trips, conversions, frame selection, errors and atomic writes.
Every video here is generated in tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from engine import video_io
from engine import visualize
from engine.errors import VideoError
from engine.video_io import (
    FitReport,
    describe_fit,
    fit_frames,
    iter_frames,
    probe_video,
    read_video,
    write_video,
)
from engine.visualize import contact_sheet


def indexed_frames(n: int, h: int = 24, w: int = 32) -> np.ndarray:
    """Flat frames whose grey level encodes their index (20 + 10 k), readable after lossy coding."""
    return np.stack([np.full((h, w, 3), 20 + 10 * k, dtype=np.uint8) for k in range(n)])


def frame_indices(frames: np.ndarray) -> list[int]:
    return [round((float(f.mean()) - 20) / 10) for f in frames]


def smooth_clip(n: int = 12, h: int = 48, w: int = 64) -> np.ndarray:
    """A moving colour gradient: what H.264 codes well (PSNR well above 30 dB)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = [
        np.stack(
            [128 + 100 * np.sin((xx + 2 * t) / 11), 128 + 100 * np.cos((yy - t) / 9), 64 + xx + yy], axis=-1
        )
        for t in range(n)
    ]
    return np.clip(frames, 0, 255).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


def noisy_mp4(path: Path, n: int = 10) -> Path:
    """An mp4 big enough (noise) that its first 2 KB are a truncated file, not the whole one."""
    rng = np.random.default_rng(0)
    return write_video(path, rng.integers(0, 256, (n, 48, 64, 3), dtype=np.uint8), fps=10)


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- round trips


def test_png_folder_round_trip_is_exact(tmp_path: Path) -> None:
    frames = np.random.default_rng(1).integers(0, 256, (5, 17, 23, 3), dtype=np.uint8)
    out = write_video(tmp_path / "frames", frames)
    assert listing(out) == [f"frame_{i:06d}.png" for i in range(5)]
    np.testing.assert_array_equal(read_video(out), frames)
    assert probe_video(out) == video_io.VideoInfo(fps=24.0, num_frames=5, width=23, height=17)


def test_trailing_slash_means_folder(tmp_path: Path) -> None:
    out = write_video(str(tmp_path / "clip.out") + "/", indexed_frames(3))
    assert out.is_dir() and len(listing(out)) == 3


def test_mp4_round_trip_keeps_count_size_fps_and_quality(tmp_path: Path) -> None:
    frames = smooth_clip()
    out = write_video(tmp_path / "clip.mp4", frames, fps=12.5)
    back = read_video(out)
    assert back.shape == frames.shape and back.dtype == np.uint8
    assert psnr(back, frames) > 30
    info = probe_video(out)
    assert (info.fps, info.num_frames, info.width, info.height) == (12.5, 12, 64, 48)


def test_mp4_ntsc_rate_is_carried(tmp_path: Path) -> None:
    out = write_video(tmp_path / "ntsc.mp4", indexed_frames(4), fps=30000 / 1001)
    assert probe_video(out).fps == pytest.approx(29.97, abs=0.01)  # 30000/1001 in the container's time base


def test_gif_round_trip(tmp_path: Path) -> None:
    frames = indexed_frames(6, 21, 30)
    frames[:, 3:9, 4:12] = (255, 0, 0)  # a red patch on every frame
    out = write_video(tmp_path / "clip.gif", frames, fps=10)
    back = read_video(out)
    assert back.shape == frames.shape  # identical consecutive frames are not merged
    np.testing.assert_array_equal(back, frames)  # < 256 colours per frame: exact
    assert probe_video(out).fps == pytest.approx(10.0)


def test_odd_size_mp4_is_padded_by_edge_replication(tmp_path: Path) -> None:
    frames = smooth_clip(4, 33, 47)
    back = read_video(write_video(tmp_path / "odd.mp4", frames))
    assert back.shape == (4, 34, 48, 3)
    assert psnr(back[:, :33, :47], frames) > 30
    # The added row/column repeats the edge (up to coding error).
    assert np.abs(back[:, 33].astype(int) - back[:, 32].astype(int)).mean() < 4


def test_single_frame_clip(tmp_path: Path) -> None:
    for name in ("one.mp4", "one.gif", "one"):
        back = read_video(write_video(tmp_path / name, indexed_frames(1)))
        assert back.shape == (1, 24, 32, 3)


@pytest.mark.parametrize(
    ("suffix", "codec", "pix_fmt", "fps"),
    [
        (".avi", "mpeg4", "yuv420p", 8),
        (".mkv", "ffv1", "gray", 8),  # a greyscale video
        (".mov", "libx264", "yuv420p", 8),
        (".webm", "libvpx-vp9", "yuv420p", 8),
        (".mpg", "mpeg1video", "yuv420p", 25),  # MPEG-1 allows only the standard rates
    ],
)
def test_reads_other_containers_and_grey_video(
    tmp_path: Path, suffix: str, codec: str, pix_fmt: str, fps: int
) -> None:
    path = tmp_path / f"clip{suffix}"
    frames = indexed_frames(5)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = 32, 24, pix_fmt
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    back = read_video(path)
    assert back.shape == (5, 24, 32, 3) and back.dtype == np.uint8
    assert frame_indices(back) == list(range(5))
    assert probe_video(path).fps == pytest.approx(fps)


def test_opencv_is_the_fallback_when_pyav_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("cv2")
    path = write_video(tmp_path / "clip.mp4", indexed_frames(6))

    def refuse(*args: object, **kwargs: object):
        raise VideoError(f"{path}: not a readable video (pretend)")

    monkeypatch.setattr(video_io, "_iter_av", refuse)
    monkeypatch.setattr(video_io, "_probe_file", refuse)
    assert frame_indices(read_video(path, start=1, stride=2)) == [1, 3, 5]
    assert probe_video(path).num_frames == 6


# --------------------------------------------------------------------------- conversions


def test_frame_folder_converts_modes_and_sorts_naturally(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    grey = Image.fromarray(np.full((6, 5), 100, np.uint8), "L")
    rgba = Image.fromarray(
        np.dstack([np.full((6, 5, 3), 200, np.uint8), np.full((6, 5), 128, np.uint8)]), "RGBA"
    )
    paletted = grey.convert("RGB").quantize(4)
    deep = Image.fromarray(np.full((6, 5), 257 * 50, np.uint16))  # 16-bit grey
    # Natural order: frame2 before frame10 (a plain sort would put frame10 first).
    for name, img in [
        ("frame1.png", grey),
        ("frame2.png", rgba),
        ("frame10.png", paletted),
        ("frame11.png", deep),
    ]:
        img.save(folder / name)
    (folder / "frame3.jpg").write_bytes(b"")  # never opened: not selected below
    back = read_video(folder, max_frames=2)
    assert back.shape == (2, 6, 5, 3)
    np.testing.assert_array_equal(back[0], 100)
    np.testing.assert_array_equal(back[1], round(200 * 128 / 255))  # RGBA composited over black
    rest = read_video(folder, start=3)
    np.testing.assert_array_equal(rest[0], 100)  # paletted grey
    np.testing.assert_array_equal(rest[1], 50)  # 16-bit scaled, not clipped


def test_rgba_gif_reads_as_rgb(tmp_path: Path) -> None:
    path = tmp_path / "alpha.gif"
    Image.new("RGBA", (9, 7), (10, 200, 30, 255)).save(path)
    back = read_video(path)
    assert back.shape == (1, 7, 9, 3)
    np.testing.assert_array_equal(back[0, 0, 0], (10, 200, 30))


# --------------------------------------------------------------------------- selection


@pytest.mark.parametrize("target", ["frames", "clip.mp4", "clip.gif"])
def test_start_stride_max_frames_select_the_right_frames(tmp_path: Path, target: str) -> None:
    path = write_video(tmp_path / target, indexed_frames(20))
    assert frame_indices(read_video(path, start=3, stride=4, max_frames=3)) == [3, 7, 11]
    assert frame_indices(read_video(path, start=15, stride=2)) == [15, 17, 19]
    assert frame_indices(read_video(path, max_frames=2)) == [0, 1]


def test_skipped_frames_are_never_converted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_video(tmp_path / "frames", indexed_frames(20))
    mp4 = write_video(tmp_path / "clip.mp4", indexed_frames(20))
    opened, converted = [], []
    real_image, real_convert = video_io.read_image, video_io._av_frame_to_rgb
    monkeypatch.setattr(video_io, "read_image", lambda p: opened.append(p) or real_image(p))
    monkeypatch.setattr(video_io, "_av_frame_to_rgb", lambda f: converted.append(f) or real_convert(f))
    read_video(folder, start=10, stride=5, max_frames=2)
    read_video(mp4, start=10, stride=5, max_frames=2)
    assert [p.name for p in opened] == ["frame_000010.png", "frame_000015.png"]
    assert len(converted) == 2


def test_iter_frames_streams_lazily(tmp_path: Path) -> None:
    frames = iter_frames(write_video(tmp_path / "clip.mp4", indexed_frames(8)))
    assert frame_indices([next(frames), next(frames)]) == [0, 1]
    frames.close()  # stopping early is fine; the container is closed


# --------------------------------------------------------------------------- errors


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, dict]]:
    text = tmp_path / "notes.txt"
    text.write_text("this is not a video\n")
    disguised = tmp_path / "notes.mp4"
    disguised.write_text("this is not a video either\n")
    good = noisy_mp4(tmp_path / "good.mp4")
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[:2048])
    empty = tmp_path / "empty.mp4"
    empty.touch()
    (tmp_path / "no_frames").mkdir()
    return {
        "missing": (tmp_path / "missing.mp4", {}),
        "text file": (text, {}),
        "text named .mp4": (disguised, {}),
        "truncated": (truncated, {}),
        "zero bytes": (empty, {}),
        "folder without frames": (tmp_path / "no_frames", {}),
        "max_frames=0": (good, {"max_frames": 0}),
        "negative start": (good, {"start": -1}),
        "stride 0": (good, {"stride": 0}),
        "start past the end": (good, {"start": 10}),
    }


def test_bad_inputs_give_one_line_video_errors_naming_the_file(tmp_path: Path) -> None:
    for case, (path, kwargs) in _bad_inputs(tmp_path).items():
        with pytest.raises(VideoError) as info:
            read_video(path, **kwargs)
        message = str(info.value)
        assert path.name in message and "\n" not in message, case
        if not kwargs:
            with pytest.raises(VideoError, match=path.name):
                probe_video(path)


def test_video_error_is_a_value_error() -> None:
    assert issubclass(VideoError, ValueError)


@pytest.mark.parametrize(
    "frames",
    [
        np.zeros((2, 8, 8, 3), np.float32),  # wrong dtype
        np.zeros((2, 8, 8), np.uint8),  # no channels
        np.zeros((2, 8, 8, 4), np.uint8),  # RGBA
        np.zeros((0, 8, 8, 3), np.uint8),  # no frames
        [np.zeros((8, 8, 3), np.uint8), np.zeros((4, 4, 3), np.uint8)],  # ragged
    ],
    ids=["float", "no-channels", "rgba", "empty", "ragged"],
)
def test_write_rejects_bad_frames_and_leaves_nothing(tmp_path: Path, frames: object) -> None:
    for name in ("out.mp4", "out.gif", "out"):
        with pytest.raises(VideoError, match=name):
            write_video(tmp_path / name, frames)  # type: ignore[arg-type]
    assert listing(tmp_path) == []


def test_write_rejects_bad_fps_and_suffix(tmp_path: Path) -> None:
    with pytest.raises(VideoError, match="fps"):
        write_video(tmp_path / "a.mp4", indexed_frames(2), fps=0)
    with pytest.raises(VideoError, match=r"a\.png"):
        write_video(tmp_path / "a.png", indexed_frames(2))
    assert listing(tmp_path) == []


def _fail_after(calls: int, real):
    count = {"n": 0}

    def wrapper(*args, **kwargs):
        count["n"] += 1
        if count["n"] > calls:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    return wrapper


@pytest.mark.parametrize("name", ["clip.mp4", "clip.gif", "frames"])
def test_failed_write_midway_leaves_old_output_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    target = write_video(tmp_path / name, indexed_frames(3))
    before = read_video(target)
    if name == "frames":
        monkeypatch.setattr(Image.Image, "save", _fail_after(2, Image.Image.save))
    else:
        monkeypatch.setattr(av.VideoFrame, "from_ndarray", _fail_after(3, av.VideoFrame.from_ndarray))
    with pytest.raises(VideoError, match=name):
        write_video(tmp_path / name, smooth_clip(8, 24, 32))
    monkeypatch.undo()
    assert listing(tmp_path) == [name]  # no temp file or folder left behind
    np.testing.assert_array_equal(read_video(target), before)


def test_failed_first_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(av.VideoFrame, "from_ndarray", _fail_after(2, av.VideoFrame.from_ndarray))
    with pytest.raises(VideoError, match="new.mp4"):
        write_video(tmp_path / "sub" / "new.mp4", smooth_clip(6, 24, 32))
    assert listing(tmp_path / "sub") == []


def test_frame_folder_overwrite_never_deletes_foreign_files(tmp_path: Path) -> None:
    folder = tmp_path / "precious"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    with pytest.raises(VideoError, match="precious"):
        write_video(folder, indexed_frames(2))
    assert listing(folder) == ["thesis.tex"]
    assert listing(tmp_path) == ["precious"]


def test_frame_folder_is_replaced_whole(tmp_path: Path) -> None:
    write_video(tmp_path / "frames", indexed_frames(5))
    write_video(tmp_path / "frames", indexed_frames(2))
    assert len(listing(tmp_path / "frames")) == 2  # no stale frame_000004.png from the old clip
    assert listing(tmp_path) == ["frames"]


# --------------------------------------------------------------------------- fit and contact sheet


def test_fit_frames_crops_the_centre_and_resizes() -> None:
    frames = np.zeros((2, 240, 320, 3), np.uint8)
    frames[:, :, :40] = 255  # left margin: cropped away
    frames[:, :, 280:] = 255  # right margin: cropped away
    frames[:, 100:140, 140:180] = (0, 0, 255)  # centre square: kept, in the middle
    fitted = fit_frames(frames, 64)
    assert fitted.shape == (2, 64, 64, 3) and fitted.dtype == np.uint8
    assert fitted[:, :, :, :2].max() == 0  # no white from the margins
    assert fitted[0, 32, 32, 2] == 255 and fitted[0, 2, 2, 2] == 0
    report = describe_fit((240, 320), 64)
    assert isinstance(report, FitReport) and report.crop == (40, 0, 280, 240)
    assert str(report) == "centre-cropped 320x240 to 240x240, resized to 64x64"


def test_fit_frames_upscales_and_reports_no_op() -> None:
    small = np.random.default_rng(0).integers(0, 256, (1, 20, 30, 3), dtype=np.uint8)
    assert fit_frames(small, 64).shape == (1, 64, 64, 3)
    same = np.zeros((3, 64, 64, 3), np.uint8)
    assert fit_frames(same, 64) is same
    assert str(describe_fit((64, 64), 64)) == "unchanged (64x64)"
    assert str(describe_fit((128, 128), 64)) == "resized 128x128 to 64x64"


def test_contact_sheet_marks_context_and_generated_frames(tmp_path: Path) -> None:
    frames = indexed_frames(10, 16, 16)
    path = tmp_path / "sheet.png"
    sheet = contact_sheet(frames, columns=4, context=3, path=path, border=2)
    cell, gap = 16 + 4, 2
    assert sheet.shape == (3 * (cell + gap) + gap, 4 * (cell + gap) + gap, 3)
    corner = lambda i: tuple(sheet[gap + (i // 4) * (cell + gap), gap + (i % 4) * (cell + gap)])
    assert corner(0) == corner(2) == visualize.CONTEXT_COLOUR
    assert corner(3) == corner(9) == visualize.NEW_COLOUR
    inner = sheet[gap + 2 : gap + 18, gap + 2 : gap + 18]
    np.testing.assert_array_equal(inner, frames[0])
    np.testing.assert_array_equal(np.asarray(Image.open(path)), sheet)
    assert listing(tmp_path) == ["sheet.png"]


def test_contact_sheet_shrinks_large_frames() -> None:
    sheet = contact_sheet(np.zeros((2, 300, 400, 3), np.uint8), columns=8, thumb=100)
    assert sheet.shape[0] == 75 + 4 + 4 and sheet.shape[1] == 2 * (100 + 4 + 2) + 2


def test_no_stray_files_in_cwd() -> None:
    # Writers use temp names beside the target, never the working directory.
    assert not [p for p in os.listdir(".") if p.startswith(".") and ".tmp-" in p]

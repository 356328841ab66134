"""Still images as input: PNG, JPEG, WebP, BMP and TIFF (16-bit and RGBA too) read as one-frame clips, the same
way frame folders convert them, in the engine, the CLI and both apps' pickers. Images are generated with Pillow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.cli import main
from engine.errors import VideoError
from engine.video_io import CLIP_EXTENSIONS, IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, probe_video, read_video

LOSSLESS = {"png": {}, "bmp": {}, "tiff": {}, "webp": {"lossless": True}}


def pattern(h: int = 20, w: int = 28, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("ext", sorted(LOSSLESS))
def test_lossless_images_read_as_one_exact_frame(tmp_path: Path, ext: str) -> None:
    rgb = pattern()
    path = tmp_path / f"still.{ext}"
    Image.fromarray(rgb).save(path, **LOSSLESS[ext])
    video = read_video(path)
    assert video.shape == (1, 20, 28, 3)
    assert np.array_equal(video[0], rgb)
    info = probe_video(path)
    assert (info.num_frames, info.width, info.height) == (1, 28, 20)


def test_jpeg_reads_as_one_close_frame(tmp_path: Path) -> None:
    rgb = np.full((24, 32, 3), (200, 40, 90), dtype=np.uint8)  # flat: JPEG's loss stays small
    Image.fromarray(rgb).save(tmp_path / "still.jpg", quality=95)
    video = read_video(tmp_path / "still.jpg")
    assert video.shape == (1, 24, 32, 3)
    # 4 levels: quality-95 JPEG of a flat colour differs by chroma rounding only, on every libjpeg build.
    assert np.abs(video[0].astype(int) - rgb).max() <= 4


@pytest.mark.parametrize("ext", ["png", "tiff"])
def test_16_bit_grey_is_scaled_to_8_bits_as_frames_are(tmp_path: Path, ext: str) -> None:
    # v / 257 rounded: 257 * k + 200 is k + 1 (FFmpeg's gray16 -> rgb24 would give k: the high byte).
    values = np.array([[0, 257 * 10 + 200, 257 * 128, 65535]], dtype=np.uint16).repeat(4, 0)
    path = tmp_path / f"deep.{ext}"
    Image.fromarray(values).save(path)
    frame = read_video(path)[0]
    assert frame.dtype == np.uint8 and frame.shape == (4, 4, 3)
    assert frame[0, :, 0].tolist() == [0, 11, 128, 255]
    assert np.array_equal(frame[..., 0], frame[..., 2])  # grey stays grey


@pytest.mark.parametrize("ext", ["png", "webp", "tiff"])
def test_rgba_is_composited_over_black(tmp_path: Path, ext: str) -> None:
    rgba = np.zeros((6, 6, 4), dtype=np.uint8)
    rgba[..., :3] = (255, 128, 0)
    rgba[:3, :, 3] = 255  # top half opaque
    rgba[3:, :, 3] = 0  # bottom half fully transparent: its colour must not show
    path = tmp_path / f"alpha.{ext}"
    Image.fromarray(rgba).save(path, **({"lossless": True} if ext == "webp" else {}))
    frame = read_video(path)[0]
    assert frame[0, 0].tolist() == [255, 128, 0]
    assert frame[5, 5].tolist() == [0, 0, 0]


def test_frame_folders_take_every_image_type(tmp_path: Path) -> None:
    frames = [pattern(seed=i) for i in range(4)]
    for i, (frame, ext) in enumerate(zip(frames, ["webp", "bmp", "tiff", "png"])):
        Image.fromarray(frame).save(tmp_path / f"f{i}.{ext}", **LOSSLESS[ext])
    video = read_video(tmp_path)
    assert video.shape == (4, 20, 28, 3)
    assert all(np.array_equal(a, b) for a, b in zip(video, frames))


def test_multi_page_tiff_is_a_clip_and_a_broken_image_is_one_line(tmp_path: Path) -> None:
    pages = [Image.fromarray(pattern(seed=i)) for i in range(3)]
    pages[0].save(tmp_path / "pages.tiff", save_all=True, append_images=pages[1:])
    assert read_video(tmp_path / "pages.tiff", start=1).shape == (2, 20, 28, 3)
    assert probe_video(tmp_path / "pages.tiff").num_frames == 3
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(VideoError, match="broken.png") as err:
        read_video(tmp_path / "broken.png")
    assert "\n" not in str(err.value)


def test_one_list_of_extensions_for_every_surface() -> None:
    assert {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"} <= IMAGE_EXTENSIONS
    assert CLIP_EXTENSIONS == VIDEO_EXTENSIONS | IMAGE_EXTENSIONS


def test_cli_continues_a_still_image(tmp_path: Path, capsys, tiny_checkpoint) -> None:
    Image.fromarray(pattern(32, 48)).save(tmp_path / "photo.webp", lossless=True)
    out = tmp_path / "out.mp4"
    code = main(["continue", str(tmp_path / "photo.webp"), "-o", str(out), "--frames", "3", "--steps", "2",
                 "--checkpoint", str(tiny_checkpoint), "--device", "cpu"])  # --context left at its default, 8
    err = capsys.readouterr().err
    assert code == 0, err
    assert "1 context + 3 new" in err and "centre-cropped 48x32" in err
    assert read_video(out).shape[0] == 4  # the image, then 3 new frames


def test_tui_picker_and_loader_take_images(tmp_path: Path) -> None:
    pytest.importorskip("textual")
    from app_tui.clip import load_clip
    from app_tui.widgets.files import VideoTree

    Image.fromarray(pattern()).save(tmp_path / "a.bmp")
    (tmp_path / "notes.txt").write_text("x")
    clip = load_clip(tmp_path / "a.bmp")
    assert clip.num_frames == 1 and clip.tail.shape == (1, 20, 28, 3)
    tree = VideoTree.__new__(VideoTree)  # filter_paths reads nothing from the widget
    names = [p.name for p in tree.filter_paths([tmp_path / "a.bmp", tmp_path / "notes.txt"])]
    assert names == ["a.bmp"]


def test_gui_open_dialog_offers_every_clip_type() -> None:
    pytest.importorskip("PySide6")
    from app_gui.clip_control import CLIP_FILTER

    offered = CLIP_FILTER.split(";;")[0]
    assert all(f"*{ext}" in offered for ext in CLIP_EXTENSIONS)


def test_gui_opens_a_dropped_image_as_a_one_frame_clip(tmp_path: Path, qtbot) -> None:
    pytest.importorskip("PySide6")
    from app_gui.settings import Settings
    from app_gui.window import MainWindow

    rgba = np.zeros((12, 20, 4), dtype=np.uint8)
    rgba[..., :3], rgba[..., 3] = (10, 200, 30), 255
    Image.fromarray(rgba).save(tmp_path / "still.tiff")
    w = MainWindow(Settings.load(), device="cpu", load_on_start=False, persist=False)
    qtbot.addWidget(w)
    with qtbot.waitSignal(w.clipLoaded, timeout=60_000):
        w.open_path(str(tmp_path / "still.tiff"))  # what a drop does with a local file
    assert w.clip.shape == (1, 12, 20, 3) and w.clip[0, 0, 0].tolist() == [10, 200, 30]

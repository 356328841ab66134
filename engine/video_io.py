"""Read, write, probe and fit video clips.

Every clip in ardiff is a uint8 RGB array ``[N, H, W, 3]``. PyAV decodes every container we
accept (mp4, avi, mov, mkv, webm, mpg, gif); OpenCV is only a fallback for the rare file PyAV
refuses. A still image (PNG, JPEG, WebP, BMP, TIFF; read by PIL) is a one-frame clip, and a folder
of numbered images is a clip too. Every problem a user can fix (a
missing file, a text file, a truncated download, bad arguments) is a one-line ``VideoError``
that names the file.
"""

from __future__ import annotations

import numbers
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image, ImageOps

from engine.atomic import remove_path, sweep_stale, temp_name
from engine.errors import VideoError
from engine.outputs import OutputSet, check_name, check_not_input, check_writable_parent, describe_special

__all__ = [
    "CLIP_EXTENSIONS",
    "FOLDER_FPS",
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "FitReport",
    "VideoInfo",
    "describe_fit",
    "fit_frames",
    "iter_frames",
    "list_frame_files",
    "natural_key",
    "open_video_stream",
    "read_tail",
    "probe_video",
    "read_image",
    "read_video",
    "check_video_output",
    "stage_video",
    "stage_png",
    "write_video",
]

VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".avi", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".gif"})
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})
# Every file a surface offers as a clip (the apps' pickers use this one list): videos and still images.
CLIP_EXTENSIONS = VIDEO_EXTENSIONS | IMAGE_EXTENSIONS
FOLDER_FPS = 24.0  # a frame folder carries no rate; 24 is the film default

_H264_SUFFIXES = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
_H264_CRF = 18  # visually near-lossless; the model's output is small, files stay small too
# FFmpeg demuxers that turn arbitrary bytes (text) into "video"; never a real clip.
_REJECTED_FORMATS = {"tty", "ansi"}
_FRAME_NAME = "frame_{:06d}.png"


# --------------------------------------------------------------------------- data classes


@dataclass(frozen=True)
class VideoInfo:
    """What a clip is without decoding it. ``num_frames`` is an estimate (or None) when the
    container does not store a frame count."""

    fps: float
    num_frames: int | None
    width: int
    height: int


@dataclass(frozen=True)
class FitReport:
    """What ``fit_frames`` does to a ``src_width x src_height`` clip; ``str()`` says it in words
    so a surface can tell the user ("centre-cropped 320x240 to 240x240, resized to 64x64")."""

    src_width: int
    src_height: int
    size: int
    crop: tuple[int, int, int, int]  # left, top, right, bottom in source pixels

    @property
    def changed(self) -> bool:
        return (self.src_width, self.src_height) != (self.size, self.size)

    def __str__(self) -> str:
        src = f"{self.src_width}x{self.src_height}"
        side = self.crop[2] - self.crop[0]
        if not self.changed:
            return f"unchanged ({src})"
        if self.src_width == self.src_height:
            return f"resized {src} to {self.size}x{self.size}"
        cropped = f"centre-cropped {src} to {side}x{side}"
        return cropped if side == self.size else f"{cropped}, resized to {self.size}x{self.size}"


# --------------------------------------------------------------------------- paths and names


def natural_key(name: str) -> list[Any]:
    """Sort key that orders embedded numbers by value: frame2 before frame10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def list_frame_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The image frames (any of IMAGE_EXTENSIONS) of a frame folder, in natural order (hidden files ignored)."""
    folder = Path(folder)
    files = [
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    ]
    return sorted(files, key=lambda p: natural_key(p.name))


class _Unrecoverable(VideoError):
    """A problem no other decoder can fix (empty file, no video stream): skip the OpenCV fallback."""


def _existing(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    special = describe_special(path)  # a FIFO is not "empty", a symlink loop is not "missing"
    if special:
        raise _Unrecoverable(f"{path}: is {special}, not a video file or frame folder")
    if not path.exists():
        raise VideoError(f"{path}: no such file or folder")
    return path


def _frame_files_or_error(folder: Path) -> list[Path]:
    files = list_frame_files(folder)
    if not files:
        raise VideoError(f"{folder}: folder has no image frames (PNG, JPEG, WebP, BMP, TIFF)")
    return files


def _av_reason(err: BaseException) -> str:
    """FFmpeg's message without the path it repeats (we name the file ourselves)."""
    return getattr(err, "strerror", None) or str(err) or type(err).__name__


# --------------------------------------------------------------------------- pixel conversion


def _image_to_rgb(img: Image.Image) -> np.ndarray:
    """Any PIL image (grey, 16-bit, paletted, RGBA, CMYK) as uint8 RGB ``[H, W, 3]``."""
    img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I"):
        # 16-bit greyscale PNGs open as "I;16"/"I": scale to 8 bits (convert("RGB") would clip).
        grey = np.clip(np.asarray(img, dtype=np.float64) / 257.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels' colour is arbitrary in most files: composite over black.
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint16)
        return ((rgba[..., :3] * rgba[..., 3:] + 127) // 255).astype(np.uint8)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """One image file (any mode PIL opens) as uint8 RGB ``[H, W, 3]``."""
    path = _existing(path)
    try:
        with Image.open(path) as img:
            return _image_to_rgb(img)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise VideoError(f"{path}: cannot read image ({err})") from err


def _av_frame_to_rgb(frame: av.VideoFrame) -> np.ndarray:
    # swscale converts every pixel format (grey, pal8, yuv, rgba) to rgb24.
    return frame.to_ndarray(format="rgb24")


# --------------------------------------------------------------------------- reading


@contextmanager
def open_video_stream(path: str | os.PathLike[str]) -> Iterator[tuple[Any, Any]]:
    """Open a video file with PyAV: yields ``(container, video_stream)``, closes on exit.

    Low level, for code that must seek (the trainer's datasets); errors are ``VideoError``.
    """
    path = _existing(path)
    if path.is_dir():
        raise _Unrecoverable(f"{path}: is a folder, not a video file")
    if path.stat().st_size == 0:
        raise _Unrecoverable(f"{path}: empty file (0 bytes)")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise VideoError(f"{path}: not a readable video ({_av_reason(err)})") from err
    try:
        if container.format.name in _REJECTED_FORMATS or not container.streams.video:
            raise _Unrecoverable(f"{path}: has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame + slice threads: several times faster on HD clips
        yield container, stream
    finally:
        container.close()


def _iter_av(path: Path, start: int, stride: int) -> Iterator[np.ndarray]:
    with open_video_stream(path) as (container, stream):
        index = -1
        try:
            for index, frame in enumerate(container.decode(stream)):
                # Skipped frames must still be decoded (inter frames), but never converted or kept.
                if index >= start and (index - start) % stride == 0:
                    yield _av_frame_to_rgb(frame)
        except av.error.FFmpegError as err:
            raise VideoError(
                f"{path}: corrupt video, decoding failed after frame {index} ({_av_reason(err)})"
            ) from err


def _import_cv2() -> Any | None:
    # OpenCV's bundled FFmpeg prints to stderr on every failed open; quiet it before import.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    try:
        import cv2
    except ImportError:
        return None
    return cv2


@contextmanager
def _cv2_capture(path: Path, original: VideoError) -> Iterator[tuple[Any, Any]]:
    """(cv2, an open VideoCapture) for the OpenCV fallback; re-raises PyAV's error when OpenCV fails too."""
    cv2 = _import_cv2()
    if cv2 is None:
        raise original
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise original
        yield cv2, cap
    finally:
        cap.release()


def _iter_cv2(path: Path, start: int, stride: int, original: VideoError) -> Iterator[np.ndarray]:
    """OpenCV fallback for files PyAV refuses."""
    with _cv2_capture(path, original) as (_, cap):
        index = 0
        while cap.grab():  # grab() without retrieve(): skipped frames are never converted
            if index >= start and (index - start) % stride == 0:
                ok, bgr = cap.retrieve()
                if not ok:
                    raise VideoError(f"{path}: corrupt video, decoding failed at frame {index}")
                yield (
                    np.ascontiguousarray(bgr[..., ::-1]) if bgr.ndim == 3 else np.repeat(bgr[..., None], 3, 2)
                )
            index += 1


def _is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.is_dir()


def _iter_image(path: Path, start: int, stride: int) -> Iterator[np.ndarray]:
    """A still image as a one-frame clip (every page of a multi-page TIFF or animated WebP is a frame),
    converted by PIL exactly as a frame folder's images are, so 16-bit and RGBA files come back the same."""
    try:
        with Image.open(path) as img:
            count = getattr(img, "n_frames", 1)
            first_shape = None
            for index in range(start, count, stride):
                img.seek(index)
                frame = _image_to_rgb(img)
                if first_shape is None:
                    first_shape = frame.shape
                elif frame.shape != first_shape:
                    raise VideoError(f"{path}: page {index} is {frame.shape[1]}x{frame.shape[0]}, the first is "
                                     f"{first_shape[1]}x{first_shape[0]}")
                yield frame
    except (OSError, ValueError, EOFError, Image.DecompressionBombError) as err:
        if isinstance(err, VideoError):
            raise
        raise VideoError(f"{path}: cannot read image ({err})") from err


def _iter_file(path: Path, start: int, stride: int) -> Iterator[np.ndarray]:
    if _is_image_file(path):
        yield from _iter_image(path, start, stride)
        return
    produced = 0
    try:
        for frame in _iter_av(path, start, stride):
            produced += 1
            yield frame
    except VideoError as err:
        if produced or isinstance(err, _Unrecoverable):
            raise
        yield from _iter_cv2(path, start, stride, err)


def _iter_folder(folder: Path, start: int, stride: int) -> Iterator[np.ndarray]:
    files = _frame_files_or_error(folder)
    first_shape = None
    for file in files[start::stride]:  # lazy: only the selected files are ever opened
        frame = read_image(file)
        if first_shape is None:
            first_shape = frame.shape
        elif frame.shape != first_shape:
            raise VideoError(
                f"{file}: frame is {frame.shape[1]}x{frame.shape[0]}, "
                f"the folder's first frame is {first_shape[1]}x{first_shape[0]}"
            )
        yield frame


def _check_read_args(path: Path, max_frames: int | None, start: int, stride: int) -> None:
    if max_frames is not None and max_frames < 1:
        raise VideoError(f"{path}: max_frames must be at least 1 (got {max_frames})")
    if start < 0:
        raise VideoError(f"{path}: start must be >= 0 (got {start})")
    if stride < 1:
        raise VideoError(f"{path}: stride must be >= 1 (got {stride})")


def iter_frames(
    path: str | os.PathLike[str], max_frames: int | None = None, start: int = 0, stride: int = 1
) -> Iterator[np.ndarray]:
    """Stream frames ``start, start + stride, ...`` (at most ``max_frames``) as uint8 RGB
    ``[H, W, 3]``, decoding no further than needed. Arguments are checked now, not on first use."""
    path = _existing(path)
    _check_read_args(path, max_frames, start, stride)
    if path.is_dir():
        _frame_files_or_error(path)
    return _limited(
        path,
        _iter_folder(path, start, stride) if path.is_dir() else _iter_file(path, start, stride),
        max_frames,
        start,
    )


def read_tail(path: str | os.PathLike[str], count: int, estimated_frames: int | None = None,
              fit: int | None = None) -> np.ndarray:
    """The last `count` (or fewer, when the clip is shorter) frames of a clip, uint8 [N, H, W, 3]; with `fit`,
    each frame fitted to `fit` x `fit` as it is read (``fit_frames``), so many frames of an HD clip stay small.

    Frame counts from containers are estimates, so this seeks only near the end when `estimated_frames`
    leaves a safe margin, and falls back to reading from the start; memory stays at `count` frames."""
    from collections import deque

    def frames(start: int = 0) -> Iterator[np.ndarray]:
        for frame in iter_frames(path, start=start):
            yield frame if fit is None else fit_frames(frame[None], fit)[0]

    margin = 64
    if estimated_frames and estimated_frames > count + 2 * margin:
        try:
            tail = deque(frames(estimated_frames - count - margin), maxlen=count)
            if len(tail) == count:
                return np.stack(tail)
        except VideoError:
            pass
    return np.stack(deque(frames(), maxlen=count))


def _limited(
    path: Path, frames: Iterator[np.ndarray], max_frames: int | None, start: int
) -> Iterator[np.ndarray]:
    count = 0
    for frame in frames:
        yield frame
        count += 1
        if count == max_frames:
            break
    if count == 0:
        where = f" at or after frame {start}" if start else ""
        raise VideoError(f"{path}: no frames{where}")


def read_video(
    path: str | os.PathLike[str], max_frames: int | None = None, start: int = 0, stride: int = 1
) -> np.ndarray:
    """Read a video file or frame folder as uint8 RGB ``[N, H, W, 3]``.

    ``start``/``stride``/``max_frames`` select frames ``start, start + stride, ...`` while
    decoding; frames outside the selection are never kept, and decoding stops after
    ``max_frames``. Grey, paletted and RGBA sources come back as RGB.
    """
    return np.stack(list(iter_frames(path, max_frames=max_frames, start=start, stride=stride)))


# --------------------------------------------------------------------------- probing


def _rate(stream: Any) -> float | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return float(rate)
    return None


def _estimate_frames(container: Any, stream: Any, fps: float) -> int | None:
    if stream.frames:
        return int(stream.frames)
    if stream.duration and stream.time_base:
        return max(1, round(float(stream.duration * stream.time_base) * fps))
    if container.duration:
        return max(1, round(container.duration / av.time_base * fps))
    return None


def _probe_file(path: Path) -> VideoInfo:
    with open_video_stream(path) as (container, stream):
        fps = _rate(stream) or FOLDER_FPS
        width, height = stream.codec_context.width, stream.codec_context.height
        if not width or not height:
            frame = next(container.decode(stream), None)
            if frame is None:
                raise VideoError(f"{path}: no frames")
            width, height = frame.width, frame.height
        return VideoInfo(
            fps=fps, num_frames=_estimate_frames(container, stream, fps), width=width, height=height
        )


def _probe_cv2(path: Path, original: VideoError) -> VideoInfo:
    with _cv2_capture(path, original) as (cv2, cap):
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        return VideoInfo(
            fps=float(cap.get(cv2.CAP_PROP_FPS)) or FOLDER_FPS,
            num_frames=count if count > 0 else None,
            width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        )


def probe_video(path: str | os.PathLike[str]) -> VideoInfo:
    """Frame rate, frame count and size of a video file or frame folder, without decoding it all."""
    path = _existing(path)
    if path.is_dir():
        files = _frame_files_or_error(path)
        try:
            with Image.open(files[0]) as img:
                width, height = img.size
        except OSError as err:
            raise VideoError(f"{files[0]}: cannot read image ({err})") from err
        return VideoInfo(fps=FOLDER_FPS, num_frames=len(files), width=width, height=height)
    if _is_image_file(path):
        try:
            with Image.open(path) as img:
                count = getattr(img, "n_frames", 1)
                upright = ImageOps.exif_transpose(img)  # the size frames come back at (a rotated photo)
                return VideoInfo(fps=FOLDER_FPS, num_frames=count, width=upright.width, height=upright.height)
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise VideoError(f"{path}: cannot read image ({err})") from err
    try:
        return _probe_file(path)
    except VideoError as err:
        if isinstance(err, _Unrecoverable):
            raise
        return _probe_cv2(path, err)


# --------------------------------------------------------------------------- writing


def _check_frames(frames: Any, what: str) -> np.ndarray:
    """``frames`` as uint8 ``[N, H, W, 3]`` with N, H, W >= 1, or a VideoError naming ``what``."""
    try:
        arr = frames if isinstance(frames, np.ndarray) else np.asarray(frames)
    except ValueError as err:  # a ragged list of frames
        raise VideoError(f"{what}: frames must all have the same size") from err
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3 or 0 in arr.shape:
        raise VideoError(
            f"{what}: frames must be a non-empty uint8 RGB array [N, H, W, 3]; "
            f"got {arr.dtype} array of shape {tuple(arr.shape)}"
        )
    return arr


def _output_kind(path_text: str, path: Path) -> str:
    suffix = path.suffix.lower()
    if path.is_dir() and (suffix in _H264_SUFFIXES or suffix == ".gif"):
        raise VideoError(f"{path}: is an existing folder with a video name; give a new file name, or a folder "
                         f"path without '{suffix}' for PNG frames")
    if path_text.endswith(("/", os.sep)) or path.suffix == "" or path.is_dir():
        return "folder"
    if suffix == ".gif":
        return "gif"
    if suffix in _H264_SUFFIXES:
        return "h264"
    raise VideoError(f"{path}: cannot write '{suffix}' files (use .mp4, .mov, .mkv, .gif or a folder path)")


def _pad_even(frames: np.ndarray) -> np.ndarray:
    """yuv420p needs even sizes: replicate the last row/column rather than crop content away."""
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if not (pad_h or pad_w):
        return frames
    return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def _fps_fraction(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)  # 29.97 -> 30000/1001, 24 -> 24


def _h264_encoder() -> str:
    for name in ("libx264", "h264"):
        if name in av.codecs_available:
            return name
    raise VideoError("this PyAV build has no H.264 encoder; write a .gif or a frame folder instead")


def _encode_h264(tmp: Path, frames: np.ndarray, fps: float, container_format: str) -> None:
    frames = _pad_even(frames)
    with av.open(str(tmp), mode="w", format=container_format) as container:
        stream = container.add_stream(
            _h264_encoder(), rate=_fps_fraction(fps), options={"crf": str(_H264_CRF), "preset": "medium"}
        )
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def _pal8(frame: np.ndarray) -> av.VideoFrame:
    """One GIF frame with its own 256-colour palette (median cut, no dithering: no flicker)."""
    quantised = Image.fromarray(frame).quantize(
        256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
    )
    rgb = np.asarray(quantised.getpalette() or [], dtype=np.uint8).reshape(-1, 3)[:256]
    palette = np.zeros((256, 4), dtype=np.uint8)  # ARGB, opaque
    palette[:, 0] = 255
    palette[: len(rgb), 1:] = rgb
    return av.VideoFrame.from_ndarray((np.asarray(quantised), palette), format="pal8")


def _encode_gif(tmp: Path, frames: np.ndarray, fps: float) -> None:
    # PyAV, not PIL: PIL merges identical consecutive frames, which would change the frame count.
    # No "transdiff": with per-frame palettes it leaves stale pixels behind.
    with av.open(str(tmp), mode="w", format="gif") as container:
        stream = container.add_stream("gif", rate=_fps_fraction(fps), options={"gifflags": "-transdiff"})
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "pal8"
        for frame in frames:
            container.mux(stream.encode(_pal8(frame)))
        container.mux(stream.encode())


def _write_folder(tmp: Path, frames: np.ndarray) -> None:
    tmp.mkdir()
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp / _FRAME_NAME.format(index), compress_level=1)


_remove = remove_path


def _foreign_files(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if not re.fullmatch(r"frame_\d+\.png", p.name)]


def is_frame_folder(path: Path) -> bool:
    """Whether a folder holds nothing but our ``frame_NNNNNN.png`` files (a previous output we may replace)."""
    return not _foreign_files(path)


def _check_folder_output(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise VideoError(f"{path}: exists and is not a folder")
    if path.is_dir():
        foreign = _foreign_files(path)
        if foreign:
            raise VideoError(f"{path}: folder holds other files ({foreign[0]}, ...); not overwriting it")


def check_video_output(path: str | os.PathLike[str], inputs: Sequence[str | os.PathLike[str]] = ()) -> str:
    """Check an output path before any work and return its kind ("h264", "gif" or "folder"): a format we
    write, a name that fits, not an input, not a folder holding other files, a writable folder."""
    path_text = os.fspath(path)
    path = Path(path_text)
    special = describe_special(path)
    if special:
        raise VideoError(f"{path}: is {special}; give a new file or folder name")
    kind = _output_kind(path_text, path)
    check_name(path)
    check_not_input(path, inputs)
    if kind == "folder":
        _check_folder_output(path)
    check_writable_parent(path)
    return kind


def stage_video(path: str | os.PathLike[str], frames: np.ndarray, fps: float = 24.0) -> Path:
    """Write the video of ``write_video`` under a temp name beside ``path`` and return that name; the caller
    renames it into place (``engine.outputs.OutputSet``) or removes it. Stale temp files of a killed run
    in that folder are removed first."""
    path_text = os.fspath(path)
    path = Path(path_text)
    frames = _check_frames(frames, str(path))
    if not (isinstance(fps, numbers.Real) and np.isfinite(fps) and fps > 0):
        raise VideoError(f"{path}: fps must be a positive number (got {fps})")
    kind = _output_kind(path_text, path)
    if kind == "folder":
        _check_folder_output(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise VideoError(f"{path}: cannot create the folder ({err.strerror or err})") from err
    sweep_stale(path.parent)
    tmp = temp_name(path)
    try:
        if kind == "folder":
            _write_folder(tmp, frames)
        elif kind == "gif":
            _encode_gif(tmp, frames, fps)
        else:
            _encode_h264(tmp, frames, fps, _H264_SUFFIXES[path.suffix.lower()])
    except VideoError:
        _remove(tmp)
        raise
    except (OSError, av.error.FFmpegError, ValueError) as err:
        _remove(tmp)
        raise VideoError(f"{path}: cannot write video ({_av_reason(err)})") from err
    except BaseException:
        _remove(tmp)
        raise
    return tmp


def _commit(outputs: OutputSet, path: Path) -> None:
    try:
        outputs.commit()
    except OSError as err:
        raise VideoError(f"{path}: cannot write ({err.strerror or err})") from err


def write_video(path: str | os.PathLike[str], frames: np.ndarray, fps: float = 24.0) -> Path:
    """Write uint8 RGB ``[N, H, W, 3]`` frames; the format follows the path, and returns it.

    - ``.mp4`` / ``.mov`` / ``.mkv``: H.264 (yuv420p, crf 18). yuv420p needs even sizes, so odd
      heights/widths are padded by one replicated edge row/column (read back 1 px larger).
    - ``.gif``: 256 colours per frame; GIF stores delays in 1/100 s, so fps is approximate.
    - no suffix, or a trailing ``/``: a folder of ``frame_000000.png``, ...

    Atomic: the output is written beside the target under a temporary name and renamed into
    place, so a failure (or a crash) never leaves a partial file behind. An existing frame folder
    is replaced; a folder holding anything else is never touched.
    """
    path_text = os.fspath(path)
    with OutputSet() as outputs:
        outputs.add(stage_video(path_text, frames, fps), path_text, may_replace=is_frame_folder)
        _commit(outputs, Path(path_text))
    return Path(path_text)


# --------------------------------------------------------------------------- fitting


def describe_fit(src_hw: Sequence[int], size: int) -> FitReport:
    """What ``fit_frames`` will do to frames of height/width ``src_hw``: the centred square crop
    (in source pixels) that is then resized to ``size x size``."""
    height, width = int(src_hw[0]), int(src_hw[1])
    if size < 1 or height < 1 or width < 1:
        raise ValueError(f"fit needs positive sizes, got {width}x{height} -> {size}")
    side = min(height, width)
    left, top = (width - side) // 2, (height - side) // 2
    return FitReport(src_width=width, src_height=height, size=size, crop=(left, top, left + side, top + side))


def fit_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square and resize to ``size x size`` (box filter when shrinking:
    area averaging, no aliasing; bicubic when enlarging). Returns uint8 ``[N, size, size, 3]``.

    Cropping first, then resizing the crop, equals "resize the short side, crop the centre"
    without rounding the intermediate size. ``describe_fit`` words it for the user.
    """
    frames = _check_frames(frames, "fit_frames")
    report = describe_fit(frames.shape[1:3], size)
    if not report.changed:
        return frames
    side = report.crop[2] - report.crop[0]
    resample = Image.Resampling.BOX if side >= size else Image.Resampling.BICUBIC
    out = np.empty((len(frames), size, size, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        out[i] = np.asarray(Image.fromarray(frame).resize((size, size), resample, box=report.crop))
    return out


# --------------------------------------------------------------------------- staged PNGs


def stage_png(path: str | os.PathLike[str], image: np.ndarray) -> Path:
    """Save ``image`` as PNG under a temp name beside ``path`` and return that name (see ``stage_video``)."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(tmp, format="PNG")
    except OSError as err:
        _remove(tmp)
        raise VideoError(f"{path}: cannot write image ({err.strerror or err})") from err
    except BaseException:
        _remove(tmp)
        raise
    return tmp

"""Frechet Video Distance (Unterthiner et al. 2018) with the Kinetics-400 I3D.

Standard FVD: every clip is resized to 224x224 (bilinear, ``align_corners=False``, no antialias,
aspect ratio not kept, as the reference implementations do), scaled to [-1, 1], fed to I3D; the
400 logits averaged over time are the features; FVD is the Frechet distance between Gaussian fits
of the real and the generated feature sets.

FVD_16 uses the first 16 frames of every video.

FVD_128 (our definition, which the paper does not spell out): every 128-frame video is cut into
8 consecutive 16-frame segments (frames 0-15, 16-31, ...); for each segment index j the FVD
between the real and the generated j-th segments is computed as above, and FVD_128 is the mean of
those 8 values. This keeps I3D at the 16-frame length it is used with for FVD_16, and it grows when
late segments drift away from real ones. (Some papers instead feed all 128 frames to I3D at once,
or subsample them to 16; those numbers are not comparable with ours.)

FVD with few videos is biased and noisy; published numbers use 256 to 2048 videos per set.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from engine.errors import ArdiffError

from .frechet import frechet_distance_from_features

logger = logging.getLogger(__name__)

__all__ = ["SEGMENT_LENGTH", "fvd", "fvd_16", "fvd_128", "fvd_segments", "i3d_logits", "preprocess_clips"]

SEGMENT_LENGTH = 16
I3D_SIZE = 224


def _as_video_list(videos, name: str) -> list[np.ndarray]:
    if isinstance(videos, np.ndarray):
        if videos.ndim != 5:
            raise ArdiffError(f"{name} videos must be uint8 [N, T, H, W, 3] or a list of [T, H, W, 3], "
                              f"got an array of shape {videos.shape}")
        out = list(videos)
    elif isinstance(videos, Sequence) or hasattr(videos, "__iter__"):
        out = [np.asarray(v) for v in videos]
    else:
        raise ArdiffError(f"{name} videos must be an array or a list of arrays, got {type(videos).__name__}")
    for i, v in enumerate(out):
        if v.dtype != np.uint8 or v.ndim != 4 or v.shape[-1] != 3:
            raise ArdiffError(f"{name} video {i} must be uint8 [T, H, W, 3] RGB, got {v.dtype} {v.shape}")
    return out


def preprocess_clips(clips: Sequence[np.ndarray], size: int = I3D_SIZE) -> torch.Tensor:
    """uint8 clips ``[T, H, W, 3]`` (same T) -> float32 ``[B, 3, T, size, size]`` in [-1, 1]."""
    out = []
    for clip in clips:
        x = torch.from_numpy(np.ascontiguousarray(clip)).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # T,3,H,W
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
            x = x.clamp_(-1.0, 1.0)  # bilinear stays in range; this only removes float round-off
        out.append(x.permute(1, 0, 2, 3))
    return torch.stack(out)


def _i3d_device(i3d: torch.nn.Module) -> torch.device:
    p = next(i3d.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def i3d_logits(clips: Sequence[np.ndarray], i3d: torch.nn.Module, *, batch_size: int = 8,
               dtype: torch.dtype | None = None) -> np.ndarray:
    """I3D logits (averaged over time) ``[N, 400]`` float64 for uint8 clips ``[T, H, W, 3]``.

    ``dtype=torch.bfloat16`` runs under autocast: for GPUs and AMX / AVX512-BF16 CPUs only (on an
    AVX2-only CPU it is emulated and ~50x slower than float32); logits then differ by ~0.2.
    """
    device = _i3d_device(i3d)
    feats = []
    for start in range(0, len(clips), batch_size):
        x = preprocess_clips(clips[start:start + batch_size]).to(device)
        if dtype is not None and dtype != torch.float32:
            with torch.autocast(device_type=device.type, dtype=dtype):
                logits, _ = i3d(x)
        else:
            logits, _ = i3d(x)
        feats.append(logits.double().cpu().numpy())
    return np.concatenate(feats) if feats else np.zeros((0, 400))


def _check_sets(real: list[np.ndarray], fake: list[np.ndarray], num_frames: int,
                note: Callable[[str], None]) -> None:
    if len(real) < 2 or len(fake) < 2:
        raise ArdiffError(
            f"FVD needs at least 2 videos in each set (got {len(real)} real, {len(fake)} generated); "
            "meaningful values need hundreds (papers use 256 or more)")
    for name, vids in (("real", real), ("generated", fake)):
        short = [i for i, v in enumerate(vids) if v.shape[0] < num_frames]
        if short:
            raise ArdiffError(f"FVD over {num_frames} frames: {len(short)} {name} video(s) are shorter "
                              f"(e.g. video {short[0]} has {vids[short[0]].shape[0]} frames)")
    res_real = sorted({v.shape[1:3] for v in real})
    res_fake = sorted({v.shape[1:3] for v in fake})
    if res_real != res_fake or len(res_real) > 1:
        def fmt(rs) -> str:
            return ", ".join(f"{h}x{w}" for h, w in rs)

        note(f"FVD: real videos are {fmt(res_real)} and generated videos {fmt(res_fake)} (HxW); "
             f"all are resized to {I3D_SIZE}x{I3D_SIZE} for I3D")
    longer = sum(v.shape[0] > num_frames for v in real + fake)
    if longer:
        note(f"FVD over {num_frames} frames: {longer} video(s) are longer; only their first {num_frames} "
             "frames are used")


def fvd_segments(real_videos, fake_videos, i3d: torch.nn.Module | None = None, *, num_frames: int = 16,
                 segment_length: int = SEGMENT_LENGTH, batch_size: int = 8, dtype: torch.dtype | None = None,
                 note: Callable[[str], None] | None = None) -> np.ndarray:
    """FVD of each consecutive ``segment_length``-frame segment of the first ``num_frames`` frames."""
    note = note or logger.warning
    if num_frames < 1 or num_frames % segment_length:
        raise ArdiffError(f"num_frames ({num_frames}) must be a positive multiple of {segment_length}")
    real = _as_video_list(real_videos, "real")
    fake = _as_video_list(fake_videos, "generated")
    _check_sets(real, fake, num_frames, note)
    if i3d is None:
        from .i3d import load_i3d

        i3d = load_i3d()
    values = []
    for s in range(0, num_frames, segment_length):
        fr = i3d_logits([v[s:s + segment_length] for v in real], i3d, batch_size=batch_size, dtype=dtype)
        ff = i3d_logits([v[s:s + segment_length] for v in fake], i3d, batch_size=batch_size, dtype=dtype)
        values.append(frechet_distance_from_features(fr, ff))
    return np.asarray(values)


def fvd(real_videos, fake_videos, i3d: torch.nn.Module | None = None, *, num_frames: int = 16,
        segment_length: int = SEGMENT_LENGTH, batch_size: int = 8, dtype: torch.dtype | None = None,
        note: Callable[[str], None] | None = None) -> float:
    """FVD between two sets of uint8 videos (``[N, T, H, W, 3]`` or lists of ``[T, H, W, 3]``).

    ``num_frames=16`` is FVD_16; ``num_frames=128`` is FVD_128 (mean over 8 consecutive 16-frame
    segments, see the module docstring). ``i3d=None`` loads it with :func:`load_i3d`. ``note`` gets
    one-line remarks (resized resolutions, trimmed videos); default: a logging warning.
    """
    return float(np.mean(fvd_segments(real_videos, fake_videos, i3d, num_frames=num_frames,
                                      segment_length=segment_length, batch_size=batch_size, dtype=dtype,
                                      note=note)))


def fvd_16(real_videos, fake_videos, i3d: torch.nn.Module | None = None, **kwargs) -> float:
    return fvd(real_videos, fake_videos, i3d, num_frames=16, **kwargs)


def fvd_128(real_videos, fake_videos, i3d: torch.nn.Module | None = None, **kwargs) -> float:
    return fvd(real_videos, fake_videos, i3d, num_frames=128, **kwargs)

"""FVD and KVD between sets of videos: I3D features streamed from files or arrays (so long or large videos
never sit in memory at full size), one network load, the distances per segment length."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch

from engine.errors import ArdiffError
from engine.evaluation.clips import video_paths
from engine.metrics.fvd import _i3d_device

SEGMENT = 16  # frames of one standard FVD clip


def load_fvd_network(weights: str | os.PathLike | None = None, device: str = "cpu", *, required: bool = False
                     ) -> tuple[torch.nn.Module | None, str | None]:
    """(I3D, None), or (None, why) when the weights are not at hand. ``required`` (the user named a weight
    file) re-raises instead, so a typo fails at once rather than after the sampling."""
    from engine import metrics
    from engine.errors import WeightsUnavailableError

    from engine.device import resolve_device

    dev = resolve_device(str(device))[0]  # a clear ValueError for anything but auto / cpu / cuda[:i]
    try:
        return metrics.load_i3d(weights, dev), None
    except WeightsUnavailableError as err:
        if required:
            raise
        return None, " ".join(str(err).split())


def _segments(length: int) -> list[tuple[int, int]]:
    """(start, count) pieces that make up the FVD over `length` frames: 16-frame segments for multiples of 16
    (FVD_16, FVD_128 as in engine.metrics.fvd), else the whole length as one I3D clip."""
    if length % SEGMENT == 0:
        return [(start, SEGMENT) for start in range(0, length, SEGMENT)]
    return [(0, length)]


@torch.no_grad()
def video_features(frames: Iterable[np.ndarray], i3d: torch.nn.Module, segments: Sequence[tuple[int, int]]
                   ) -> tuple[dict[tuple[int, int], np.ndarray], int]:
    """I3D features of one video for each (start, count) frame range: ({(start, count): logits [D] float64},
    frames read). Frames (uint8 [H, W, 3]) are preprocessed one by one exactly as ``engine.metrics.fvd`` does
    (224x224 bilinear, [-1, 1]), only as many as the furthest segment needs are read, and segments the video is
    too short for get no features."""
    from engine.metrics import preprocess_clips

    furthest = max(start + count for start, count in segments)
    pieces: list[torch.Tensor] = []
    for frame in frames:
        pieces.append(preprocess_clips([np.array(frame)[None]])[0])  # [3, 1, 224, 224]; a writable copy
        if len(pieces) == furthest:
            break
    seen = len(pieces)
    out: dict[tuple[int, int], np.ndarray] = {}
    device = _i3d_device(i3d)
    for start, count in sorted(set(segments)):
        if start + count > seen:
            continue
        x = torch.cat(pieces[start:start + count], dim=1)[None].to(device)
        logits, _ = i3d(x)
        out[(start, count)] = logits.double().cpu().numpy()[0]
    return out, seen


def _fvd_from(real: list[dict], fake: list[dict], segments: Sequence[tuple[int, int]]) -> float:
    """FVD from per-video feature dicts: the mean over `segments` of the FVD of each (as engine.metrics.fvd)."""
    from engine.metrics import frechet_distance_from_features

    values = []
    for seg in segments:
        values.append(frechet_distance_from_features(np.stack([f[seg] for f in real]),
                                                     np.stack([f[seg] for f in fake])))
    return float(np.mean(values))


def _kvd_from(real: list[dict], fake: list[dict], segments: Sequence[tuple[int, int]]) -> float:
    """KVD from per-video feature dicts: the mean over `segments` of the kernel distance of each (as FVD)."""
    from engine.metrics import kernel_distance

    return float(np.mean([kernel_distance(np.stack([f[seg] for f in real]), np.stack([f[seg] for f in fake]))
                          for seg in segments]))


def fvd_between_files(real: str | os.PathLike | Sequence, fake: str | os.PathLike | Sequence,
                      i3d: torch.nn.Module, frames: int = 16, *, with_128: bool = True,
                      note: Callable[[str], None] | None = None,
                      progress: Callable[[int, int, str], None] | None = None) -> dict[str, float]:
    """FVD and KVD between two sets of videos on disk (folders, files or lists): {"FVD_16": x, "KVD_16": y, ...}.

    ``FVD_<frames>`` is required: every video must have ``frames`` frames. FVD_16 and (``with_128``)
    FVD_128 are added where every video is long enough, each with the KVD on the same segments (unbiased
    with few videos, see engine.metrics.kernel). Only the needed frames are decoded."""
    from engine.metrics.i3d import MIN_FRAMES
    from engine.video_io import iter_frames, probe_video

    note = note or (lambda text: None)
    if frames < MIN_FRAMES:
        raise ArdiffError(f"--frames must be at least {MIN_FRAMES} (I3D needs {MIN_FRAMES} frames per clip), "
                          f"got {frames}")
    sets = {"real": video_paths(real, "real"), "generated": video_paths(fake, "generated")}
    for name, paths in sets.items():
        if len(paths) < 2:
            raise ArdiffError(f"FVD needs at least 2 videos in each set, the {name} set has {len(paths)} "
                              f"(meaningful values need hundreds; papers use 256 or more)")
    lengths = {frames}
    optional = [16] + ([128] if with_128 else [])
    if with_128 and frames < 128:  # decode 128 frames only if every video claims to have them
        claimed = []
        for paths in sets.values():
            for p in paths:
                try:
                    claimed.append(probe_video(p).num_frames)
                except ArdiffError:
                    claimed.append(None)
        if any(n is not None and n < 128 for n in claimed):
            optional.remove(128)
            shortest = min(n for n in claimed if n is not None)
            note(f"FVD_128 not computed: it needs 128 frames per video and the shortest has {shortest}")
    lengths.update(optional)
    total = sum(len(p) for p in sets.values())
    feats: dict[str, list[dict]] = {"real": [], "generated": []}
    sizes: dict[str, set] = {"real": set(), "generated": set()}
    done = 0
    for name, paths in sets.items():
        for path in paths:
            if progress:
                progress(done, total, path.name)
            info = probe_video(path)
            sizes[name].add((info.height, info.width))
            f, seen = video_features(iter_frames(path), i3d, [g for n in lengths for g in _segments(n)])
            if seen < frames:
                raise ArdiffError(f"{name} video {path} has {seen} frames; FVD over --frames {frames} needs "
                                  f"{frames}")
            feats[name].append(f)
            done += 1
    if progress:
        progress(done, total, "")
    if sizes["real"] != sizes["generated"] or len(sizes["real"]) > 1:
        def fmt(s: set) -> str:
            return ", ".join(f"{w}x{h}" for h, w in sorted(s))

        note(f"real videos are {fmt(sizes['real'])} and generated videos {fmt(sizes['generated'])} (WxH): "
             "all are resized to 224x224 for I3D, as FVD always does")
    results = {}
    for length in sorted(lengths):
        everyone = feats["real"] + feats["generated"]
        if all(seg in f for f in everyone for seg in _segments(length)):
            results[f"FVD_{length}"] = _fvd_from(feats["real"], feats["generated"], _segments(length))
            results[f"KVD_{length}"] = _kvd_from(feats["real"], feats["generated"], _segments(length))
        elif length != frames:
            note(f"FVD_{length} not computed: not every video has {length} frames")
    return results


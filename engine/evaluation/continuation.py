"""Evaluate continuations against the real clips: per-horizon PSNR/SSIM, FVD, speed; reports.

    clips = load_clips("data/eval", context=8, frames=24)            # Clip(name, path, frames)
    result = evaluate_continuation(pipe, clips, context=8, frames=24, s_values=[0, 5, 10, 25], steps=50,
                                   seed=0, i3d=load_i3d())
    write_reports(result, "out/eval")                                 # results.md, results.json, horizon.png

What is compared with what (the same for every s and for the baseline):

* every clip is fitted to the model's resolution exactly as the pipeline fits its input (``fit_frames``:
  centre crop + resize); frames ``0 .. context-1`` are the context, frames ``context .. context+frames-1``
  are the ground truth;
* new frame ``h`` (horizon ``h = 1 .. frames``, the h-th frame after the context) is compared with real
  frame ``context + h - 1``; PSNR (dB; ``inf`` for identical frames) and SSIM per frame, then averaged over
  clips per horizon, and over clips and horizons for the "avg" columns;
* the copy-last-frame baseline repeats context frame ``context - 1``;
* the AR-VAE row is the real clip encoded and decoded (temporal decoder over context + truth): what the
  model would score if its latents were exactly right, i.e. the best any DiT can reach through this
  autoencoder. It is a reference, not a competitor, and is not timed.

FVD (``FVD_DEFINITION``): only the ``frames`` NEW frames go into I3D (the context is identical in real and
generated videos and would only dilute the difference). ``fvd`` feeds all of them as one clip (I3D needs
>= 9 frames; logits averaged over time, the standard features); ``fvd_16`` is the standard-length FVD of
new frames 1..16 (when frames > 16); ``fvd_128`` is the module's FVD_128 (mean over eight 16-frame
segments) of new frames 1..128 (when frames >= 128). Real features are computed once and shared by all
rows. With a handful of clips FVD is biased and noisy: compare rows of one report, not with papers.

Timing: wall-clock seconds per clip from the ``continue_video`` call (context encoding included) to its
``Done`` event (all frames decoded), after one untimed warm-up continuation.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from engine.errors import ArdiffError
from engine.run import RunRequest

__all__ = [
    "FVD_DEFINITION",
    "AUTOENCODER_NAME",
    "BASELINE_NAME",
    "Clip",
    "EvalResult",
    "RunResult",
    "evaluate_continuation",
    "find_videos",
    "fvd_between_files",
    "horizons_for",
    "load_clips",
    "load_fvd_network",
    "score_frames",
    "parse_s_values",
    "video_paths",
    "plot_horizon",
    "video_features",
    "write_json",
    "write_markdown",
    "write_reports",
]

BASELINE_NAME = "copy last frame"
AUTOENCODER_NAME = "AR-VAE reconstruction"
SEGMENT = 16
FVD_DEFINITION = (
    "FVD compares only the NEW frames (the context is identical in real and generated videos): `fvd` feeds "
    "all {frames} new frames of every clip to I3D as one clip (Kinetics-400 logits averaged over time), "
    "real = the real next {frames} frames after the {context} context frames, both at the model resolution "
    "{res}x{res} (resized to 224x224 for I3D); `fvd_16` = the same on new frames 1..16 only, `fvd_128` = "
    "mean FVD of the eight 16-frame segments of new frames 1..128 (each where frames allow). `kvd` = the "
    "kernel video distance on the same features as `fvd` (unbiased squared MMD, cubic polynomial kernel, "
    "engine.metrics.kernel): unlike FVD it carries no small-sample bias, so with few clips it is the fairer "
    "comparison between rows; it can be slightly negative when two sets do not differ."
)


# --------------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------------


@dataclass
class Clip:
    """An evaluation clip: its first frames as read (uint8 [T, H, W, 3], source resolution)."""

    name: str
    frames: np.ndarray
    path: str | None = None


def find_videos(folder: str | os.PathLike) -> list[Path]:
    """Video files (by extension) and frame folders (sub-folders holding PNG/JPG frames) directly in `folder`,
    in natural order; hidden entries are ignored."""
    from engine.video_io import VIDEO_EXTENSIONS, list_frame_files, natural_key

    folder = Path(folder)
    if not folder.exists():
        raise ArdiffError(f"{folder}: no such file or folder")
    if not folder.is_dir():
        raise ArdiffError(f"{folder} is not a folder of videos")
    found = []
    for p in folder.iterdir():
        if p.name.startswith("."):
            continue
        if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS:
            found.append(p)
        elif p.is_dir() and list_frame_files(p):
            found.append(p)
    return sorted(found, key=lambda p: natural_key(p.name))


def video_paths(source: str | os.PathLike | Sequence[str | os.PathLike], what: str = "videos") -> list[Path]:
    """A folder of videos, one video (file or frame folder), or a list of them -> paths."""
    from engine.video_io import list_frame_files

    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise ArdiffError(f"{what} {path}: no such file or folder")
        if path.is_dir() and not list_frame_files(path):
            videos = find_videos(path)
            if not videos:
                raise ArdiffError(f"{what} {path} holds no videos (video files or folders of PNG/JPG frames)")
            return videos
        return [path]
    paths = []
    for item in source:
        paths.extend(video_paths(item, what))
    if not paths:
        raise ArdiffError(f"{what}: no videos given")
    return paths


def load_clips(source: str | os.PathLike | Sequence[str | os.PathLike], context: int, frames: int,
               per_video: int = 1) -> list[Clip]:
    """Read ``per_video`` consecutive, non-overlapping clips of ``context + frames`` frames from every video in
    ``source`` (folder, file or list), from its first frame on; a long held-out video then gives several clips.

    A video too short for even one clip raises an ArdiffError naming it and its length; one too short for
    ``per_video`` clips gives as many as it holds."""
    from engine.video_io import read_video

    if per_video < 1:
        raise ArdiffError(f"clips per video must be at least 1, got {per_video}")
    need = context + frames
    clips = []
    for path in video_paths(source, "clips"):
        video = read_video(path, max_frames=need * per_video)
        if len(video) < need:
            raise ArdiffError(f"clip {path} has {len(video)} frames; --context {context} + --frames {frames} "
                              f"needs {need}")
        count = len(video) // need
        for k in range(count):
            name = path.name if count == 1 else f"{path.name}@{k * need}"
            clips.append(Clip(name, video[k * need:(k + 1) * need], str(path)))
    return clips


def parse_s_values(text: str | Iterable[int]) -> list[int]:
    """"0,5,10,25" -> [0, 5, 10, 25] (order kept, duplicates dropped; every s >= 0)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    values: list[int] = []
    for item in items:
        try:
            s = int(str(item).strip())
        except ValueError:
            raise ArdiffError(f"--s takes comma-separated integers such as 0,5,10,25; got {text!r}") from None
        if s < 0:
            raise ArdiffError(f"s must be >= 0, got {s}")
        if s not in values:
            values.append(s)
    if not values:
        raise ArdiffError("--s needs at least one value")
    return values


def horizons_for(frames: int) -> list[int]:
    """The few horizons a report shows as columns: 1, about a quarter, half, and the last frame."""
    return sorted({h for h in (1, round(frames / 4), round(frames / 2), frames) if 1 <= h <= frames})


# --------------------------------------------------------------------------------------------------
# I3D features (streamed, so long or large videos never sit in memory at full size)
# --------------------------------------------------------------------------------------------------


def load_fvd_network(weights: str | os.PathLike | None = None, device: str = "cpu", *, required: bool = False
                     ) -> tuple[torch.nn.Module | None, str | None]:
    """(I3D, None), or (None, why) when the weights are not at hand. ``required`` (the user named a weight
    file) re-raises instead, so a typo fails at once rather than after the sampling."""
    from engine import metrics
    from engine.errors import WeightsUnavailableError

    from engine.pipeline import resolve_device

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


def _i3d_device(i3d: torch.nn.Module) -> torch.device:
    p = next(i3d.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


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


# --------------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    """One row of the report over all clips: a sampling setting (``s``), or (``s`` None) the copy-last-frame
    baseline or the AR-VAE reference (``autoencoder``)."""

    name: str
    s: int | None
    psnr: np.ndarray  # [clips, frames] dB, inf where identical
    ssim: np.ndarray  # [clips, frames] (NaN when the frames are too small for SSIM)
    seconds: np.ndarray  # [clips] wall time per clip
    rows: list[int] = field(default_factory=list)  # network calls per clip (empty for the baseline)
    fvd: dict[str, float] = field(default_factory=dict)
    autoencoder: bool = False

    @property
    def kind(self) -> str:
        return "model" if self.s is not None else "autoencoder" if self.autoencoder else "baseline"

    @property
    def psnr_per_horizon(self) -> np.ndarray:
        return self.psnr.mean(axis=0)

    @property
    def ssim_per_horizon(self) -> np.ndarray:
        return self.ssim.mean(axis=0)

    @property
    def psnr_mean(self) -> float:
        return float(self.psnr.mean())

    @property
    def ssim_mean(self) -> float:
        return float(self.ssim.mean())

    @property
    def seconds_per_clip(self) -> float:
        return float(self.seconds.mean())

    @property
    def frames_per_second(self) -> float | None:
        total = float(self.seconds.sum())
        return self.psnr.size / total if total > 0 else None


@dataclass
class EvalResult:
    """Everything an evaluation measured; ``runs`` holds one RunResult per s, then the baseline."""

    model: str
    resolution: int
    context: int
    frames: int
    steps: int
    seed: int
    s_values: list[int]
    clips: list[dict]
    runs: list[RunResult]
    fvd_missing: str | None = None
    notes: list[str] = field(default_factory=list)
    checkpoint: str | None = None
    history_guidance: float = 1.0

    @property
    def baseline(self) -> RunResult:
        return next(r for r in self.runs if r.kind == "baseline")

    def run(self, s: int) -> RunResult:
        return next(r for r in self.runs if r.s == s)

    @property
    def fvd_definition(self) -> str:
        return FVD_DEFINITION.format(frames=self.frames, context=self.context, res=self.resolution)

    def to_dict(self) -> dict:
        names = [c["name"] for c in self.clips]
        runs = []
        for r in self.runs:
            runs.append({
                "name": r.name, "kind": r.kind, "s": r.s,
                "fvd": dict(r.fvd),
                "psnr_mean": r.psnr_mean, "ssim_mean": r.ssim_mean,
                "psnr_per_horizon": r.psnr_per_horizon.tolist(),
                "ssim_per_horizon": r.ssim_per_horizon.tolist(),
                "seconds_per_clip": r.seconds_per_clip,
                "frames_per_second": r.frames_per_second,
                "per_clip": [
                    {"name": names[i], "psnr": r.psnr[i].tolist(), "ssim": r.ssim[i].tolist(),
                     "psnr_mean": float(r.psnr[i].mean()), "ssim_mean": float(r.ssim[i].mean()),
                     "seconds": float(r.seconds[i]), **({"rows": r.rows[i]} if r.rows else {})}
                    for i in range(len(names))],
            })
        return {
            "ardiff_eval_version": 1,
            "model": self.model,
            "checkpoint": self.checkpoint,
            "resolution": self.resolution,
            "setup": {"context": self.context, "frames": self.frames, "steps": self.steps, "seed": self.seed,
                      "s_values": list(self.s_values), "clip_seed": "seed + clip index",
                      "history_guidance": self.history_guidance},
            "horizons": list(range(1, self.frames + 1)),
            "alignment": (f"horizon h compares new frame h with real frame context + h (1-based), i.e. index "
                          f"{self.context} + h - 1 of the clip; psnr/ssim arrays are indexed by h - 1"),
            "fvd_definition": self.fvd_definition,
            "fvd_missing": self.fvd_missing,
            "timing": "wall seconds per clip, continue_video call to Done, after one untimed warm-up",
            "clips": self.clips,
            "runs": runs,
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------------------------------
# the evaluation
# --------------------------------------------------------------------------------------------------


def score_frames(real: np.ndarray, fake: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PSNR (dB) and SSIM per frame of uint8 [T, H, W, 3] videos (SSIM NaN where frames are below its window)."""
    from engine.metrics import psnr, ssim
    from engine.metrics.image import SSIM_WINDOW

    p = psnr(real, fake)
    if min(real.shape[1:3]) < SSIM_WINDOW:
        return p, np.full(len(real), np.nan)
    return p, ssim(real, fake)


def _autoencoder_row(pipe, fitted: list[np.ndarray], context: int) -> tuple[RunResult, list[np.ndarray]]:
    """The AR-VAE reference: every fitted clip (context + truth) encoded and decoded, scored on the truth."""
    from engine.evaluation.reconstruction import reconstruct

    psnrs, ssims, videos = [], [], []
    for clip in fitted:
        real, recon = reconstruct(pipe, clip)
        p, q = score_frames(real[context:], recon[context:])
        psnrs.append(p)
        ssims.append(q)
        videos.append(recon[context:])
    row = RunResult(AUTOENCODER_NAME, None, np.stack(psnrs), np.stack(ssims), np.zeros(len(fitted)), [],
                    autoencoder=True)
    return row, videos


def evaluate_continuation(pipe, clips: Sequence[Clip | np.ndarray], context: int, frames: int,
                          s_values: Sequence[int], steps: int = 50, seed: int = 0,
                          i3d: torch.nn.Module | None = None, *, fvd_missing: str | None = None,
                          sampler: str = "cached", min_context: int = 1, warmup: bool = True,
                          progress: Callable[[str, int, int, str], None] | None = None,
                          history_guidance: float | None = None) -> EvalResult:
    """Continue every clip from its first ``context`` frames by ``frames`` frames for every s, and compare with
    the real next frames (see the module docstring for the exact alignment and what goes into FVD).

    ``clips``: Clip objects or uint8 arrays [T >= context + frames, H, W, 3] at any resolution (fitted to the
    model's like the pipeline does). Clip i is sampled with seed ``seed + i`` (the same noise for every s).
    ``i3d``: the FVD network, or None (then ``fvd_missing`` says why, in the report). ``progress(what, done,
    total, label)`` gets ("runs", ...) per clip and s, ("rows", ...) per network call, ("fvd", ...) per FVD.
    ``history_guidance``: passed to ``continue_video`` (None: the model's own); the report records the value.
    """
    from engine.metrics import copy_last_frame_baseline
    from engine.metrics.i3d import MIN_FRAMES
    from engine.pipeline import Done, Progress
    from engine.video_io import fit_frames

    # the run every clip and s shares, checked against the model before anything is read or sampled
    base = RunRequest(new_frames=frames, context=context, steps=steps, seed=seed, sampler=sampler,
                      min_context=min_context, history_guidance=history_guidance)
    pipe.check(base)
    s_values = parse_s_values(s_values)
    clips = [c if isinstance(c, Clip) else Clip(f"clip{i}", np.asarray(c)) for i, c in enumerate(clips)]
    if not clips:
        raise ArdiffError("no clips to evaluate")
    need = context + frames
    for c in clips:
        if c.frames.ndim != 4 or c.frames.shape[-1] != 3 or c.frames.dtype != np.uint8:
            raise ArdiffError(f"clip {c.name} must be uint8 [T, H, W, 3], got {c.frames.dtype} {c.frames.shape}")
        if len(c.frames) < need:
            raise ArdiffError(f"clip {c.name} has {len(c.frames)} frames; context {context} + frames {frames} "
                              f"needs {need}")
    report = progress or (lambda what, done, total, label: None)
    res = pipe.resolution
    fitted = [fit_frames(c.frames[:need], res) for c in clips]
    contexts = [f[:context] for f in fitted]
    truths = [f[context:need] for f in fitted]
    notes = []
    src = sorted({c.frames.shape[1:3] for c in clips})
    if any(hw != (res, res) for hw in src):
        notes.append("clips " + ", ".join(f"{w}x{h}" for h, w in src) + f" were centre-cropped and resized to "
                     f"{res}x{res} (the model resolution), context and ground truth alike")

    # FVD: is it possible, and which lengths
    if i3d is not None and len(clips) < 2:
        fvd_missing, i3d = f"FVD needs at least 2 clips, got {len(clips)}", None
    elif i3d is not None and frames < MIN_FRAMES:
        fvd_missing, i3d = (f"FVD needs at least {MIN_FRAMES} new frames per clip (I3D), --frames is {frames}",
                            None)
    elif i3d is None:
        fvd_missing = fvd_missing or "no I3D network was given"
    else:
        fvd_missing = None
    fvd_segments = {"fvd": [(0, frames)]}  # all new frames as one I3D clip
    if frames > SEGMENT:
        fvd_segments["fvd_16"] = [(0, SEGMENT)]
    if frames >= 128:
        fvd_segments["fvd_128"] = _segments(128)
    real_feats: list[dict] | None = None

    def features(videos: list[np.ndarray]) -> list[dict]:
        wanted = [seg for segs in fvd_segments.values() for seg in segs]
        return [video_features(v, i3d, wanted)[0] for v in videos]

    def fvd_row(videos: list[np.ndarray]) -> dict[str, float]:
        nonlocal real_feats
        if real_feats is None:
            real_feats = features(truths)
        fake = features(videos)
        row = {key: _fvd_from(real_feats, fake, segs) for key, segs in fvd_segments.items()}
        row["kvd"] = _kvd_from(real_feats, fake, fvd_segments["fvd"])
        return row

    if warmup:  # one tiny untimed run so lazy initialisation does not land on the first timed clip
        for _ in pipe.continue_video(contexts[0], num_new_frames=1, s=0, steps=1, seed=seed, sampler=base.sampler):
            pass

    runs: list[RunResult] = []
    generated: list[list[np.ndarray]] = []  # new frames per run, for FVD once all timed sampling is over
    total_runs = len(s_values) * len(clips)
    run_index = 0
    for s in s_values:
        psnrs, ssims, secs, rows, videos = [], [], [], [], []
        for i, (ctx, truth) in enumerate(zip(contexts, truths)):
            label = f"s={s} {clips[i].name}"
            report("runs", run_index, total_runs, label)
            start = time.perf_counter()
            done = None
            for event in pipe.continue_video(ctx, num_new_frames=frames, s=s, steps=steps, seed=seed + i,
                                             history_guidance=base.history_guidance,
                                             sampler=base.sampler, min_context=base.min_context):
                if isinstance(event, Progress):
                    report("rows", event.row, event.total_rows, label)
                elif isinstance(event, Done):
                    done = event
            secs.append(time.perf_counter() - start)
            if done is None or done.cancelled:
                raise ArdiffError(f"sampling {label} ended without a full video")
            new = np.asarray(done.video[done.num_context:])
            if new.shape != truth.shape:
                raise ArdiffError(f"{label}: the pipeline returned {new.shape} new frames, expected {truth.shape}")
            p, q = score_frames(truth, new)
            psnrs.append(p)
            ssims.append(q)
            rows.append(int(getattr(done.stats, "rows", 0)))
            videos.append(new)
            run_index += 1
        report("runs", run_index, total_runs, f"s={s} done")
        runs.append(RunResult(f"s={s}", s, np.stack(psnrs), np.stack(ssims), np.asarray(secs), rows))
        generated.append(videos if i3d is not None else [])

    psnrs, ssims, secs, videos = [], [], [], []
    for ctx, truth in zip(contexts, truths):
        start = time.perf_counter()
        new = copy_last_frame_baseline(ctx, frames)
        secs.append(time.perf_counter() - start)
        p, q = score_frames(truth, new)
        psnrs.append(p)
        ssims.append(q)
        videos.append(new)
    runs.append(RunResult(BASELINE_NAME, None, np.stack(psnrs), np.stack(ssims), np.asarray(secs), []))
    generated.append(videos)
    row, videos = _autoencoder_row(pipe, fitted, context)
    runs.append(row)
    generated.append(videos)
    if i3d is not None:
        for k, (run, videos) in enumerate(zip(runs, generated)):
            report("fvd", k, len(runs), f"FVD {run.name}")
            run.fvd = fvd_row(videos)
        report("fvd", len(runs), len(runs), "FVD done")
    del generated

    clip_info = [{"name": c.name, "path": c.path, "source_size": [int(c.frames.shape[2]), int(c.frames.shape[1])],
                  "seed": seed + i} for i, c in enumerate(clips)]
    checkpoint = getattr(getattr(pipe, "checkpoint", None), "path", None)
    guidance = getattr(pipe, "history_guidance", 1.0) if history_guidance is None else history_guidance
    return EvalResult(model=pipe.describe(), resolution=res, context=context, frames=frames, steps=steps,
                      seed=seed, s_values=list(s_values), clips=clip_info, runs=runs, fvd_missing=fvd_missing,
                      notes=notes, checkpoint=str(checkpoint) if checkpoint else None,
                      history_guidance=float(guidance))


# --------------------------------------------------------------------------------------------------
# reports
# --------------------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    text = f"{value:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.000"


def write_markdown(result: EvalResult, path: str | os.PathLike) -> Path:
    """results.md: the paper's Table 2 layout (rows = s, then the baseline; FVD, PSNR/SSIM, time)."""
    from engine.atomic import atomic_path

    hs = horizons_for(result.frames)
    fvd_keys = [k for k in ("fvd", "fvd_16", "fvd_128", "kvd") if any(k in r.fvd for r in result.runs)]
    fvd_titles = {"fvd": f"FVD (new {result.frames})", "fvd_16": "FVD_16 (new 1-16)",
                  "fvd_128": "FVD_128 (new 1-128)", "kvd": f"KVD (new {result.frames})"}
    head = ["s"] + ([fvd_titles[k] for k in fvd_keys] or ["FVD"]) + ["PSNR / SSIM avg"]
    head += [f"PSNR / SSIM @{h}" for h in hs] + ["Inference time (s / clip)", "frames/s"]
    lines = [
        "# Continuation evaluation",
        "",
        f"Model: {result.model}",
        "",
        f"{len(result.clips)} clip(s); context {result.context} frames, {result.frames} new frames, "
        f"DDIM steps {result.steps}, history guidance {result.history_guidance:g}, seed {result.seed} (clip i "
        f"uses seed + i). Frames at {result.resolution}x"
        f"{result.resolution}. PSNR in dB (inf: identical frames), SSIM in [0, 1]; @h = the h-th new frame "
        f"(compared with real frame context + h); avg = mean over all {result.frames} new frames and all clips.",
        "",
        "| " + " | ".join(head) + " |",
        "| " + " | ".join(["---"] + ["---:"] * (len(head) - 1)) + " |",
    ]
    for r in result.runs:
        name = str(r.s) if r.s is not None else r.name
        cells = [name]
        if fvd_keys:
            cells += [_fmt(r.fvd.get(k), 3 if k == "kvd" else 1) for k in fvd_keys]
        else:
            cells.append("n/a")
        cells.append(f"{_fmt(r.psnr_mean)} / {_fmt(r.ssim_mean, 3)}")
        for h in hs:
            cells.append(f"{_fmt(float(r.psnr_per_horizon[h - 1]))} / {_fmt(float(r.ssim_per_horizon[h - 1]), 3)}")
        if r.s is None:
            cells += ["-", "-"]
        else:
            cells += [_fmt(r.seconds_per_clip, 2), _fmt(r.frames_per_second, 1)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "PSNR per horizon: `horizon.png`; every number per clip and per horizon: `results.json`.", ""]
    lines.append(f"**FVD, KVD.** {result.fvd_definition}")
    if result.fvd_missing:
        lines.append(f"FVD is not reported: {result.fvd_missing}")
    elif len(result.clips) < 256:
        lines.append(f"Computed over only {len(result.clips)} clips: biased and noisy, comparable between the "
                     "rows of this table only (papers use 256 or more videos).")
    lines += ["", "**Timing.** Wall-clock seconds per clip from the `continue_video` call (context encoding "
              "included) to the last decoded frame, after one untimed warm-up; frames/s = new frames / time."]
    for note in result.notes:
        lines += ["", f"Note: {note}"]
    lines.append("")
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines), encoding="utf-8")
    return Path(path)


_INF = "\x00ardiff-inf\x00"
_NEG_INF = "\x00ardiff-neg-inf\x00"


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        if math.isnan(v):
            return None
        if math.isinf(v):
            return _INF if v > 0 else _NEG_INF
        return v
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_json(result: EvalResult, path: str | os.PathLike) -> Path:
    """results.json: everything. Strict JSON: infinite PSNR (identical frames) is written as the number 1e999,
    which Python's json and JavaScript read back as infinity; NaN (no SSIM) as null."""
    from engine.atomic import atomic_path

    text = json.dumps(_jsonable(result.to_dict()), indent=2, allow_nan=False)
    text = text.replace(json.dumps(_INF), "1e999").replace(json.dumps(_NEG_INF), "-1e999")
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")
    return Path(path)


def _nice_step(span: float, target: int) -> float:
    raw = max(span, 1e-9) / max(target, 1)
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def plot_horizon(result: EvalResult, path: str | os.PathLike, width: int = 760, height: int = 460) -> Path:
    """horizon.png: mean PSNR (over clips) vs horizon, one line per s plus the baseline (dashed grey) and the
    AR-VAE reference (dashed green), with axes, ticks, labels and a legend. Infinite values (identical frames)
    are drawn on the top edge."""
    from PIL import Image, ImageDraw, ImageFont

    from engine.atomic import atomic_path
    from engine.visualize import colormap

    font = ImageFont.load_default()
    left, right, top, bottom = 62, 170, 34, 50
    x0, x1, y0, y1 = left, width - right, top, height - bottom
    series = [(r, r.psnr_per_horizon) for r in result.runs]
    finite = np.concatenate([v[np.isfinite(v)] for _, v in series])
    any_inf = any(np.isinf(v).any() for _, v in series)
    if finite.size:
        lo, hi = float(finite.min()), float(finite.max())
    else:
        lo, hi = 0.0, 50.0
    if hi - lo < 1.0:
        lo, hi = lo - 0.5, hi + 0.5
    ystep = _nice_step(hi - lo, 6)
    ylo, yhi = math.floor(lo / ystep) * ystep, math.ceil(hi / ystep) * ystep
    if any_inf:
        yhi += ystep  # room on top for the identical frames
    n = result.frames
    xlo, xhi = 1, max(n, 2)

    def px(h: float) -> float:
        return x0 + (h - xlo) / (xhi - xlo) * (x1 - x0)

    def py(v: float) -> float:
        v = yhi if not math.isfinite(v) else v
        return y1 - (v - ylo) / (yhi - ylo) * (y1 - y0)

    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    # grid, ticks and labels
    v = ylo
    while v <= yhi + 1e-9:
        y = py(v)
        d.line([(x0, y), (x1, y)], fill=(232, 232, 232))
        d.line([(x0 - 5, y), (x0, y)], fill="black")
        label = "inf" if any_inf and v > yhi - ystep / 2 else f"{v:g}"
        d.text((x0 - 8 - d.textlength(label, font=font), y - 6), label, fill="black", font=font)
        v += ystep
    xstep = max(1, int(_nice_step(xhi - xlo, 10)))
    ticks = sorted({1, *range(xstep, n + 1, xstep), n}) if n > 1 else [1]
    for h in ticks:
        x = px(h)
        d.line([(x, y1), (x, y1 + 5)], fill="black")
        label = str(h)
        d.text((x - d.textlength(label, font=font) / 2, y1 + 8), label, fill="black", font=font)
    d.rectangle([x0, y0, x1, y1], outline="black")
    xlabel = f"horizon: new frame h after {result.context} context frames"
    d.text(((x0 + x1) / 2 - d.textlength(xlabel, font=font) / 2, y1 + 26), xlabel, fill="black", font=font)
    d.text((6, y0 - 22), "PSNR (dB)", fill="black", font=font)
    title = f"PSNR vs horizon, mean over {len(result.clips)} clip(s)"
    d.text(((x0 + x1) / 2 - d.textlength(title, font=font) / 2, 10), title, fill="black", font=font)
    # lines
    model_runs = [r for r in result.runs if r.s is not None]
    colours = {AUTOENCODER_NAME: (60, 140, 90)}  # the baseline stays grey
    for i, r in enumerate(model_runs):
        t = 0.85 * i / max(len(model_runs) - 1, 1)
        colours[r.name] = tuple(int(c) for c in colormap(np.array([t]))[0])
    for r, values in series:
        colour = colours.get(r.name, (128, 128, 128))
        pts = [(px(h), py(float(values[h - 1]))) for h in range(1, n + 1) if not math.isnan(values[h - 1])]
        if r.s is None:  # dashed
            for (ax, ay), (bx, by) in zip(pts, pts[1:]):
                steps = max(int(math.hypot(bx - ax, by - ay) // 6), 1)
                for k in range(0, steps, 2):
                    f0, f1 = k / steps, min((k + 1) / steps, 1.0)
                    d.line([(ax + (bx - ax) * f0, ay + (by - ay) * f0), (ax + (bx - ax) * f1, ay + (by - ay) * f1)],
                           fill=colour, width=2)
        elif len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        if n <= 48 or len(pts) <= 1:
            for x, y in pts:
                d.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=colour)
    # legend
    lx, ly = x1 + 14, y0 + 4
    d.rectangle([lx - 6, ly - 6, width - 8, ly + 18 * len(series) + 2], outline=(160, 160, 160))
    for r, _ in series:
        colour = colours.get(r.name, (128, 128, 128))
        if r.s is None:
            d.line([(lx, ly + 6), (lx + 8, ly + 6)], fill=colour, width=2)
            d.line([(lx + 14, ly + 6), (lx + 22, ly + 6)], fill=colour, width=2)
        else:
            d.line([(lx, ly + 6), (lx + 22, ly + 6)], fill=colour, width=2)
        d.text((lx + 28, ly), r.name, fill="black", font=font)
        ly += 18
    if any_inf:
        d.text((lx - 6, ly + 10), "inf: identical frames", fill=(90, 90, 90), font=font)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return Path(path)


def write_reports(result: EvalResult, out_dir: str | os.PathLike) -> dict[str, Path]:
    """results.md, results.json and horizon.png in `out_dir` (created if needed)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return {"markdown": write_markdown(result, out / "results.md"), "json": write_json(result, out / "results.json"),
            "plot": plot_horizon(result, out / "horizon.png")}

"""Continue real clips for several s and score the new frames against the real ones: per-horizon PSNR/SSIM,
FVD, speed, with the copy-last-frame baseline and the AR-VAE reference beside them.

    clips = load_clips("data/eval", context=8, frames=24)            # engine.evaluation.clips
    result = evaluate_continuation(pipe, clips, context=8, frames=24, s_values=[0, 5, 10, 25], steps=50,
                                   seed=0, i3d=load_i3d())
    write_reports(result, "out/eval")                # engine.evaluation.reports: results.md, .json, horizon.png

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

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from engine.errors import ArdiffError
from engine.evaluation.clips import Clip
from engine.evaluation.fvd_runs import SEGMENT, _fvd_from, _kvd_from, _segments, video_features
from engine.metrics.image import score_frames
from engine.run import RunRequest

__all__ = [
    "FVD_DEFINITION",
    "AUTOENCODER_NAME",
    "BASELINE_NAME",
    "EvalResult",
    "RunResult",
    "evaluate_continuation",
    "horizons_for",
    "parse_s_values",
]

BASELINE_NAME = "copy last frame"
AUTOENCODER_NAME = "AR-VAE reconstruction"
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
# what is run
# --------------------------------------------------------------------------------------------------


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





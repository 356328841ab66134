"""What "adapt to this clip" gains on real clips: every video continued with and without adapting, the new
frames scored against the frames that really came next.

    result = evaluate_adaptation(pipe, video_paths("data/eval"), RunRequest(new_frames=16, adapt_steps=150))
    write_adaptation_report(result, "out/eval-adapt")          # results.md, results.json

Per video: its last `new_frames` frames are the truth; the frames before them (at most ADAPT_CLIP_FRAMES) are
the person's clip, which adapting learns from (holding out its own last frames, engine.adapt) and whose last
`context` frames both runs continue, with the same seed. The copy-last-frame baseline repeats the clip's
last frame. Mean PSNR/SSIM over the new frames at the model resolution, as `ardiff eval continue` scores.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from engine.adapt import ADAPT_CLIP_FRAMES
from engine.errors import ArdiffError
from engine.metrics.image import copy_last_frame_baseline, mean_psnr_db, score_frames
from engine.run import RunRequest


@dataclass
class ClipAdaptation:
    """One video's numbers: mean PSNR (dB) / SSIM over the new frames, with and without adapting."""

    name: str
    clip_frames: int  # frames of the person's clip (what adapting could learn from)
    kept: bool
    message: str
    held_out_before: float
    held_out_after: float
    held_out_psnr_before: float  # dB of each DiT's continuation of the clip's own held-out frames (the check)
    held_out_psnr_after: float
    psnr_plain: float
    psnr_adapted: float
    psnr_copy_last: float
    ssim_plain: float
    ssim_adapted: float
    adapt_seconds: float

    @property
    def gain(self) -> float:
        """PSNR with adapting minus without (dB): the number the person feels."""
        return self.psnr_adapted - self.psnr_plain


@dataclass
class AdaptationResult:
    model: str
    request: RunRequest
    clips: list[ClipAdaptation]

    def mean(self, name: str) -> float:
        return float(np.mean([getattr(c, name) for c in self.clips]))


def _continue(pipe, request: RunRequest, frames: np.ndarray) -> tuple[np.ndarray, dict, float]:
    """The new frames of one run, its Adapted event's fields (empty without adapting), and the adapting time."""
    from engine.pipeline import Adapted, Adapting, Done

    adapted, adapt_seconds, video = {}, 0.0, None
    for event in pipe.run(request, frames):
        if isinstance(event, Adapting):
            adapt_seconds = event.elapsed
        elif isinstance(event, Adapted):
            adapted = asdict(event)
        elif isinstance(event, Done):
            video = event.video[event.num_context:]
    return video, adapted, adapt_seconds


def evaluate_adaptation(pipe, videos: Sequence[str | os.PathLike], request: RunRequest,
                        progress: Callable[[int, int, str], None] | None = None) -> AdaptationResult:
    """Continue every video's clip by `request.new_frames` frames with and without `request.adapt_steps` of
    adapting; ArdiffError before any work when a video is too short."""
    from engine.adapt import split_clip
    from engine.video_io import fit_frames, read_video

    if request.adapt_steps < 1:
        raise ArdiffError("evaluating adaptation needs adapt steps >= 1")
    pipe.check(request)
    need = request.new_frames
    loaded = []
    for path in videos:
        video = read_video(path, max_frames=ADAPT_CLIP_FRAMES + need)
        clip, truth = video[:-need], video[-need:]
        if len(clip) < request.context:
            raise ArdiffError(f"{path} has {len(video)} frames: too few for a {request.context}-frame context and "
                              f"{need} frames of truth")
        split_clip(len(clip), pipe.window)  # too short to hold frames out: refused here, before any run
        loaded.append((Path(path).name, clip, fit_frames(truth, pipe.resolution)))
    results = []
    for i, (name, clip, truth) in enumerate(loaded):
        if progress:
            progress(i, len(loaded), name)
        plain, _, _ = _continue(pipe, replace(request, adapt_steps=0), clip)
        adapted, event, seconds = _continue(pipe, request, clip)
        copy = copy_last_frame_baseline(fit_frames(clip[-1:], pipe.resolution), need)
        (p_plain, s_plain), (p_adapt, s_adapt) = score_frames(truth, plain), score_frames(truth, adapted)
        p_copy, _ = score_frames(truth, copy)
        results.append(ClipAdaptation(
            name, len(clip), event["kept"], event["message"], event["held_out_before"], event["held_out_after"],
            event["psnr_before"], event["psnr_after"], mean_psnr_db(p_plain), mean_psnr_db(p_adapt),
            mean_psnr_db(p_copy), float(np.nanmean(s_plain)),
            float(np.nanmean(s_adapt)), seconds))
    if progress:
        progress(len(loaded), len(loaded), "done")
    return AdaptationResult(pipe.describe(), request, results)


def write_adaptation_report(result: AdaptationResult, out_dir: str | os.PathLike) -> dict[str, Path]:
    """results.md (per clip and mean) and results.json in `out_dir`."""
    from engine.atomic import atomic_path

    r = result.request
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# Adapt to this clip", "", f"Model: {result.model}", "",
             f"{len(result.clips)} video(s); each video's last {r.new_frames} frames are the truth, the frames "
             f"before them (at most {ADAPT_CLIP_FRAMES}) the clip; context {r.context}, s {r.s}, {r.steps} steps, "
             f"seed {r.seed}, {r.adapt_steps} adapt steps. PSNR (dB) / SSIM: mean over the new frames.", "",
             "The check (engine.adapt) scores both DiTs on the clip's own held-out last frames: the denoising loss, "
             "and the PSNR of their continuation; the adapted DiT is kept only when both improve.", "",
             "| video | clip frames | kept | check: loss before -> after | check: PSNR before -> after | "
             "PSNR without | PSNR with | gain | copy last | SSIM without | SSIM with | adapt s |",
             "| --- | ---: | :---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for c in result.clips:
        lines.append(f"| {c.name} | {c.clip_frames} | {'yes' if c.kept else 'no'} | {c.held_out_before:.4f} -> "
                     f"{c.held_out_after:.4f} | {c.held_out_psnr_before:.2f} -> {c.held_out_psnr_after:.2f} | "
                     f"{c.psnr_plain:.2f} | {c.psnr_adapted:.2f} | {c.gain:+.2f} | "
                     f"{c.psnr_copy_last:.2f} | {c.ssim_plain:.3f} | {c.ssim_adapted:.3f} | {c.adapt_seconds:.0f} |")
    lines.append(f"| **mean** | | {sum(c.kept for c in result.clips)}/{len(result.clips)} | | | "
                 f"{result.mean('psnr_plain'):.2f} | {result.mean('psnr_adapted'):.2f} | "
                 f"{result.mean('gain'):+.2f} | {result.mean('psnr_copy_last'):.2f} | "
                 f"{result.mean('ssim_plain'):.3f} | {result.mean('ssim_adapted'):.3f} | "
                 f"{result.mean('adapt_seconds'):.0f} |")
    data = {"model": result.model, "request": asdict(r),
            "clips": [{**asdict(c), "gain": c.gain} for c in result.clips]}
    paths = {"markdown": out / "results.md", "json": out / "results.json"}
    with atomic_path(paths["markdown"]) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with atomic_path(paths["json"]) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return paths


"""How well the AR-VAE reproduces real frames: PSNR and SSIM of encode -> decode at the model resolution.

    clips = load_clips("data/eval", context=0, frames=32)
    result = evaluate_reconstruction(pipe, clips)
    write_reconstruction_report(result, "out/eval-vae")          # results.md, results.json

Every clip is fitted to the model resolution exactly as the pipeline fits its input; the reference is that
fitted frame, so the numbers measure the autoencoder alone, not the resize. Decoding is the temporal
(causal) decoder over the whole clip, as in sampling, so frame i sees latents i - W + 1 .. i.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.errors import ArdiffError


@dataclass
class ReconstructionResult:
    """Per clip and frame PSNR (dB) and SSIM of the VAE's reconstruction."""

    model: str
    resolution: int
    clip_names: list[str]
    psnr: np.ndarray  # [clips, frames]
    ssim: np.ndarray  # [clips, frames]

    @property
    def psnr_mean(self) -> float:
        return float(np.mean(self.psnr))

    @property
    def ssim_mean(self) -> float:
        return float(np.nanmean(self.ssim))

    def to_dict(self) -> dict:
        return {"model": self.model, "resolution": self.resolution, "psnr_mean": self.psnr_mean,
                "ssim_mean": self.ssim_mean,
                "clips": [{"name": n, "psnr": float(np.mean(p)), "ssim": float(np.nanmean(s))}
                          for n, p, s in zip(self.clip_names, self.psnr, self.ssim)]}


@torch.no_grad()
def reconstruct(pipe, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [N, H, W, 3] at any size -> (fitted frames, their reconstruction), both uint8 at the model size."""
    from engine.frames import tensor_to_frames

    fitted, latents = pipe.encode_frames(frames)
    with pipe.autocast():
        return fitted, tensor_to_frames(pipe.vae.decode(latents)[0])


def evaluate_reconstruction(pipe, clips: Sequence, progress: Callable[[int, int, str], None] | None = None
                            ) -> ReconstructionResult:
    """Reconstruct every clip (``Clip`` objects or uint8 arrays of equal length) and score each frame."""
    from engine.evaluation.clips import Clip
    from engine.metrics.image import score_frames

    clips = [c if isinstance(c, Clip) else Clip(f"clip{i}", np.asarray(c)) for i, c in enumerate(clips)]
    if not clips:
        raise ArdiffError("no clips to reconstruct")
    lengths = {len(c.frames) for c in clips}
    if len(lengths) != 1:
        raise ArdiffError(f"clips must have the same number of frames, got {sorted(lengths)}")
    psnrs, ssims = [], []
    for i, clip in enumerate(clips):
        if progress:
            progress(i, len(clips), clip.name)
        real, fake = reconstruct(pipe, clip.frames)
        p, s = score_frames(real, fake)
        psnrs.append(p)
        ssims.append(s)
    if progress:
        progress(len(clips), len(clips), "done")
    return ReconstructionResult(pipe.describe(), pipe.resolution, [c.name for c in clips], np.stack(psnrs),
                                np.stack(ssims))


def write_reconstruction_report(result: ReconstructionResult, out_dir: str | os.PathLike) -> dict[str, Path]:
    """results.md (mean and per clip) and results.json in ``out_dir``."""
    from engine.atomic import atomic_path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clips, frames = result.psnr.shape
    lines = ["# AR-VAE reconstruction", "", f"Model: {result.model}", "",
             f"{clips} clip(s) of {frames} frames at {result.resolution}x{result.resolution}, encoded and decoded "
             "(temporal decoder over the whole clip); PSNR in dB and SSIM per frame, averaged.", "",
             f"**Mean: PSNR {result.psnr_mean:.2f} dB, SSIM {result.ssim_mean:.3f}**", "",
             "| clip | PSNR | SSIM |", "| --- | ---: | ---: |"]
    for name, p, s in zip(result.clip_names, result.psnr, result.ssim):
        lines.append(f"| {name} | {np.mean(p):.2f} | {np.nanmean(s):.3f} |")
    paths = {"markdown": out / "results.md", "json": out / "results.json"}
    with atomic_path(paths["markdown"]) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with atomic_path(paths["json"]) as tmp:
        tmp.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    return paths

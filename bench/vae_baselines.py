"""Linear baselines for the AR-VAE: what PCA codes of the same size reach on held-out frames.

A learned autoencoder should beat the best linear code with as many numbers per frame. Two kinds:
global PCA of whole 64x64 frames (k numbers per frame) and local PCA of the 16x16 regions a `local_latents`
VAE codes (k numbers per region, 16 regions). Both are fitted on training frames and scored (PSNR, as
`ardiff eval vae`) on held-out clips.

    .venv/bin/python bench/vae_baselines.py --train data/vae-64 --eval data/eval-real-64
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.evaluation.clips import load_clips  # noqa: E402
from engine.metrics.image import score_frames  # noqa: E402
from engine.video_io import list_frame_files, read_image  # noqa: E402


def regions(x: np.ndarray, side: int) -> np.ndarray:
    """[N, H, W, 3] -> [N * (H / side) * (W / side), side * side * 3], row-major regions."""
    n, h, w, _ = x.shape
    r = x.reshape(n, h // side, side, w // side, side, 3).transpose(0, 1, 3, 2, 4, 5)
    return r.reshape(-1, side * side * 3)


def unregions(r: np.ndarray, n: int, size: int, side: int) -> np.ndarray:
    g = size // side
    return r.reshape(n, g, g, side, side, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n, size, size, 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", required=True, help="folder of training frame folders (ardiff-train prepare)")
    ap.add_argument("--eval", required=True, help="held-out clips (folder of videos or frame folders)")
    ap.add_argument("--every", type=int, default=3, help="fit on every k-th training frame")
    ap.add_argument("--region", type=int, default=16, help="local PCA region side in pixels")
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--clips-per-video", type=int, default=4)
    args = ap.parse_args()
    torch.manual_seed(0)
    files = [f for d in sorted(Path(args.train).iterdir()) if d.is_dir() for f in list_frame_files(d)]
    train = np.stack([read_image(f) for f in files[::args.every]]).astype(np.float32) / 127.5 - 1
    size = train.shape[1]
    clips = load_clips(args.eval, 0, args.frames, args.clips_per_video)
    print(f"fit on {len(train)} frames of {args.train}; scored on {len(clips)} clips of {args.eval}\n")
    print("| code | numbers per frame | held-out PSNR (dB) |\n| --- | ---: | ---: |")
    for kind, ks in (("global", (64, 256, 1024)), ("local", (16, 32, 64))):
        data = train.reshape(len(train), -1) if kind == "global" else regions(train, args.region)
        x = torch.from_numpy(data)
        mean = x.mean(0)
        _, _, v = torch.svd_lowrank(x - mean, q=max(ks) + 16, niter=3)
        per_frame = 1 if kind == "global" else (size // args.region) ** 2
        for k in ks:
            basis = v[:, :k]
            psnrs = []
            for clip in clips:
                real = clip.frames.astype(np.float32) / 127.5 - 1
                flat = real.reshape(len(real), -1) if kind == "global" else regions(real, args.region)
                y = (((torch.from_numpy(flat) - mean) @ basis) @ basis.T + mean).numpy()
                y = y.reshape(real.shape) if kind == "global" else unregions(y, len(real), size, args.region)
                fake = ((y + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
                psnrs.append(score_frames(clip.frames, fake)[0].mean())
            what = f"{kind} PCA, {k} per frame" if kind == "global" else f"local PCA, {k} per {args.region}px region"
            print(f"| {what} | {k * per_frame} | {np.mean(psnrs):.2f} |")


if __name__ == "__main__":
    main()

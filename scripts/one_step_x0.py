"""How well does a model's DiT use its context? One denoising call, measured against repeating the last frame.

For every 9-frame window of each clip (frames 0-8, 8-16, ...), the first 8 frames are given clean and the 9th
at noise level t; the DiT's one-step x0 for the 9th frame is compared with the real one, in latent space (MSE)
and, decoded, in pixels (PSNR). The baselines are the 8th frame's latent ("repeat the last frame") and the
AR-VAE's own reconstruction. At t = T the one-step x0 is the DiT's best single guess of the next frame; a DiT
that has learned to continue slow footage should be at least as close as the repeated last frame.

    .venv/bin/python scripts/one_step_x0.py [--checkpoint PATH] CLIP_DIR_OR_VIDEO [...]

Used for the model card's "Tried, measured, not shipped: x0-prev" section.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from engine.metrics.image import psnr
from engine.frames import tensor_to_frames as to_uint8_frames
from engine.pipeline import load_pipeline
from engine.video_io import read_video

CONTEXT = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("clips", nargs="+", help="videos or folders of numbered frames")
    parser.add_argument("--checkpoint", default=None, help="model (default: the embedded one)")
    parser.add_argument("--levels", default="1000,800,500,200,50", help="noise levels t to measure")
    parser.add_argument("--max-frames", type=int, default=32, help="frames read from each clip")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    levels = [int(t) for t in args.levels.split(",")]
    pipe = load_pipeline(args.checkpoint, device="cpu", precision="fp32")
    generator = torch.Generator().manual_seed(args.seed)
    latent_mse = {t: [] for t in levels}
    pixel_psnr = {t: [] for t in levels}
    copy_mse, copy_psnr, recon_psnr = [], [], []
    for clip in args.clips:
        frames = read_video(clip, max_frames=args.max_frames)
        for start in range(0, len(frames) - CONTEXT, CONTEXT):
            real, z = pipe.encode_frames(frames[start:start + CONTEXT + 1])
            if len(real) < CONTEXT + 1:
                continue
            target = real[CONTEXT:CONTEXT + 1]
            for level in levels:
                t = torch.zeros(1, CONTEXT + 1, dtype=torch.long)
                t[0, CONTEXT] = level
                noise = torch.randn(z[:, CONTEXT:].shape, generator=generator)
                z_t = pipe.schedule.q_sample(z, t, torch.cat([torch.zeros_like(z[:, :CONTEXT]), noise], 1))
                with torch.no_grad():
                    out = pipe.dit(z_t, t)
                    if pipe.config.diffusion.prediction == "x0-prev":
                        out = out + pipe.schedule.previous_frame_term(z_t, t)
                    guess = torch.cat([z[:, :CONTEXT], out[:, CONTEXT:]], 1)
                    image = to_uint8_frames(pipe.vae.decode(guess)[0, CONTEXT:])
                latent_mse[level].append(float((out[:, CONTEXT] - z[:, CONTEXT]).pow(2).mean()))
                pixel_psnr[level].append(float(psnr(image, target)[0]))
            with torch.no_grad():
                recon = to_uint8_frames(pipe.vae.decode(z)[0, CONTEXT:])
            recon_psnr.append(float(psnr(recon, target)[0]))
            copy_mse.append(float((z[:, CONTEXT - 1] - z[:, CONTEXT]).pow(2).mean()))
            copy_psnr.append(float(psnr(real[CONTEXT - 1:CONTEXT], target)[0]))
    if not copy_mse:
        raise SystemExit(f"no clip had {CONTEXT + 1} frames")
    print(f"{pipe.describe()}; {len(copy_mse)} windows of {CONTEXT} + 1 frames")
    print("| next-frame guess | latent MSE | PSNR dB |\n| --- | ---: | ---: |")
    for level in levels:
        print(f"| DiT one-step x0 at t = {level} | {np.mean(latent_mse[level]):.4f} | {np.mean(pixel_psnr[level]):.2f} |")
    print(f"| repeat the last frame | {np.mean(copy_mse):.4f} | {np.mean(copy_psnr):.2f} |")
    print(f"| AR-VAE reconstruction | 0 | {np.mean(recon_psnr):.2f} |")


if __name__ == "__main__":
    main()

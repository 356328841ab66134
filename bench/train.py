"""Training throughput of ardiff-train: clips/s, tokens/s and achieved FLOP/s per stage and precision, plus
how long each step waits for data (DataLoader workers on).

It runs the real loop (`trainer.train.train`: data, forward, backward, clip, AdamW, EMA) for a few steps per
setting, in a temporary run dir, and reports the median over the steps after the first (warm-up). FLOPs
per step are counted once per stage with torch.utils.flop_counter (forward + backward of the trained
network, plus the frozen VAE encode in the diffusion stage).

    .venv/bin/python bench/train.py                              # default preset, both stages, fp32 vs bf16
    .venv/bin/python bench/train.py --stages diffusion --steps 6 --batch-size 8 --workers 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.models.arvae import ARVAE  # noqa: E402
from engine.models.dit import DiT  # noqa: E402
from engine.device import cpu_supports_bf16  # noqa: E402
from trainer.config import load_config, stage_num_frames  # noqa: E402
from trainer.sources import model_config  # noqa: E402
from trainer.train import train  # noqa: E402


def step_flops(stage: str, cfg, batch: int) -> float:
    """FLOPs of one micro-step (forward + backward of the trained network; + the frozen encode)."""
    from torch.utils.flop_counter import FlopCounterMode

    mc = model_config(cfg)
    F = stage_num_frames(cfg, mc)
    size = mc.vae.image_size
    x = torch.rand(batch, F, 3, size, size) * 2 - 1
    with FlopCounterMode(display=False) as counter:
        if stage == "diffusion":
            vae, dit = ARVAE(mc.vae), DiT(mc)
            with torch.no_grad():
                z = vae.encode(x)
            t = torch.randint(0, mc.diffusion.num_timesteps + 1, (batch, F))
            dit(z, t).pow(2).mean().backward()
        else:
            ARVAE(mc.vae)(x).abs().mean().backward()
    return float(counter.get_total_flops())


def tokens_per_clip(stage: str, cfg) -> int:
    mc = model_config(cfg)
    F = stage_num_frames(cfg, mc)
    if stage == "diffusion":
        return F * mc.vae.num_latent_tokens  # DiT tokens
    return F * (mc.vae.num_patches + mc.vae.num_latent_tokens)  # VAE encoder tokens per frame


def run(stage: str, precision: str, args, vae_dir: Path | None, root: Path) -> dict:
    sets = [f"preset={args.preset}", f"precision={precision}", f"batch_size={args.batch_size}",
            f"max_steps={args.steps}", "log_every=1", "checkpoint_every=1000000", "progress=false",
            f"num_workers={args.workers}", "latent_scale_samples=8", f"data={args.data}", "gan=false"]
    if stage == "diffusion":
        sets.append(f"vae={vae_dir}")
    cfg = load_config(stage, args.config, sets)
    t0 = time.perf_counter()
    result = train(cfg, root / f"{stage}-{precision}")
    wall = time.perf_counter() - t0
    recs = result.records[1:] or result.records  # drop the first step (warm-up, worker start)
    step_s = statistics.median(1.0 / r["steps_per_s"] for r in recs)
    step_s_min = min(1.0 / r["steps_per_s"] for r in recs)  # least disturbed by other processes
    wait_s = statistics.median(r["data_wait_s"] for r in recs)
    clips = args.batch_size / step_s
    flops = step_flops(stage, cfg, args.batch_size)
    return {"stage": stage, "precision": precision, "batch_size": args.batch_size, "steps": args.steps,
            "workers": args.workers, "step_s": step_s, "step_s_min": step_s_min, "clips_per_s": clips,
            "tokens_per_s": clips * tokens_per_clip(stage, cfg), "flop_per_step": flops,
            "achieved_gflop_per_s": flops / step_s / 1e9, "data_wait_s": wait_s,
            "data_wait_frac": wait_s / step_s, "wall_s": wall}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="default")
    p.add_argument("--config", default="default", help="config whose per-stage recipe is used")
    p.add_argument("--stages", default="vae-image,diffusion")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--data", default="synthetic:bouncing")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, AMX/AVX512-BF16: {cpu_supports_bf16()}, "
          f"CUDA: {torch.cuda.is_available()}", file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        vae_dir = None
        stages = args.stages.split(",")
        if "diffusion" in stages:  # any VAE of the preset will do for throughput
            cfg = load_config("vae-image", args.config, [f"preset={args.preset}", "max_steps=1", "progress=false",
                                                         "latent_scale_samples=8", "precision=fp32",
                                                         f"data={args.data}", "batch_size=2"])
            vae_dir = root / "vae"
            train(cfg, vae_dir)
        for stage in stages:
            for precision in args.precisions.split(","):
                rows.append(run(stage, precision, args, vae_dir, root))
                r = rows[-1]
                print(f"{stage:10s} {precision:5s} batch {r['batch_size']:3d}: {r['step_s']:.3f} s/step "
                      f"(min {r['step_s_min']:.3f}), "
                      f"{r['clips_per_s']:.2f} clips/s, {r['tokens_per_s']:.0f} tokens/s, "
                      f"{r['achieved_gflop_per_s']:.1f} GFLOP/s ({r['flop_per_step'] / 1e9:.1f} GFLOP/step), "
                      f"data wait {r['data_wait_s'] * 1e3:.1f} ms/step ({100 * r['data_wait_frac']:.1f}%)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

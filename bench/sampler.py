"""Reference vs cached sampler: wall time and frame-forwards for the `default` preset (random weights).

Targets (pipeline issue): the cached sampler faster everywhere and at least 8x faster at s = 50, N = 128;
time(N = 128) / time(N = 16) at s = 5 at most 8.5x. Also the streaming rate of the whole pipeline
(decode included) after the first frame at n = 50, s = 5.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import nullcontext

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import header  # noqa: E402
from engine.checkpoint import Checkpoint  # noqa: E402
from engine.diffusion import DiffusionSchedule  # noqa: E402
from engine.models import build_models, get_preset  # noqa: E402
from engine.pipeline import FrameReady, Pipeline  # noqa: E402
from engine.schedulers import ADScheduler  # noqa: E402
from engine.sampling import make_sampler  # noqa: E402


def random_models(preset: str):
    torch.manual_seed(0)
    cfg = get_preset(preset)
    vae, dit = build_models(cfg)
    for p in dit.parameters():  # live adaLN paths, as after training
        torch.nn.init.normal_(p, std=0.02)
    return cfg, vae.eval(), dit.eval()


def time_sampler(name, dit, cfg, N, s, steps, dtype):
    ctx = nullcontext() if dtype == "fp32" else torch.autocast("cpu", dtype=torch.bfloat16)
    sampler = make_sampler(name, dit, DiffusionSchedule(), ADScheduler(steps, s, cfg.window, 1))
    noise = torch.randn(1, N, cfg.vae.num_latent_tokens, cfg.vae.latent_dim, generator=torch.Generator().manual_seed(0))
    empty = noise[:, :0]
    start = time.perf_counter()
    with torch.no_grad(), ctx:
        for _ in sampler.sample(empty, noise):
            pass
    return time.perf_counter() - start, sampler


def streaming(cfg, vae, dit, steps: int, s: int, context: int, new: int) -> tuple[float, float]:
    pipe = Pipeline(Checkpoint(vae, dit, cfg), torch.device("cpu"), None)
    frames = np.random.default_rng(0).integers(0, 256, (context, 64, 64, 3), dtype=np.uint8)
    start = time.perf_counter()
    first = None
    for event in pipe.continue_video(frames, num_new_frames=new, s=s, steps=steps):
        if isinstance(event, FrameReady) and first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    return first - start, (new - 1) / (end - first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="default")
    parser.add_argument("--frames", default="16,128")
    parser.add_argument("--s", default="0,5,10,25,50")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--dtypes", default="fp32")
    parser.add_argument("--samplers", default="cached,reference")
    parser.add_argument("--no-streaming", action="store_true")
    args = parser.parse_args()
    cfg, vae, dit = random_models(args.preset)
    print(header(f"Sampler, preset {args.preset}, n = {args.steps}"))
    print("| dtype | N | s | rows | reference s | cached s | speed-up | reference frame-fwd | cached frame-fwd "
          "| cached max abs diff |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    samplers = args.samplers.split(",")
    for dtype in args.dtypes.split(","):
        for N in map(int, args.frames.split(",")):
            for s in map(int, args.s.split(",")):
                results = {name: time_sampler(name, dit, cfg, N, s, args.steps, dtype) for name in samplers}
                fast_t, fast = results["cached"]
                ref_t, ref = results.get("reference", (float("nan"), None))
                diff = (fast.latents - ref.latents).abs().max().item() if ref else float("nan")
                print(f"| {dtype} | {N} | {s} | {fast.stats.rows} | {ref_t:.2f} | {fast_t:.2f} | "
                      f"{ref_t / fast_t:.1f}x | {ref.stats.frame_forwards if ref else '-'} | "
                      f"{fast.stats.frame_forwards} | {diff:.1e} |", flush=True)
    if not args.no_streaming:
        latency, rate = streaming(cfg, vae, dit, args.steps, 5, 8, 32)
        print(f"\nStreaming (pipeline, decode included, 8 context + 32 new, s = 5, n = {args.steps}, fp32): "
              f"first frame after {latency:.2f} s, then {rate:.1f} frames/s")


if __name__ == "__main__":
    main()

"""Reference vs cached sampler: wall time and frame-forwards for a preset (random weights) or a checkpoint.

The cached sampler runs eagerly and, with --backends, with its one-frame DiT calls (and window refreshes)
compiled by AOTInductor in-process (`compile`, engine.backends.compiled) or on the graphs `ardiff-export` writes
(`aoti`, `onnx`): the reference stays
eager, the oracle. Backend `null` stands in a DiT that costs nothing (it hands back its input and zero
keys/values): its time is the sampler's own work, the floor under every other backend (its latents are
not compared). Exports are made once into --workdir (shared with bench/export.py) and reused; the compile
time is printed (Inductor's on-disk cache makes it shorter the second time).

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
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import header  # noqa: E402
from bench.export import get_export, make_checkpoint  # noqa: E402
from engine.backends import export as E  # noqa: E402
from engine.checkpoint import Checkpoint, load_checkpoint  # noqa: E402
from engine.backends.compiled import CompiledDiT  # noqa: E402
from engine.diffusion import DiffusionSchedule  # noqa: E402
from engine.pipeline import FrameReady, Pipeline  # noqa: E402
from engine.schedulers import ADScheduler  # noqa: E402
from engine.sampling import make_sampler  # noqa: E402
from engine.backends.step_dit import StepDiT  # noqa: E402


def autocast(dtype: str):
    return nullcontext() if dtype == "fp32" else torch.autocast("cpu", dtype=torch.bfloat16)


def null_dit(dit) -> StepDiT:
    """A stand-in whose every call is free: x0 = its input, zero keys/values of the right shape."""
    depth, heads, head_dim = len(dit.blocks), dit.heads, dit.x_embed.out_features // dit.heads

    def runner(z, block_mods, final_mod, past_k, past_v, past_len):
        kv = z.new_zeros(depth, z.shape[0], heads, z.shape[1] * z.shape[2], head_dim)
        return z, kv, kv

    return StepDiT(dit, runner)


def time_sampler(name, dit, cfg, N, s, steps, dtype, repeats=1):
    """Median wall time of `repeats` runs, and the last run's sampler (its latents and work counts)."""
    noise = torch.randn(1, N, cfg.vae.num_latent_tokens, cfg.vae.latent_dim, generator=torch.Generator().manual_seed(0))
    times = []
    for _ in range(repeats):
        sampler = make_sampler(name, dit, DiffusionSchedule(), ADScheduler(steps, s, cfg.window, 1))
        start = time.perf_counter()
        with torch.no_grad(), autocast(dtype):
            for _ in sampler.denoise(noise[:, :0], noise):
                pass
        times.append(time.perf_counter() - start)
    return float(np.median(times)), sampler


def streaming(cfg, vae, dit, steps: int, s: int, context: int, new: int, backend: str = "eager", dtype: str = "fp32"
              ) -> tuple[float, float]:
    autocast_dtype = None if dtype == "fp32" else torch.bfloat16
    pipe = Pipeline(Checkpoint(vae, dit, cfg), torch.device("cpu"), autocast_dtype, backend=backend)
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
    parser.add_argument("--checkpoint", default=None,
                        help="time this model instead of random weights for --preset (e.g. assets/ardiff-default."
                             "safetensors: its decoder's border mixer is in no preset)")
    parser.add_argument("--frames", default="16,128")
    parser.add_argument("--s", default="0,5,10,25,50")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--dtypes", default="fp32")
    parser.add_argument("--backends", default="eager", help="cached sampler backends: eager,compile,aoti,onnx,null")
    parser.add_argument("--workdir", default="/tmp/ardiff-bench-export")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs per sampler and setting, the samplers interleaved; medians are shown, and each "
                             "speed-up is the median of the per-repeat ratios")
    parser.add_argument("--no-streaming", action="store_true")
    args = parser.parse_args()
    path = args.checkpoint or make_checkpoint(args.preset, Path(args.workdir) / f"{args.preset}.safetensors")
    ckpt = load_checkpoint(path)
    cfg, vae, dit = ckpt.config, ckpt.vae, ckpt.dit
    fast = {"eager": dit}
    for backend in args.backends.split(","):
        if backend == "compile":
            fast[backend] = CompiledDiT(dit)
        elif backend == "null":
            fast[backend] = null_dit(dit)
        elif backend != "eager":
            out, _ = get_export(ckpt.path, backend, Path(args.workdir), "fp32")
            fast[backend] = E.ExportedModels.load(out, ckpt, backend).dit
    print(header(f"Sampler, {args.checkpoint or 'preset ' + args.preset}, n = {args.steps}"))
    cols = " | ".join(f"cached {b} s | speed-up" for b in fast)
    for dtype in args.dtypes.split(","):
        if "compile" in fast:  # one graph per autocast state, compiled before the clock starts
            start = time.perf_counter()
            with torch.no_grad(), autocast(dtype):
                fast["compile"].warm_up()
            print(f"compile backend: both DiT graphs, one frame and window refresh, compiled or loaded ({dtype}): "
                  f"{time.perf_counter() - start:.1f} s\n")
        print(f"| dtype | N | s | rows | reference s | {cols} | reference frame-fwd | cached frame-fwd "
              f"| max abs diff |")
        print("| --- " * (8 + 2 * len(fast)) + "|")
        for N in map(int, args.frames.split(",")):
            for s in map(int, args.s.split(",")):
                # interleaved: each repeat runs the reference, then every backend, so a slow minute of a shared
                # host falls on both sides of a ratio; the speed-up is the median of the per-repeat ratios
                times: dict[str, list[float]] = {"reference": [], **{backend: [] for backend in fast}}
                runs = {}
                for _ in range(args.repeats):
                    t, ref = time_sampler("reference", dit, cfg, N, s, args.steps, dtype)
                    times["reference"].append(t)
                    for backend, model in fast.items():
                        t, runs[backend] = time_sampler("cached", model, cfg, N, s, args.steps, dtype)
                        times[backend].append(t)
                ref_t = float(np.median(times["reference"]))
                cells, diff = [], 0.0
                for backend, run in runs.items():
                    ratio = float(np.median([r / t for r, t in zip(times["reference"], times[backend])]))
                    cells.append(f"{np.median(times[backend]):.2f} | {ratio:.2f}x")
                    if backend != "null":
                        diff = max(diff, (run.latents - ref.latents).abs().max().item())
                print(f"| {dtype} | {N} | {s} | {ref.stats.rows} | {ref_t:.2f} | {' | '.join(cells)} | "
                      f"{ref.stats.frame_forwards} | {run.stats.frame_forwards} | {diff:.1e} |", flush=True)
    if not args.no_streaming:
        print()
        for dtype in args.dtypes.split(","):
            for backend in [b for b in fast if b in ("eager", "compile")]:
                latency, rate = streaming(cfg, vae, dit, args.steps, 5, 8, 32, backend, dtype)
                print(f"Streaming, backend {backend} (pipeline, decode included, 8 context + 32 new, s = 5, "
                      f"n = {args.steps}, {dtype}): first frame after {latency:.2f} s, then {rate:.1f} frames/s")


if __name__ == "__main__":
    main()

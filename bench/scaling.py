"""Scaling of the samplers with video length: time(N = 128) / time(N = 16) at s = 5, measured in pairs.

The pipeline issue's target is at most 8.5x (linear in frames; every frame needs n updates, so 8x is the
floor). A run at N = 16 lasts about a second, and on a shared machine a second-long run moves by 20-40%
between repeats, so two medians taken minutes apart give a ratio that swings by more than the target's
margin. Here each pair runs N = 16 and N = 128 back to back, the ratio is taken within the pair, and the
median over pairs is reported with its spread.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench.common import header  # noqa: E402
from bench.export import make_checkpoint  # noqa: E402
from bench.sampler import autocast, time_sampler  # noqa: E402
from engine.checkpoint import load_checkpoint  # noqa: E402
from engine.backends.compiled import CompiledDiT  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="default")
    parser.add_argument("--frames", default="16,128", help="short,long")
    parser.add_argument("--s", type=int, default=5)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--dtypes", default="fp32")
    parser.add_argument("--samplers", default="reference,eager,compile",
                        help="reference, and cached-sampler backends: eager, compile")
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--workdir", default="/tmp/ardiff-bench-export")
    args = parser.parse_args()
    short, long = map(int, args.frames.split(","))
    ckpt = load_checkpoint(make_checkpoint(args.preset, Path(args.workdir) / f"{args.preset}.safetensors"))
    cfg, dit = ckpt.config, ckpt.dit
    names = args.samplers.split(",")
    runs = {"reference": ("reference", dit), "eager": ("cached", dit)}
    if "compile" in names:
        runs["compile"] = ("cached", CompiledDiT(dit))
    if unknown := set(names) - set(runs):
        parser.error(f"unknown samplers: {', '.join(sorted(unknown))}")
    print(header(f"Scaling, preset {args.preset}, n = {args.steps}, s = {args.s}, {args.pairs} pairs"))
    print(f"| dtype | sampler | t(N = {short}) s, median | t(N = {long}) s, median | ratio, median of pairs "
          f"| ratios, min..max | frame-forwards ratio |")
    print("| --- " * 7 + "|")
    for dtype in args.dtypes.split(","):
        if "compile" in names:
            start = time.perf_counter()
            with torch.no_grad(), autocast(dtype):
                runs["compile"][1].warm_up()
            print(f"(compile backend, graphs compiled or loaded, {dtype}: {time.perf_counter() - start:.1f} s)")
        for name in names:
            kind, model = runs[name]
            times_short, times_long, ratios = [], [], []
            for _ in range(args.pairs):
                t_short, run_short = time_sampler(kind, model, cfg, short, args.s, args.steps, dtype)
                t_long, run_long = time_sampler(kind, model, cfg, long, args.s, args.steps, dtype)
                times_short.append(t_short)
                times_long.append(t_long)
                ratios.append(t_long / t_short)
            work = run_long.stats.frame_forwards / run_short.stats.frame_forwards
            print(f"| {dtype} | {name} | {statistics.median(times_short):.2f} | {statistics.median(times_long):.2f} "
                  f"| **{statistics.median(ratios):.1f}x** | {min(ratios):.1f}..{max(ratios):.1f}x | {work:.1f}x |",
                  flush=True)


if __name__ == "__main__":
    main()

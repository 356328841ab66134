"""I3D throughput: 16-frame 224x224 clips per second, float32 vs bfloat16 autocast.

    .venv/bin/python bench/i3d.py                       # batches 1 4 8, 5 repeats, CPU
    .venv/bin/python bench/i3d.py --batch 1 8 --repeats 7 --threads 2 --device cuda

Uses the real Kinetics-400 weights when they are converted (the speed does not depend on them),
random ones otherwise. Reports the median of ``--repeats`` timed forwards after ``--warmup`` ones,
and the max |logit| difference of bfloat16 against float32 on the same batch.

On a CPU without native bfloat16 (no AVX512-BF16 / AMX: torch reports capability "AVX2") the
bfloat16 conv3d path is emulated and about 50x slower than float32; run ``--dtypes float32`` there.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.errors import WeightsUnavailableError
from engine.metrics.i3d import I3D, load_i3d


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(model: I3D, batch: int, frames: int, dtype: torch.dtype, device: torch.device, warmup: int,
          repeats: int) -> tuple[float, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(batch, 3, frames, 224, 224, generator=g) * 2 - 1).to(device)
    times = []
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        for i in range(warmup + repeats):
            _sync(device)
            t0 = time.perf_counter()
            logits, _ = model(x)
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return statistics.median(times), logits.float().cpu()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    ap.add_argument("--json", action="store_true", help="also print one JSON line per result")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    try:
        model, weights = load_i3d(device=device, download=False), "Kinetics-400"
    except WeightsUnavailableError:
        model, weights = I3D().to(device).eval(), "random"
    cpu = f"{platform.machine()}, {torch.backends.cpu.get_cpu_capability()}"
    print(f"I3D {weights} weights, device {device} ({cpu}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.frames} frames x 224 x 224, "
          f"median of {args.repeats} after {args.warmup} warm-up")
    print(f"{'batch':>5} {'dtype':>9} {'s/batch':>9} {'clips/s':>8} {'max|dlogit| vs fp32':>20}")
    for batch in args.batch:
        ref = None
        for dtype in (getattr(torch, name) for name in args.dtypes):
            sec, logits = bench(model, batch, args.frames, dtype, device, args.warmup, args.repeats)
            diff = "" if ref is None else f"{(logits - ref).abs().max().item():.3f}"
            ref = logits if ref is None else ref
            name = str(dtype).removeprefix("torch.")
            print(f"{batch:>5} {name:>9} {sec:>9.3f} {batch / sec:>8.2f} {diff:>20}")
            if args.json:
                print(json.dumps({"bench": "i3d", "batch": batch, "frames": args.frames, "dtype": name,
                                  "device": str(device), "threads": torch.get_num_threads(),
                                  "seconds_per_batch": round(sec, 4), "clips_per_s": round(batch / sec, 3)}))


if __name__ == "__main__":
    main()

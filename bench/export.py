"""Eager vs AOTInductor vs ONNX Runtime: the DiT cached step, the VAE decode step and whole continuations.

For the `default` preset (random weights) on this CPU: per-row and per-frame time of one DiT step at 1, 4 and
10 active frames with a full cache (window - M cached frames), the one-frame VAE decode step, and the frames/s
of a full continuation through the pipeline (decode included) for each backend. The exports are made once
into --workdir and reused (an AOTInductor compile of the default preset takes minutes on two cores).

    python bench/export.py                       # default preset, fp32, aoti + onnx
    python bench/export.py --backends aoti --new-frames 16
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import header, median_time  # noqa: E402
from engine.backends import export as E  # noqa: E402
from engine.checkpoint import load_checkpoint, read_checkpoint_header, save_checkpoint  # noqa: E402
from engine.models import build_models, get_preset  # noqa: E402
from engine.models.dit import KVCache  # noqa: E402
from engine.pipeline import Pipeline, load_pipeline  # noqa: E402


def make_checkpoint(preset: str, path: Path) -> Path:
    """Random weights for `preset` at `path`, made once and remade when the preset has changed since."""
    cfg = get_preset(preset)
    if path.is_file() and read_checkpoint_header(path)[0] == cfg:
        return path
    torch.manual_seed(0)
    vae, dit = build_models(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in list(dit.parameters()) + [b.temporal.gate for b in vae.decoder_blocks if b.temporal is not None]:
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)  # live adaLN and temporal paths, as after training
    save_checkpoint(path, vae, dit, cfg, meta={"recipe": "random weights for bench/export.py"})
    return path


def get_export(ckpt: Path, backend: str, workdir: Path, dtype: str) -> tuple[Path, float | None]:
    out = workdir / f"{backend}-{dtype}"
    try:
        manifest = E.read_manifest(out)
        if manifest["checkpoint"]["sha256"] == E.file_sha256(ckpt):
            return out, None
    except E.ExportError:
        pass
    start = time.perf_counter()
    E.export(ckpt, out, backend, device="cpu", dtype=dtype, log=lambda m: print(f"<!-- {m} -->", flush=True))
    return out, time.perf_counter() - start


def dit_row_times(ck, models: dict, actives: list[int], repeats: int) -> dict:
    dit = ck.dit
    window, L, D = dit.window, dit.num_tokens, dit.latent_dim
    g = torch.Generator().manual_seed(0)
    grid = torch.arange(0, 1001, 20)
    results = {}
    for M in actives:
        P = window - M
        cache = KVCache(0)
        with torch.no_grad():
            _, kv = dit.forward_cached(torch.randn(1, P, L, D, generator=g), torch.zeros(1, P, dtype=torch.long), cache)
        cache.append(kv, P, L)
        z = torch.randn(1, M, L, D, generator=g)
        t = grid[torch.linspace(5, 45, M).long()][None]
        calls = {}
        for name, fwd in models.items():
            table = fwd.conditioning_table(grid)
            calls[name] = lambda fwd=fwd, table=table: fwd.forward_cached(z, t, cache, table=table)
        results.update({(name, M): t for name, t in blocks(calls, repeats).items()})
    return results


def blocks(calls: dict, repeats: int, rounds: int = 3, warmup: int = 3) -> dict:
    """Seconds per call: each backend's median over a block of `repeats` calls, the best of `rounds` blocks
    taken in turns. Blocks, not alternating calls: one backend's threads winding down would land on the next
    backend's call; the best of several blocks, because this machine is shared."""
    best = {name: float("inf") for name in calls}
    with torch.no_grad():
        for _ in range(rounds):
            for name, fn in calls.items():
                best[name] = min(best[name], median_time(fn, repeats, warmup))
    return best


def vae_step_times(ck, vaes: dict, repeats: int) -> dict:
    L, D = ck.config.vae.num_latent_tokens, ck.config.vae.latent_dim
    calls = {}
    lat = torch.randn(1, L, D)
    for name, vae in vaes.items():
        state = vae.start_decode()
        with torch.no_grad():
            for _ in range(ck.config.vae.temporal_window):  # fill the memory
                vae.decode_next(lat, state)
        calls[name] = lambda vae=vae, state=state: vae.decode_next(lat, state)
    return blocks(calls, repeats)


def continuation(pipe: Pipeline, context: int, new: int, s: int, steps: int) -> tuple[float, np.ndarray]:
    frames = np.random.default_rng(0).integers(0, 256, (context, pipe.resolution, pipe.resolution, 3), np.uint8)
    done = list(pipe.continue_video(frames, num_new_frames=new, s=s, steps=steps, seed=0))[-1]
    return new / done.elapsed, done.video


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="default")
    parser.add_argument("--backends", default="aoti,onnx")
    parser.add_argument("--dtype", default="fp32", help="exported graphs' precision (eager runs the same)")
    parser.add_argument("--active", default="1,4,10")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--context", type=int, default=4)
    parser.add_argument("--new-frames", type=int, default=32)
    parser.add_argument("--s", type=int, default=5)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch / ONNX Runtime threads (default: torch's)")
    parser.add_argument("--workdir", default="/tmp/ardiff-bench-export")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt = make_checkpoint(args.preset, workdir / f"{args.preset}.safetensors")
    backends = [b for b in args.backends.split(",") if b]
    print(header(f"Exported sampling graphs, preset {args.preset}, {args.dtype}"))
    exports = {}
    for b in backends:
        exports[b], took = get_export(ckpt, b, workdir, args.dtype)
        if took is not None:
            print(f"export {b}: {took:.0f} s")
    ck = load_checkpoint(ckpt)
    autocast = None if args.dtype == "fp32" else E.DTYPES[args.dtype]
    pipes = {"eager": Pipeline(ck, torch.device("cpu"), autocast)}
    for b in backends:
        pipes[b] = load_pipeline(ckpt, device="cpu", backend=b, export_dir=exports[b])
    if autocast is not None:  # eager at the same precision as the graphs
        for p in pipes.values():
            p.autocast_dtype = autocast
    actives = [int(a) for a in args.active.split(",")]

    class Autocast:  # eager DiT under autocast for a non-fp32 comparison
        def __init__(self, dit):
            self.dit = dit

        def conditioning_table(self, grid):
            return self.dit.conditioning_table(grid)

        def forward_cached(self, *a, **kw):
            with torch.autocast("cpu", dtype=autocast):
                return self.dit.forward_cached(*a, **kw)

    dits = {name: (p.dit if name != "eager" or autocast is None else Autocast(p.dit)) for name, p in pipes.items()}
    rows = dit_row_times(ck, dits, actives, args.repeats)
    window = ck.config.window
    print(f"\nDiT cached step, batch 1, full cache (window {window}: {window} - M cached frames), best of 3 "
          f"medians of {args.repeats}: ms per row (ms per active frame)\n")
    print("| active frames M | " + " | ".join(pipes) + " |")
    print("| --- |" + " --- |" * len(pipes))
    for M in actives:
        cells = [f"{rows[(n, M)] * 1e3:.2f} ({rows[(n, M)] * 1e3 / M:.2f})" for n in pipes]
        print(f"| {M} | " + " | ".join(cells) + " |")
    vae_t = vae_step_times(ck, {n: p.vae for n, p in pipes.items()}, args.repeats)
    print("\nVAE decode step (one frame, full memory), ms: "
          + ", ".join(f"{n} {t * 1e3:.2f}" for n, t in vae_t.items()))
    print(f"\nFull continuation through the pipeline ({args.context} context + {args.new_frames} new frames, "
          f"s = {args.s}, n = {args.steps}, decode included):\n")
    print(f"| backend | frames/s (best of {args.rounds}, backends taking turns) | max uint8 diff vs eager |")
    print("| --- | --- | --- |")
    best, videos = {}, {}
    for _ in range(args.rounds):
        for name, p in pipes.items():
            fps, videos[name] = continuation(p, args.context, args.new_frames, args.s, args.steps)
            best[name] = max(fps, best.get(name, 0.0))
    for name in pipes:
        diff = int(np.abs(videos[name].astype(int) - videos["eager"].astype(int)).max())
        print(f"| {name} | {best[name]:.1f} | {diff} |", flush=True)


if __name__ == "__main__":
    main()

"""Forward time of the `default` models on this machine: the DiT over a full 16-frame window vs one active
frame with a 15-frame K/V cache (the sampler's common case), eager and through `backend="compile"`
(engine.backends.compiled; also its second graph, a whole window with nothing cached: the window refresh), and
the VAE's incremental decode of one frame; float32 vs bfloat16 autocast. Random weights (timing does not
depend on them)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from contextlib import nullcontext

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench.common import header, median_time  # noqa: E402
from engine.backends.compiled import CompiledDiT  # noqa: E402
from engine.diffusion import DiffusionSchedule  # noqa: E402
from engine.models import build_models, get_preset  # noqa: E402
from engine.models.dit import KVCache  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="default")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        # Inductor writes the thread count into its kernels: a graph compiled for another count must not
        # come back from its on-disk cache
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), f"ardiff-inductor-t{args.threads}")
    torch.manual_seed(0)
    cfg = get_preset(args.preset)
    vae, dit = build_models(cfg)
    for p in dit.parameters():  # live adaLN paths, as after training
        torch.nn.init.normal_(p, std=0.02)
    vae.eval(), dit.eval()
    W, L, D = cfg.window, cfg.vae.num_latent_tokens, cfg.vae.latent_dim
    z = torch.randn(1, W, L, D)
    grid = DiffusionSchedule().ddim_grid(50).timesteps
    t = grid[torch.randint(0, 51, (1, W))]
    table = dit.conditioning_table(grid)  # what the cached sampler uses: adaLN precomputed per timestep
    print(header(f"Model forward, preset {args.preset}"))
    print("(cached calls use the conditioning table, as the cached sampler does)\n")
    print("| dtype | DiT full window (16 frames) ms | DiT 1 frame + 15 cached ms | ratio | "
          "same, compiled ms | ratio | full window, compiled ms | DiT 10 frames + 6 cached ms | "
          "VAE decode_next ms |")
    print("| --- " * 9 + "|")
    for name in args.dtypes.split(","):
        ctx = nullcontext() if name == "fp32" else torch.autocast("cpu", dtype=torch.bfloat16)
        with torch.no_grad(), ctx:
            full = median_time(lambda: dit(z, t), args.repeats)
            cache = KVCache()
            _, kv = dit.forward_cached(z[:, :15], t[:, :15], cache)
            cache.append(kv, 15, L)
            one = median_time(lambda: dit.forward_cached(z[:, 15:], t[:, 15:], cache, table=table), args.repeats)
            fast = CompiledDiT(dit)
            fast_table = fast.conditioning_table(grid)
            fast.warm_up()
            compiled = median_time(lambda: fast.forward_cached(z[:, 15:], t[:, 15:], cache, table=fast_table),
                                   args.repeats)
            refresh = median_time(lambda: fast.forward_cached(z, t, KVCache(), table=fast_table),
                                  args.repeats)
            cache6 = KVCache()
            _, kv = dit.forward_cached(z[:, :6], t[:, :6], cache6)
            cache6.append(kv, 6, L)
            ten = median_time(lambda: dit.forward_cached(z[:, 6:], t[:, 6:], cache6, table=table), args.repeats)
            state = vae.start_decode()
            for i in range(W - 1):
                vae.decode_next(z[:, i], state)
            dec = median_time(lambda: vae.decode_next(z[:, -1], state), args.repeats)
        print(f"| {name} | {full * 1e3:.1f} | {one * 1e3:.1f} | {one / full:.3f} | {compiled * 1e3:.2f} | "
              f"{compiled / full:.3f} | {refresh * 1e3:.1f} | {ten * 1e3:.1f} | {dec * 1e3:.1f} |")


if __name__ == "__main__":
    main()

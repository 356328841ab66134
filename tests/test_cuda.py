"""CUDA paths: the cached sampler, bf16 autocast sampling and a training step on an NVIDIA GPU.

Marked `cuda`: skipped (with the reason) where torch sees no GPU; `scripts/gpu-check` runs them on a GPU
(`pytest -m cuda`). No fixtures, so gpu-check can also call them directly where pytest is not installed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="needs an NVIDIA GPU (torch.cuda.is_available() is False); "
                                        "scripts/gpu-check runs these where there is one")]

STEPS = 8


def _tiny(device: str):
    from engine.models import build_models, get_preset
    from tests.helpers import randomize_

    cfg = get_preset("tiny")
    torch.manual_seed(0)
    vae, dit = build_models(cfg)
    randomize_(dit, std=0.15)
    return cfg, vae.to(device).eval(), dit.to(device).eval()


def _sample(name: str, dit, s: int, device: str, n: int = 20, c: int = 3) -> torch.Tensor:
    from engine.diffusion import DiffusionSchedule
    from engine.sampling import make_sampler
    from engine.schedulers import ADScheduler

    g = torch.Generator().manual_seed(0)
    noise = torch.randn(2, n, dit.num_tokens, dit.latent_dim, generator=g).to(device)
    context = torch.randn(2, c, dit.num_tokens, dit.latent_dim, generator=g).to(device)
    sampler = make_sampler(name, dit, DiffusionSchedule(), ADScheduler(STEPS, s, 16, 1))
    with torch.no_grad():
        for _ in sampler.sample(context, noise):
            pass
    return sampler.latents.float().cpu()


def _no_tf32():
    """float32 matmuls and convolutions in full float32 (TF32 keeps 10 mantissa bits: 1e-3 errors)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def test_cached_sampler_equals_reference_on_cuda() -> None:
    _no_tf32()
    _, _, dit = _tiny("cuda")
    _, _, cpu_dit = _tiny("cpu")
    for s in (0, 3, STEPS):  # synchronous, in between, frame by frame
        ref = _sample("reference", dit, s, "cuda")
        fast = _sample("cached", dit, s, "cuda")
        # The CPU bound (tests/test_sampling.py): different GEMM shapes round differently, 8 steps of float32.
        assert (fast - ref).abs().max() <= 1e-4, s
        on_cpu = _sample("cached", cpu_dit, s, "cpu")
        # Other hardware, other kernels (cuBLAS vs oneDNN reduction orders) over 8 steps: 1e-3 of latents ~1.
        assert (fast - on_cpu).abs().max() <= 1e-3, s


def test_bf16_autocast_sampling_on_cuda() -> None:
    from engine.checkpoint import Checkpoint
    from engine.pipeline import Done, FrameReady, Pipeline

    _no_tf32()
    cfg, vae, dit = _tiny("cuda")
    videos = {}
    for dtype in (None, torch.bfloat16):
        pipe = Pipeline(Checkpoint(vae, dit, cfg), torch.device("cuda"), dtype)
        events = list(pipe.generate(num_frames=6, s=2, steps=4, seed=0))
        assert sum(isinstance(e, FrameReady) for e in events) == 6
        done = events[-1]
        assert isinstance(done, Done) and done.video.shape == (6, 16, 16, 3) and done.video.dtype == np.uint8
        videos[dtype] = done.video.astype(np.int64)
    # bfloat16 keeps 8 mantissa bits (~0.4% per operation); through 4 steps and the decoder the frames stay
    # within a few grey levels of float32 on average, far from an unrelated image (~85 levels apart).
    assert np.abs(videos[None] - videos[torch.bfloat16]).mean() < 12


def test_training_step_on_cuda() -> None:
    from engine.diffusion import DiffusionSchedule
    from engine.objective import diffusion_loss

    _no_tf32()
    _, _, dit_cpu = _tiny("cpu")
    _, _, dit = _tiny("cuda")
    dit.train()
    dit_cpu.train()
    schedule = DiffusionSchedule()
    g = torch.Generator().manual_seed(1)
    z0 = torch.randn(4, 8, dit.num_tokens, dit.latent_dim, generator=g)
    t = torch.randint(1, schedule.T + 1, (4, 8), generator=g)
    noise = torch.randn(z0.shape, generator=g)
    loss_cpu, _ = diffusion_loss(dit_cpu, DiffusionSchedule(), z0, t, noise)
    loss_cpu.backward()
    loss, _ = diffusion_loss(dit, schedule, z0.cuda(), t.cuda(), noise.cuda())
    loss.backward()
    # The same weights and batch on two devices: float32 sums in other orders, relative 1e-4.
    assert abs(loss.item() - loss_cpu.item()) <= 1e-4 * abs(loss_cpu.item())
    # Gradients against the largest one: some (attention key biases) are exactly zero in exact arithmetic, so
    # only float noise, which no per-tensor relative bound can hold.
    pairs = [(p.grad.cpu(), q.grad) for p, q in zip(dit.parameters(), dit_cpu.parameters()) if q.grad is not None]
    scale = max(float(q.abs().max()) for _, q in pairs)
    assert max(float((p - q).abs().max()) for p, q in pairs) <= 1e-3 * scale
    # A few AdamW steps in bf16 autocast on one batch: the loss goes down (the step really trains).
    opt = torch.optim.AdamW(dit.parameters(), lr=1e-3)
    losses = []
    for _ in range(10):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            step_loss, _ = diffusion_loss(dit, schedule, z0.cuda(), t.cuda(), noise.cuda())
        step_loss.backward()
        opt.step()
        losses.append(step_loss.item())
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]

"""How far two float32 computations of the same function may differ on any x86 CPU, derived, not guessed.

Two evaluations of one network by different kernels (a KV cache against the full window, one frame at a time
against a batch, compiled against eager, ONNX Runtime against torch) add the same products in another order,
and so does one evaluation on another CPU: MKL, oneDNN and ATen pick other blockings and vector widths on
AVX2, AVX512, AVX512-BF16 and AMX machines (fp32 never uses the bf16/AMX units, but the fp32 kernels chosen
on those machines differ). Float32 rounds every operation to a unit roundoff u = 2^-24. A length-K reduction
summed in another order moves by about sqrt(K) * u of the size of its terms (the rounding errors add like a
random walk), and a normalised residual network carries a relative error on with a gain near 1 per stage
(a matmul, an attention, a norm), so after S stages two kernel orders differ by about S * sqrt(K) * u of the
output's scale. Measured on the tiny DiT (cache against full window, 40 seeds, under ATen AVX512 / AVX2 /
scalar kernels and MKL's AVX2 and "compatible" paths): at most half of that estimate. The tolerances below
are 4 times the estimate (MARGIN: for kernels not measured here, AMX machines' among them), against the
largest magnitude of the reference: a real bug (a wrong mask, a position off by one, a frame missing from
the cache, a bf16 round trip) moves outputs by a sizeable fraction of their scale, orders of magnitude more.
"""

from __future__ import annotations

import math

import torch

U32 = 2.0 ** -24  # float32 unit roundoff
MARGIN = 4.0


def relative_reorder_tolerance(stages: int, reduction: int) -> float:
    """The same, relative to the output's largest magnitude: MARGIN * stages * sqrt(reduction) * u."""
    return MARGIN * stages * math.sqrt(reduction) * U32


def reorder_tolerance(reference: torch.Tensor, stages: int, reduction: int) -> float:
    """Largest absolute difference expected between two float32 kernel orders computing `reference`:
    MARGIN * stages * sqrt(reduction) * u * max|reference|."""
    return relative_reorder_tolerance(stages, reduction) * float(reference.detach().abs().max())


def dit_stages(cfg) -> tuple[int, int]:
    """(stages, longest reduction) of a DiT preset: per block the adaLN modulation, norm, qkv, scores, the
    weighted sum of values, output projection, norm and two MLP layers (9), plus the embeddings and the final
    layer (3); the reductions are over the hidden size, the MLP's hidden size and the keys of a full window."""
    d = cfg.dit
    return 9 * d.depth + 3, max(d.hidden, int(d.hidden * d.mlp_ratio), cfg.window * cfg.vae.num_latent_tokens)


def vae_stages(cfg) -> tuple[int, int]:
    """(stages, longest reduction) of the AR-VAE's decoder (or encoder) path of a VAE config: per transformer
    block the same 9-ish stages as the DiT's, plus the patch and token projections (4); reductions over the
    width, the MLP's width, a patch's pixels and the tokens of a temporal window; the border mixer adds its three
    3x3 convolutions (reductions over 9 x its channels)."""
    blocks = cfg.encoder_depth + cfg.decoder_depth
    tokens = (cfg.image_size // cfg.patch_size) ** 2 + cfg.num_latent_tokens
    mixer = 3 if cfg.mixer_channels else 0
    return 9 * blocks + 4 + mixer, max(cfg.width, int(cfg.width * cfg.mlp_ratio), 3 * cfg.patch_size ** 2,
                                        tokens * cfg.temporal_window, 9 * cfg.mixer_channels)


def assert_reorder_close(actual: torch.Tensor, expected: torch.Tensor, stages: int, reduction: int) -> None:
    """`actual` equals `expected` up to float32 reordering (see the module docstring)."""
    torch.testing.assert_close(actual, expected, atol=reorder_tolerance(expected, stages, reduction), rtol=0)

"""`backend="compile"`: the cached sampler's one-frame DiT calls through torch.compile (Inductor).

At s >= steps every AD row is one frame after a full cache: 16 tokens through every layer. Eager PyTorch
spends more of such a call on per-operator overhead than on arithmetic (bench/models.py: a one-frame call
costs about a fifth of a whole 16-frame window for a sixteenth of its work). Inductor, with the weights
frozen into the graph, fuses the elementwise work (norms, modulation, rotary, GELU, gates) into the oneDNN
matrix products it calls with pre-packed weights, and the call attends over the cache without copying it
(`DiT.step(apart=True)`). The cache is padded to window - 1 frames, so one graph serves every one-frame call
whatever the cache holds. A second graph serves the window refreshes (a whole window, nothing cached: the
cache is rebuilt when the window slides), which at s >= steps are the rest of the network's time. Other
calls with several frames (s < steps, the first window) run eagerly: each frame count would cost a compile
of its own.

Compiling takes seconds (once per process and batch size; Inductor's on-disk cache shortens later runs), so
`warm_up` does it before sampling starts, and a machine that cannot compile (no C++ compiler on CPU) fails
there with a `CompileError`, before any frame is promised.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
from torch import nn
from torch._dynamo.exc import TorchDynamoException
from torch._inductor import config as inductor_config

from engine.errors import ArdiffError, one_line
from engine.models.dit import ConditioningTable, KVCache
from engine.backends.step_dit import StepDiT

# Weights become constants (folded, pre-packed for the CPU GEMM kernels) and the graph's wrapper is C++ (no
# Python between its ~50 kernels). These are patched around the compiling call rather than passed in
# torch.compile's options: passed there, freezing did not reach the GEMM lowering. Once a graph exists for a
# call's shapes and autocast state, calls skip the patching (dynamo does not guard on Inductor's config).
# No max-autotune: its C++ GEMM templates lost to oneDNN's kernels for these 16-row products, and on a busy
# machine the autotuner's timings pick at random (bench/RESULTS.md, 2026-12-07 and "Inductor's options for the
# one-frame call").
COMPILE_MODE = None
INDUCTOR_CONFIG = {
    "freezing": True,
    "cpp_wrapper": True,
}


@contextlib.contextmanager
def onednn_float32_linears() -> Iterator[None]:
    """While compiling: float32 linears with frozen weights go to oneDNN, as bfloat16 ones always do.

    Inductor's CPU weight-packing pass sends float32 linears to MKL's packed GEMM, which on one-frame calls
    (16 rows) took twice oneDNN's time for the same float32 arithmetic (bench/RESULTS.md, 2026-12-07). The
    pass has no setting for it, so its two choices are made as for low-precision weights; the computation
    stays float32 (the flag only selects the packing and the operator). Where this torch's pass is shaped
    differently, nothing is patched and MKL's GEMM is used, as before.
    """
    try:
        from torch._inductor.fx_passes.mkldnn_fusion import CpuMkldnnDeviceOp
        pack_weight, pack = CpuMkldnnDeviceOp.pack_linear_weight, CpuMkldnnDeviceOp.pack_linear
    except (ImportError, AttributeError):
        yield
        return
    CpuMkldnnDeviceOp.pack_linear_weight = lambda self, graph, _, *args: pack_weight(self, graph, True, *args)
    CpuMkldnnDeviceOp.pack_linear = lambda self, graph, _, *args: pack(self, graph, True, *args)
    try:
        yield
    finally:
        CpuMkldnnDeviceOp.pack_linear_weight, CpuMkldnnDeviceOp.pack_linear = pack_weight, pack


class CompileError(ArdiffError):
    """torch.compile cannot build the DiT step here (e.g. no C++ compiler for Inductor's CPU kernels)."""


class CompiledDiT(StepDiT):
    """Stands in for the DiT: one-frame `forward_cached` calls and window refreshes run compiled, the rest
    eager.

    The weights are frozen into the graph at the first call: change them and build a new CompiledDiT.
    """

    def __init__(self, dit: nn.Module) -> None:
        def step_apart(z: torch.Tensor, block_mods: torch.Tensor, final_mod: torch.Tensor, past_k: torch.Tensor,
                       past_v: torch.Tensor, past_len: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            return dit.step(z, block_mods, final_mod, past_k, past_v, past_len, apart=True, rotary=(cos, sin))

        compiled = torch.compile(step_apart, dynamic=False, mode=COMPILE_MODE)
        built: set[tuple] = set()  # (autocast state, input shapes) of the graphs compiled so far

        def runner(*args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            # the thread count too: Inductor's CPU graphs are built for one, and a call after the caller
            # changed it must take the guarded path below (a recompile), not the unguarded one (dynamo raises)
            key = (torch.is_autocast_enabled(args[0].device.type), torch.get_autocast_dtype(args[0].device.type),
                   torch.get_num_threads(), *((a.shape, a.dtype) for a in args))
            if key in built:  # the hot path: no config patching, no warning filters
                # A graph for exactly this call exists (the key above), so dynamo need only tell its graphs
                # apart (this model's from another's, one batch size from another) instead of re-checking every
                # guard (what that saves: bench/RESULTS.md, "dynamo's guards on the compiled one-frame call").
                with torch.no_grad(), torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                    return compiled(*args)
            with torch.no_grad(), inductor_config.patch(INDUCTOR_CONFIG), onednn_float32_linears(), \
                    warnings.catch_warnings():
                # torch's own deprecation notice, raised inside the autotuner: nothing a user can act on
                warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
                try:
                    out = compiled(*args)
                except TorchDynamoException as err:
                    raise CompileError(f"torch.compile could not build the DiT step on this machine "
                                       f"({one_line(err)[:300]}); use backend 'eager'") from err
            built.add(key)
            return out

        # the rotary tables come in as inputs (no pow/cos/sin per element in every layer), and the padded cache
        # is float32, the precision `attend_apart` computes in (under bfloat16 autocast its keys and values would
        # otherwise be converted in every layer of every call; float32 holds bfloat16 values exactly)
        super().__init__(dit, runner, dtype=None, past_slots=dit.window - 1, rotary=True, past_dtype=torch.float32)

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        return self._dit(*args, **kwargs)  # the reference sampler stays the eager oracle

    def _compiled_call(self, frames: int, cache: KVCache) -> bool:
        """One frame after any cache, or a whole window after none (a window refresh): the graphs' calls."""
        return frames == 1 or (frames == self._dit.window and cache.num_frames == 0)

    def _slots(self, cache: KVCache, frames: int) -> int:
        # one-frame calls: the cache padded to window - 1 frames (one graph for every cache length); a refresh
        # has nothing cached, and one padding slot (see DiT.step) instead of window - 1 costs less attention
        return self.past_slots if frames == 1 else 1

    def forward_cached(self, z: torch.Tensor, t: torch.Tensor, cache: KVCache,
                       class_label: torch.Tensor | None = None, table: ConditioningTable | None = None
                       ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        if not self._compiled_call(z.shape[1], cache):
            return self._dit.forward_cached(z, t, cache, class_label, table)
        return super().forward_cached(z, t, cache, class_label, table)

    def warm_up(self, batch: int = 1) -> None:
        """Compile both graphs now for this batch size (and the autocast state the caller is in)."""
        p = self._dit.x_embed.weight
        label = None
        if self._dit.num_classes:
            label = torch.full((batch,), self._dit.null_class, dtype=torch.long, device=p.device)
        for frames in (1, self._dit.window):
            z = torch.zeros(batch, frames, self._dit.num_tokens, self._dit.latent_dim, device=p.device)
            t = torch.full((batch, frames), self._dit.num_timesteps, dtype=torch.long, device=p.device)
            self.forward_cached(z, t, KVCache(), label)

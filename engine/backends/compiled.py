"""`backend="compile"`: the cached sampler's one-frame DiT calls compiled ahead of time (AOTInductor).

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

The graphs are exported (torch.export) and compiled by AOTInductor, not run through torch.compile: a loaded
AOTInductor graph holds its weights and is called straight from C++, where torch.compile's graph went through
dynamo and handed every frozen weight to its C++ wrapper on each call, a sixth of a one-frame call's time
(bench/RESULTS.md, 2026-12-08). Compiling takes seconds for each model, batch size, precision and thread
count; the graphs are kept on disk (`graph_cache_dir()`), so later runs load them instead. `warm_up` compiles
or loads them before sampling starts, and a machine that cannot compile (no C++ compiler on CPU) fails there
with a `CompileError`, before any frame is promised.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn
from torch._inductor import aoti_compile_and_package, aoti_load_package

from engine.atomic import atomic_path
from engine.errors import ArdiffError, one_line
from engine.models.dit import ConditioningTable, KVCache
from engine.backends.step_dit import StepDiT

# Weights become constants (folded, pre-packed for the CPU GEMM kernels). No max-autotune: its C++ GEMM
# templates lost to oneDNN's kernels for these 16-row products, and on a busy machine the autotuner's timings
# pick at random (bench/RESULTS.md, 2026-12-07 and "Inductor's options for the one-frame call").
INDUCTOR_CONFIG = {"freezing": True}

# what export and AOTInductor raise when this machine cannot build the graph (no C++ compiler, a failed link,
# an operator they do not lower): each becomes a CompileError that names the eager backend
COMPILE_FAILURES = (RuntimeError, OSError, NotImplementedError, torch._dynamo.exc.TorchDynamoException)


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
    """The DiT step cannot be compiled here (e.g. no C++ compiler for Inductor's CPU kernels)."""


class StepGraph(nn.Module):
    """`DiT.step` as the compiled graphs run it: attention apart, the caller's rotary tables, and the autocast
    state of the call it was built for set inside (not the state it happens to be exported in)."""

    def __init__(self, dit: nn.Module, device_type: str, autocast_dtype: torch.dtype | None) -> None:
        super().__init__()
        self.dit, self.device_type, self.autocast_dtype = dit, device_type, autocast_dtype

    @classmethod
    def for_call(cls, dit: nn.Module, args: tuple[torch.Tensor, ...]) -> StepGraph:
        """The graph for a call with these inputs, under the autocast state the caller is in now."""
        device = args[0].device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        return cls(dit, device, dtype)

    def forward(self, z: torch.Tensor, block_mods: torch.Tensor, final_mod: torch.Tensor,
                past_k: torch.Tensor, past_v: torch.Tensor, past_len: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dtype = self.autocast_dtype
        with torch.autocast(self.device_type, dtype=dtype, enabled=dtype is not None):
            return self.dit.step(z, block_mods, final_mod, past_k, past_v, past_len, apart=True,
                                 rotary=(cos, sin))


GraphFn = Callable[[list[torch.Tensor]], list[torch.Tensor]]

GRAPHS_KEPT = 16  # graphs kept on disk (the least recently used go first); each holds a DiT's weights
# changes whenever what compile_step builds changes in a way graph_key cannot see (onednn_float32_linears)
GRAPH_FORMAT = "dit-step-1"


def graph_cache_dir() -> Path:
    """Where compiled graphs are kept between runs: $ARDIFF_GRAPH_CACHE, else e.g. ~/.cache/ardiff/graphs."""
    import platformdirs

    folder = os.environ.get("ARDIFF_GRAPH_CACHE")
    return Path(folder) if folder else Path(platformdirs.user_cache_dir("ardiff")) / "graphs"


def graph_key(program: torch.export.ExportedProgram, args: tuple[torch.Tensor, ...],
              autocast_dtype: torch.dtype | None) -> str:
    """What a compiled graph depends on, hashed: its code, input shapes, weights, precision, thread count,
    the machine's instruction set, torch's version and the compile options."""
    device = args[0].device
    h = hashlib.sha256(json.dumps([
        GRAPH_FORMAT, torch.__version__, _machine(device), torch.get_num_threads(), str(autocast_dtype),
        INDUCTOR_CONFIG, [(list(a.shape), str(a.dtype)) for a in args],
    ]).encode())
    h.update(program.graph_module.code.encode())  # the operations (shapes follow from inputs and weights)
    h.update(json.dumps([list(a.stride()) for a in args]).encode())
    for name, tensor in sorted({**program.state_dict, **program.constants}.items()):
        h.update(f"{name} {tensor.dtype} {list(tensor.shape)}".encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def _machine(device: torch.device) -> str:
    """What compiled code is specific to: the GPU's model, or the CPU's instruction set (Inductor compiles
    with -march=native, so a cache shared between machines must tell them apart; read without Inductor's own
    probe, which compiles test programs)."""
    if device.type == "cuda":
        return f"cuda {torch.cuda.get_device_name(device)} {torch.cuda.get_device_capability(device)}"
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            flags = next((line for line in info if line.startswith(("flags", "Features"))), "")
    except OSError:  # not Linux
        flags = platform.processor()
    return f"{device.type} {platform.machine()} {torch.backends.cpu.get_cpu_capability()} {flags.strip()}"


def _load(path: Path) -> GraphFn:
    return aoti_load_package(str(path)).loader.run


def _keep_recent(folder: Path, keep: int) -> None:
    """Remove all but the `keep` most recently used graphs in the cache folder (ardiff's own files only)."""
    graphs = sorted(folder.glob("*.pt2"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in graphs[keep:]:
        old.unlink(missing_ok=True)


def compile_step(dit: nn.Module, args: tuple[torch.Tensor, ...]) -> GraphFn:
    """`DiT.step` for exactly these inputs' shapes and the caller's autocast state, compiled ahead of time by
    AOTInductor with the weights inside; returns its runner (a list of inputs -> [x0, keys, values]).

    The compiled graph is kept in `graph_cache_dir()`, so a later run with the same model and settings loads
    it in a fraction of a second instead of compiling again; a cache that cannot be written is skipped."""
    graph = StepGraph.for_call(dit, args)
    with torch.no_grad(), warnings.catch_warnings():
        # torch's own deprecation notice, raised inside the compiler: nothing a user can act on
        warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
        program = torch.export.export(graph, args, strict=False)
        path = graph_cache_dir() / f"{graph_key(program, args, graph.autocast_dtype)}.pt2"
        if path.is_file():
            try:
                runner = _load(path)
                os.utime(path)  # recently used: kept longest
                return runner
            except RuntimeError:  # unreadable (cut short, another torch's format): compiled again below
                pass
        try:
            with atomic_path(path) as tmp:
                _compile(program, tmp)
            _keep_recent(path.parent, GRAPHS_KEPT)
            return _load(path)
        except OSError:  # no writable cache (a read-only home, a full disk): compile into a scratch folder
            with tempfile.TemporaryDirectory(prefix="ardiff-graph-") as folder:
                tmp = Path(folder) / "step.pt2"
                _compile(program, tmp)
                return _load(tmp)  # the loader unpacks the package: the file may go once it is loaded


def _compile(program: torch.export.ExportedProgram, path: Path) -> None:
    with onednn_float32_linears():
        # a copy: AOTInductor adds its own entries to the dict it is given
        aoti_compile_and_package(program, package_path=str(path), inductor_configs=dict(INDUCTOR_CONFIG))


class CompiledDiT(StepDiT):
    """Stands in for the DiT: one-frame `forward_cached` calls and window refreshes run compiled, the rest
    eager.

    The weights are frozen into the graphs at the first call of each shape: change them and build a new
    CompiledDiT.
    """

    def __init__(self, dit: nn.Module) -> None:
        graphs: dict[tuple, GraphFn] = {}  # per autocast state, thread count and input shapes

        def runner(*args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            # the thread count too: Inductor builds its CPU kernels for the count it sees while compiling
            device = args[0].device.type
            key = (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device),
                   torch.get_num_threads(), *((a.shape, a.dtype) for a in args))
            graph = graphs.get(key)
            if graph is None:
                try:
                    graph = graphs[key] = compile_step(dit, args)
                except COMPILE_FAILURES as err:
                    raise CompileError(f"the DiT step could not be compiled on this machine "
                                       f"({one_line(err)[:300]}); use backend 'eager'") from err
            x0, keys, values = graph(list(args))
            return x0, keys, values

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

"""Export the two hot graphs of sampling (AOTInductor / ONNX / TensorRT) and run them in the sampler.

The graphs (pure tensors in and out, built from the model code itself, see `DiT.step` and
`ARVAE.decode_step`):

- ``dit_step``: the DiT over M active frames after a K/V cache.
    z [B, M, L, D], block_mods [depth, B, M, 1, 6H], final_mod [B, M, 1, 2H],
    past_k, past_v [depth, B, heads, S, L, head_dim], past_len int64 [1]
    -> x0 [B, M, L, D], new_k, new_v [depth, B, heads, M * L, head_dim]
  Dynamic: B in 1..max_batch, M in 1..max_frames, S in 1..max_frames - 1; past_len in 0..S with
  past_len + M <= max_frames (checked by the runtime). The cache always has at least one slot: "no cache" is
  one padding slot with past_len = 0, masked out inside the graph. So no dimension is ever 0, and one graph
  serves every case (torch.export specialises sizes 0 and 1 it sees; the example inputs use 2 everywhere).
- ``vae_decode_step``: the causal VAE decoder on one frame with its temporal memory as a fixed-size ring.
    latent [B, L, D], memory [decoder_depth, B, S_mem, L, 2C], mem_len int64 [1] (0..S_mem)
    -> frame [B, 3, H, W], memory' [decoder_depth, B, S_mem, L, 2C]
  S_mem = temporal_window - 1 is fixed; the number of real frames in it (mem_len) is a tensor, so the graph
  is static except for B.

Backends: ``aoti`` (torch._inductor.aoti_compile_and_package, CPU or CUDA), ``onnx`` (opset 18, ONNX Runtime),
``tensorrt`` (torch.export then torch_tensorrt.dynamo.compile, saved with torch_tensorrt.save; CUDA only).
Every export is validated against the eager model on random inputs at several shapes of the dynamic ranges;
the errors go into `manifest.json`, and an export over tolerance is refused.

Runtime: `ExportedModels.load(export_dir, checkpoint)` gives `dit` and `vae` stand-ins with the interface the
sampler and the pipeline use (`forward_cached`, `conditioning_table`, `start_decode`, `decode_next`, ...);
each call checks the shapes against the manifest first (AOTInductor does not check them itself).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from engine.atomic import atomic_path
from engine.checkpoint import Checkpoint, load_checkpoint
from engine.errors import ArdiffError
from engine.device import parse_device
from engine.backends.step_dit import StepDiT

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "ardiff-export"
MANIFEST_VERSION = 1
BACKENDS = ("aoti", "onnx", "tensorrt")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ONNX_OPSET = 18
GRAPH_FILES = {
    "aoti": {"dit_step": "dit_step.pt2", "vae_decode_step": "vae_decode_step.pt2"},
    "onnx": {"dit_step": "dit_step.onnx", "vae_decode_step": "vae_decode_step.onnx"},
    "tensorrt": {"dit_step": "dit_step.trt.ep", "vae_decode_step": "vae_decode_step.trt.ep"},
}
# Validation tolerances on max |exported - eager| / max |eager| per output (relative to the output's scale,
# since latents, keys and pixels have different magnitudes), and the absolute error as a second bound.
TOLERANCE = {"fp32": {"rel": 1e-4, "abs": 1e-3}, "bf16": {"rel": 5e-2, "abs": 0.5},
             "fp16": {"rel": 1e-2, "abs": 0.1}}
TENSORRT_INSTALL = ("pip install 'ardiff[tensorrt]' --extra-index-url https://download.pytorch.org/whl/cu128 "
                    "(torch-tensorrt for torch 2.13, on a machine with CUDA)")


class ExportError(ArdiffError):
    """An export that cannot be made, loaded or trusted (missing backend, mismatch, failed validation)."""


class ExportShapeError(ExportError):
    """A call to an exported graph with shapes outside what it was exported for."""


# ---------------------------------------------------------------------------------------------------------
# graphs


class DiTStepGraph(nn.Module):
    """`DiT.step` as a module for torch.export."""

    def __init__(self, dit: nn.Module) -> None:
        super().__init__()
        self.dit = dit

    def forward(self, z, block_mods, final_mod, past_k, past_v, past_len):
        return self.dit.step(z, block_mods, final_mod, past_k, past_v, past_len)


class VAEDecodeStepGraph(nn.Module):
    """`ARVAE.decode_step` as a module for torch.export."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latent, memory, mem_len):
        return self.vae.decode_step(latent, memory, mem_len)


@dataclass
class GraphSpec:
    """Names, static sizes and dynamic dims of a graph's inputs, with a maker of inputs at given dims."""

    name: str
    inputs: list[str]
    outputs: list[str]
    shapes: dict[str, list[int | str]]  # per input: ints are fixed, strings name a dynamic dim
    dtypes: dict[str, str]
    dims: dict[str, tuple[int, int]]  # dynamic dim -> inclusive range

    def to_json(self) -> dict[str, Any]:
        return {"inputs": [{"name": n, "shape": self.shapes[n], "dtype": self.dtypes[n]} for n in self.inputs],
                "outputs": self.outputs, "dims": {k: list(v) for k, v in self.dims.items()}}


def dit_spec(dit: nn.Module, max_frames: int, max_batch: int, dtype: str) -> GraphSpec:
    depth, heads = len(dit.blocks), dit.heads
    H = dit.x_embed.out_features
    L, D = dit.num_tokens, dit.latent_dim
    fl = str(DTYPES[dtype]).replace("torch.", "")
    return GraphSpec(
        "dit_step", ["z", "block_mods", "final_mod", "past_k", "past_v", "past_len"], ["x0", "new_k", "new_v"],
        {"z": ["batch", "frames", L, D], "block_mods": [depth, "batch", "frames", 1, 6 * H],
         "final_mod": ["batch", "frames", 1, 2 * H], "past_k": [depth, "batch", heads, "cache_slots", L, H // heads],
         "past_v": [depth, "batch", heads, "cache_slots", L, H // heads], "past_len": [1]},
        {"z": fl, "block_mods": fl, "final_mod": fl, "past_k": fl, "past_v": fl, "past_len": "int64"},
        {"batch": (1, max_batch), "frames": (1, max_frames), "cache_slots": (1, max(1, max_frames - 1))})


def vae_spec(vae: nn.Module, max_batch: int, dtype: str) -> GraphSpec:
    c = vae.cfg
    fl = str(DTYPES[dtype]).replace("torch.", "")
    return GraphSpec(
        "vae_decode_step", ["latent", "memory", "mem_len"], ["frame", "new_memory"],
        {"latent": ["batch", c.num_latent_tokens, c.latent_dim],
         "memory": [c.decoder_depth, "batch", vae.memory_slots, c.num_latent_tokens, 2 * c.width], "mem_len": [1]},
        {"latent": fl, "memory": fl, "mem_len": "int64"}, {"batch": (1, max_batch)})


def make_inputs(spec: GraphSpec, dims: dict[str, int], device: torch.device, generator: torch.Generator,
                past_len: int | None = None) -> tuple[torch.Tensor, ...]:
    """Random inputs of the spec at these dims; the int64 length input gets `past_len` (default: full)."""
    out = []
    for name in spec.inputs:
        shape = [dims[d] if isinstance(d, str) else d for d in spec.shapes[name]]
        if spec.dtypes[name] == "int64":
            full = dims.get("cache_slots", spec.shapes.get("memory", [0, 0, 0])[2])
            out.append(torch.tensor([full if past_len is None else past_len], dtype=torch.long, device=device))
        else:
            x = torch.randn(shape, generator=generator).to(device=device, dtype=getattr(torch, spec.dtypes[name]))
            out.append(x)
    return tuple(out)


def check_call(spec: GraphSpec, args: tuple[torch.Tensor, ...], device: torch.device, max_total: int | None = None
               ) -> None:
    """Raise `ExportShapeError` unless `args` fit the spec: rank, fixed sizes, dynamic ranges, dtype, device."""
    if len(args) != len(spec.inputs):
        raise ExportShapeError(f"{spec.name}: expected {len(spec.inputs)} inputs, got {len(args)}")
    seen: dict[str, int] = {}
    for name, x in zip(spec.inputs, args):
        want = spec.shapes[name]
        if not isinstance(x, torch.Tensor) or x.dim() != len(want):
            raise ExportShapeError(f"{spec.name}: input {name} must be a {len(want)}-d tensor {want}, got "
                                   f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        for axis, (size, w) in enumerate(zip(x.shape, want)):
            if isinstance(w, int):
                if size != w:
                    raise ExportShapeError(f"{spec.name}: input {name} {tuple(x.shape)} must have size {w} at "
                                           f"axis {axis} (exported shape {want})")
                continue
            lo, hi = spec.dims[w]
            if not lo <= size <= hi:
                raise ExportShapeError(f"{spec.name}: {w} = {size} (input {name}, axis {axis}) is outside the "
                                       f"exported range {lo}..{hi}")
            if seen.setdefault(w, size) != size:
                raise ExportShapeError(f"{spec.name}: inputs disagree on {w}: {seen[w]} vs {size} (input {name})")
        if str(x.dtype).replace("torch.", "") != spec.dtypes[name]:
            raise ExportShapeError(f"{spec.name}: input {name} must be {spec.dtypes[name]}, got {x.dtype}")
        if x.device.type != device.type:
            raise ExportShapeError(f"{spec.name}: input {name} is on {x.device}, the graph runs on {device}")
    length = args[spec.inputs.index("past_len" if "past_len" in spec.inputs else "mem_len")]
    slots = args[3].shape[3] if spec.name == "dit_step" else args[1].shape[2]
    n = int(length[0])
    if not 0 <= n <= slots:
        raise ExportShapeError(f"{spec.name}: length {n} must be in 0..{slots} (the slots passed)")
    if max_total is not None and spec.name == "dit_step" and n + args[0].shape[1] > max_total:
        raise ExportShapeError(f"{spec.name}: cached frames ({n}) + active frames ({args[0].shape[1]}) exceed the "
                               f"exported maximum of {max_total} frames")


# ---------------------------------------------------------------------------------------------------------
# backends


def backend_version(backend: str) -> dict[str, str]:
    versions = {"torch": torch.__version__}
    if backend == "onnx":
        for mod in ("onnx", "onnxruntime", "onnxscript"):
            versions[mod] = _version(mod)
    elif backend == "tensorrt":
        versions["torch_tensorrt"] = _version("torch_tensorrt")
        versions["tensorrt"] = _version("tensorrt")
    return versions


def _version(module: str) -> str:
    try:
        return importlib.import_module(module).__version__
    except Exception:
        try:
            return importlib.metadata.version(module.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            return "not installed"


def require_backend(backend: str, device: torch.device) -> None:
    """Raise `ExportError` (one line: what is missing and how to install it) unless the backend can run here."""
    if backend not in BACKENDS:
        raise ExportError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)} (or 'eager')")
    if backend != "tensorrt" and device.type == "cuda" and not torch.cuda.is_available():
        raise ExportError("--device cuda: this torch has no CUDA device (torch " + torch.__version__ + "); use "
                          "--device cpu, or install a CUDA build of torch==2.13.0 on a GPU machine")
    if backend == "tensorrt":
        if device.type != "cuda":
            raise ExportError("--tensorrt runs on CUDA only (--device cuda); on a CPU use --aoti or --onnx")
        missing = []
        if not torch.cuda.is_available():
            missing.append("CUDA (no GPU visible to torch " + torch.__version__ + ")")
        try:
            importlib.import_module("torch_tensorrt")
        except Exception as err:  # ImportError, or a broken install (wrong torch build)
            missing.append(f"torch_tensorrt ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})")
        if missing:
            raise ExportError(f"--tensorrt needs {' and '.join(missing)}: on a CUDA machine run {TENSORRT_INSTALL}; "
                              f"on this machine use --aoti or --onnx")
    elif backend == "onnx":
        for mod in ("onnx", "onnxruntime", "onnxscript"):
            try:
                importlib.import_module(mod)
            except ImportError:
                raise ExportError(f"--onnx needs {mod}: pip install 'ardiff[export]'") from None
        if device.type == "cuda":
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ExportError("ONNX Runtime here has no CUDAExecutionProvider (installed providers: "
                                  f"{', '.join(ort.get_available_providers())}); pip install onnxruntime-gpu, "
                                  "or use --device cpu")


def _export_program(module: nn.Module, spec: GraphSpec, device: torch.device):
    """torch.export with the spec's dynamic dims; example inputs use 2 for every dynamic size (no 0/1)."""
    from torch.export import Dim

    dims = {name: Dim(name, min=lo, max=hi) for name, (lo, hi) in spec.dims.items() if hi > lo}
    example = {name: min(max(2, lo), hi) for name, (lo, hi) in spec.dims.items()}
    args = make_inputs(spec, example, device, torch.Generator().manual_seed(0), past_len=1)
    dynamic = tuple({axis: dims[d] for axis, d in enumerate(spec.shapes[n]) if isinstance(d, str) and d in dims}
                    or None for n in spec.inputs)
    with torch.no_grad():
        return torch.export.export(module, args, dynamic_shapes=dynamic), args, dynamic


def _compile(backend: str, module: nn.Module, spec: GraphSpec, device: torch.device, dtype: str, path: Path,
             log: Callable[[str], None]) -> dict[str, Any]:
    t0 = time.perf_counter()
    ep, args, dynamic = _export_program(module, spec, device)
    log(f"  {spec.name}: torch.export done ({time.perf_counter() - t0:.1f} s)")
    info: dict[str, Any] = {"file": path.name}
    if backend == "aoti":
        from torch._inductor import aoti_compile_and_package

        with torch.no_grad():
            aoti_compile_and_package(ep, package_path=str(path))
    elif backend == "onnx":
        with torch.no_grad():
            program = torch.onnx.export(ep, args, dynamic_shapes=dynamic, opset_version=ONNX_OPSET, dynamo=True,
                                        input_names=spec.inputs, output_names=spec.outputs, verbose=False)
        program.save(str(path), external_data=False)
        import onnx

        onnx.checker.check_model(str(path))
        info["opset"] = ONNX_OPSET
    elif backend == "tensorrt":
        compile_tensorrt(ep, args, dynamic, spec, path)
    info["compile_s"] = round(time.perf_counter() - t0, 2)
    info["sha256"] = file_sha256(path)
    log(f"  {spec.name}: {backend} artifact written ({info['compile_s']} s)")
    return info


def compile_tensorrt(ep, args: tuple[torch.Tensor, ...], dynamic, spec: GraphSpec, path: Path) -> None:
    """torch-tensorrt's dynamo path: compile the exported program for the spec's ranges, save it.

    The program is already in the asked dtype (the model was cast before torch.export), so explicit typing
    keeps that precision; the min/opt/max shapes of each input come from the spec's dynamic ranges.
    """
    import torch_tensorrt

    inputs = []
    for name, x in zip(spec.inputs, args):
        want = spec.shapes[name]
        lo = [spec.dims[d][0] if isinstance(d, str) else d for d in want]
        hi = [spec.dims[d][1] if isinstance(d, str) else d for d in want]
        inputs.append(torch_tensorrt.Input(min_shape=lo, opt_shape=list(x.shape), max_shape=hi, dtype=x.dtype,
                                           name=name))
    trt_module = torch_tensorrt.dynamo.compile(ep, arg_inputs=inputs, use_explicit_typing=True, min_block_size=1)
    torch_tensorrt.save(trt_module, str(path), output_format="exported_program", arg_inputs=list(args),
                        dynamic_shapes=dynamic)


class GraphRunner:
    """Calls one exported graph with tensors; checks shapes first; returns a tuple of tensors."""

    def __init__(self, backend: str, path: Path, spec: GraphSpec, device: torch.device, max_total: int | None = None
                 ) -> None:
        self.backend, self.path, self.spec, self.device, self.max_total = backend, path, spec, device, max_total
        self.calls = 0
        if backend == "aoti":
            from torch._inductor import aoti_load_package

            self._fn = aoti_load_package(str(path))
        elif backend == "onnx":
            import onnxruntime as ort

            providers = ["CPUExecutionProvider"]
            if device.type == "cuda":
                providers = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider")
                             if p in ort.get_available_providers()] + providers
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = torch.get_num_threads()
            # Torch's OpenMP threads run between calls in the same process: ORT threads that spin while idle
            # starve them (and the other way round) on small CPUs; measured up to 4x slower rows with spinning.
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self._session = ort.InferenceSession(str(path), opts, providers=providers)
            self.providers = self._session.get_providers()
        elif backend == "tensorrt":
            importlib.import_module("torch_tensorrt")  # registers the TensorRT ops the saved program calls
            self._fn = torch.export.load(str(path)).module()
        else:
            raise ExportError(f"unknown backend {backend!r}")

    def __call__(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        check_call(self.spec, args, self.device, self.max_total)
        self.calls += 1
        if self.backend == "onnx":
            feed = {n: a.detach().contiguous().cpu().numpy() for n, a in zip(self.spec.inputs, args)}
            out = self._session.run(None, feed)
            return tuple(torch.from_numpy(np.ascontiguousarray(o)).to(self.device) for o in out)
        with torch.no_grad():
            out = self._fn(*args)
        return tuple(out)


# ---------------------------------------------------------------------------------------------------------
# validation


def validation_cases(dit_dims: dict[str, tuple[int, int]]) -> list[tuple[int, int, int]]:
    """(batch, active frames M, cached frames P) spread over the dynamic ranges, edges included."""
    bmax = dit_dims["batch"][1]
    fmax = dit_dims["frames"][1]
    cases = [(1, 1, 0), (1, fmax, 0), (1, 1, fmax - 1), (bmax, 2, 1), (1, 3, max(0, fmax // 2 - 1)),
             (bmax, max(1, fmax // 2), fmax - max(1, fmax // 2))]
    return sorted({(b, m, p) for b, m, p in cases if m + p <= fmax})


def _err(got: torch.Tensor, want: torch.Tensor) -> tuple[float, float]:
    a = (got.float() - want.float()).abs().max().item()
    scale = want.float().abs().max().item()
    return a, a / max(scale, 1e-12)


def validate(runners: dict[str, GraphRunner], dit: nn.Module, vae: nn.Module, dtype: str, seed: int = 0
             ) -> dict[str, Any]:
    """Run the exported graphs and the eager model (same dtype) on the same random inputs; record errors."""
    g = torch.Generator().manual_seed(seed)
    tol = TOLERANCE[dtype]
    records = []
    dspec = runners["dit_step"].spec
    for b, m, p in validation_cases(dspec.dims):
        dims = {"batch": b, "frames": m, "cache_slots": max(p, 1)}
        args = make_inputs(dspec, dims, runners["dit_step"].device, g, past_len=p)
        with torch.no_grad():
            want = dit.step(*args)
        got = runners["dit_step"](*args)
        records.append(_record("dit_step", {"batch": b, "active_frames": m, "cached_frames": p}, got, want,
                               dspec.outputs))
    vspec = runners["vae_decode_step"].spec
    slots = vspec.shapes["memory"][2]
    for b, n in sorted({(1, 0), (1, 1), (vspec.dims["batch"][1], slots), (1, slots)}):
        args = make_inputs(vspec, {"batch": b}, runners["vae_decode_step"].device, g, past_len=n)
        with torch.no_grad():
            want = vae.decode_step(*args)
        got = runners["vae_decode_step"](*args)
        records.append(_record("vae_decode_step", {"batch": b, "memory_frames": n}, got, want, vspec.outputs))
    max_abs = max(r["max_abs_err"] for r in records)
    max_rel = max(r["max_rel_err"] for r in records)
    passed = all(r["max_abs_err"] <= tol["abs"] and r["max_rel_err"] <= tol["rel"] for r in records)
    return {"method": f"exported graphs vs the eager model in {dtype} on the same random inputs (seed {seed}), "
                      "per output: max |exported - eager| and that over max |eager|",
            "tolerance": tol, "max_abs_err": max_abs, "max_rel_err": max_rel, "passed": passed, "cases": records}


def _record(graph: str, case: dict[str, int], got, want, names) -> dict[str, Any]:
    errs = {n: _err(g_, w) for n, g_, w in zip(names, got, want)}
    return {"graph": graph, **case,
            "max_abs_err": max(e[0] for e in errs.values()), "max_rel_err": max(e[1] for e in errs.values()),
            "per_output": {n: {"abs": e[0], "rel": e[1]} for n, e in errs.items()}}


# ---------------------------------------------------------------------------------------------------------
# export


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_dtype(device: torch.device) -> str:
    return "bf16" if device.type == "cuda" else "fp32"


def export(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, backend: str, device: str = "cpu",
           dtype: str | None = None, max_frames: int | None = None, max_batch: int = 2,
           log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Export, validate and write `out_dir` (atomically: a temp dir renamed at the end). Returns the manifest.

    Raises `ExportError` for a missing backend, bad options, or an export over the validation tolerance.
    """
    dev = _device(device)
    require_backend(backend, dev)
    dtype = dtype or default_dtype(dev)
    if dtype not in DTYPES:
        raise ExportError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if backend == "onnx" and dtype == "bf16":
        raise ExportError("--onnx --dtype bf16: ONNX Runtime has no bfloat16 kernels for these graphs (and numpy "
                          "no bfloat16 to feed them); use --dtype fp32 (or fp16 on CUDA), or --aoti for bfloat16")
    if dev.type == "cpu" and dtype == "fp16":
        raise ExportError("--dtype fp16 on CPU: half-precision matmuls are emulated on CPUs; use fp32 or bf16")
    if dev.type == "cpu" and dtype == "bf16":
        from engine.device import cpu_supports_bf16

        if not cpu_supports_bf16():
            log("note: this CPU has no native bfloat16 (no AMX / AVX512-BF16): bf16 graphs run slower than fp32 here")
    out_dir = Path(out_dir)
    check_export_target(out_dir, checkpoint)  # before the checkpoint is loaded and minutes of compiling
    ckpt = load_checkpoint(checkpoint, device="cpu")
    cfg = ckpt.config
    if ckpt.dit.causal is False:
        raise ExportError("this checkpoint's DiT uses full attention (attention='full'); the cached step "
                          "needs a causal DiT")
    max_frames = cfg.window if max_frames is None else int(max_frames)
    if not 2 <= max_frames <= cfg.window:
        raise ExportError(f"--max-frames must be in 2..{cfg.window} (the model's window), got {max_frames}")
    if not 1 <= max_batch <= 64:
        raise ExportError(f"max batch must be in 1..64, got {max_batch}")
    torch_dtype = DTYPES[dtype]
    dit = ckpt.dit.to(device=dev, dtype=torch_dtype).eval()
    vae = ckpt.vae.to(device=dev, dtype=torch_dtype).eval()
    specs = {"dit_step": dit_spec(dit, max_frames, max_batch, dtype), "vae_decode_step": vae_spec(vae, max_batch, dtype)}
    modules = {"dit_step": DiTStepGraph(dit), "vae_decode_step": VAEDecodeStepGraph(vae)}
    log(f"hashing {ckpt.path}")
    digest = file_sha256(ckpt.path)
    with atomic_path(out_dir, directory=True, may_replace=is_previous_export) as tmp:
        graphs = {}
        for name in ("dit_step", "vae_decode_step"):
            graphs[name] = {**_compile(backend, modules[name], specs[name], dev, dtype,
                                       tmp / GRAPH_FILES[backend][name], log), **specs[name].to_json()}
        graphs["dit_step"]["constraints"] = ["0 <= past_len[0] <= cache_slots (the first cache_slots - past_len "
                                             "slots are padding)", f"past_len[0] + frames <= {max_frames}"]
        graphs["vae_decode_step"]["constraints"] = [f"0 <= mem_len[0] <= {vae.memory_slots} (the last mem_len "
                                                    "memory slots are real frames)"]
        log("validating the exported graphs against the eager model")
        runners = {n: GraphRunner(backend, tmp / GRAPH_FILES[backend][n], specs[n], dev,
                                  max_frames if n == "dit_step" else None) for n in specs}
        report = validate(runners, dit, vae, dtype)
        if not report["passed"]:
            worst = max(report["cases"], key=lambda r: r["max_rel_err"])
            raise ExportError(f"validation failed: {worst['graph']} differs from the eager model by "
                              f"{worst['max_abs_err']:.3g} abs / {worst['max_rel_err']:.3g} rel (tolerance "
                              f"{report['tolerance']['abs']} abs, {report['tolerance']['rel']} rel); not written")
        manifest = {
            "format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION,
            "checkpoint": {"file": ckpt.path.name, "sha256": digest},
            "preset": cfg.name, "config": cfg.to_dict(),
            "backend": backend, "backend_version": backend_version(backend),
            "device": dev.type, "dtype": dtype, "max_frames": max_frames, "max_batch": max_batch,
            "memory_slots": vae.memory_slots,
            "graphs": graphs, "validation": report,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "host": {"machine": platform.machine(), "python": platform.python_version()},
        }
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
        del runners
    log(f"wrote {out_dir}")
    return manifest


def is_previous_export(folder: Path) -> bool:
    """Whether `folder` holds an ardiff export and nothing else (a manifest and the graph files it names):
    the only non-empty folder `export` replaces. Anything else there (a checkpoint, notes) is never deleted."""
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
        ours = {MANIFEST_NAME} | {g["file"] for g in manifest["graphs"].values()}
        return manifest.get("format") == MANIFEST_FORMAT and {p.name for p in folder.iterdir()} <= ours
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def check_export_target(out_dir: Path, checkpoint: str | os.PathLike | None = None) -> None:
    """Refuse an output folder before any work: a file, the checkpoint itself, a folder holding the
    checkpoint or anything that is not a previous export, or a folder that cannot be written.

    Why refuse rather than write beside other files: the export is one unit (a manifest and the graphs it
    hashes) that is replaced whole on a re-export; mixed with foreign files, a later replace would have to
    delete them or leave a folder that is neither. Like `git clone`, a non-empty foreign folder is refused."""
    from engine.atomic import check_folder_target
    from engine.errors import OutputError
    from engine.outputs import check_not_input, check_writable_parent, describe_special

    special = describe_special(out_dir)
    if special:
        raise ExportError(f"-o {out_dir} is {special}; give a folder path")
    try:
        check_not_input(out_dir, [checkpoint] if checkpoint is not None else [])
        check_folder_target(out_dir, is_previous_export)
        check_writable_parent(out_dir)  # the export is made beside it and renamed into place
    except OutputError as err:
        raise ExportError(f"{err}; ardiff-export writes a new folder or replaces a previous export") from None


def _device(device: str | torch.device) -> torch.device:
    try:
        return parse_device(device)
    except ValueError:
        raise ExportError(f"--device must be cpu or cuda, got {device!r}") from None


# ---------------------------------------------------------------------------------------------------------
# runtime


def read_manifest(export_dir: str | os.PathLike) -> dict[str, Any]:
    export_dir = Path(export_dir)
    path = export_dir / MANIFEST_NAME
    if not path.is_file():
        raise ExportError(f"{export_dir} is not an ardiff export (no {MANIFEST_NAME}); make one with ardiff-export")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ExportError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ExportError(f"{path} is not an ardiff export manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > MANIFEST_VERSION:
        raise ExportError(f"{path} has export format {version}; this ardiff reads up to {MANIFEST_VERSION}: "
                          f"upgrade ardiff or re-export with this version")
    return manifest


class ExportedDiT(StepDiT):
    """Stands in for the DiT in `CachedSampler`: `forward_cached` runs the exported `dit_step` graph.

    A plain call (the reference sampler) refuses rather than silently running eager.
    """

    def __call__(self, *args, **kwargs):
        raise ExportError("an exported backend runs the cached sampler only; use backend='eager' for "
                          "sampler='reference'")


@dataclass
class ExportedDecodeState:
    memory: torch.Tensor
    length: int = 0
    num_frames: int = 0


class ExportedVAE:
    """Stands in for the AR-VAE in the pipeline: `start_decode` / `decode_next` run `vae_decode_step`."""

    def __init__(self, vae: nn.Module, runner: GraphRunner, dtype: torch.dtype) -> None:
        self._vae, self.runner, self.dtype = vae, runner, dtype

    def __getattr__(self, name: str) -> Any:
        return getattr(self._vae, name)

    def start_decode(self, batch_size: int | None = None, device=None, dtype=None) -> ExportedDecodeState:
        return ExportedDecodeState(memory=None)

    def decode_next(self, latent: torch.Tensor, state: ExportedDecodeState) -> torch.Tensor:
        self._vae._check_latents(latent, "decode_next", "[B, L, D]", 3)
        c = self._vae.cfg
        if state.memory is None:
            state.memory = torch.zeros(c.decoder_depth, latent.shape[0], self._vae.memory_slots,
                                       c.num_latent_tokens, 2 * c.width, dtype=self.dtype, device=self.runner.device)
        n = torch.tensor([state.length], dtype=torch.long, device=self.runner.device)
        frame, state.memory = self.runner(latent.to(device=self.runner.device, dtype=self.dtype).contiguous(),
                                          state.memory, n)
        state.length = min(state.length + 1, self._vae.memory_slots)
        state.num_frames += 1
        return frame


@dataclass
class ExportedModels:
    manifest: dict[str, Any]
    dit: ExportedDiT
    vae: ExportedVAE
    export_dir: Path

    @property
    def backend(self) -> str:
        return self.manifest["backend"]

    def describe(self) -> str:
        m = self.manifest
        return (f"{m['backend']} graphs (DiT step, VAE decode step; {m['dtype']}, {m['device']}) from "
                f"{self.export_dir}; encoder and per-run conditioning eager")

    @classmethod
    def load(cls, export_dir: str | os.PathLike, checkpoint: Checkpoint, backend: str | None = None
             ) -> "ExportedModels":
        """Load an export made from this checkpoint (sha256 checked) with the backend asked for."""
        export_dir = Path(export_dir)
        manifest = read_manifest(export_dir)
        if backend is not None and manifest.get("backend") != backend:
            raise ExportError(f"{export_dir} holds a {manifest.get('backend')} export, not {backend}; export with "
                              f"ardiff-export --{backend} or load it with backend={manifest.get('backend')!r}")
        backend = manifest["backend"]
        dev = _device(manifest.get("device", "cpu"))
        require_backend(backend, dev)
        if checkpoint.path is None:
            raise ExportError("an exported backend needs the checkpoint file it was exported from (to check its hash)")
        digest = file_sha256(checkpoint.path)
        if digest != manifest["checkpoint"]["sha256"]:
            raise ExportError(f"{export_dir} was exported from another checkpoint ({manifest['checkpoint']['file']}, "
                              f"sha256 {manifest['checkpoint']['sha256'][:12]}...), not {checkpoint.path.name} "
                              f"(sha256 {digest[:12]}...); re-export it")
        dtype = DTYPES[manifest["dtype"]]
        runners = {}
        for name in ("dit_step", "vae_decode_step"):
            g = manifest["graphs"][name]
            path = export_dir / g["file"]
            if not path.is_file():
                raise ExportError(f"{export_dir} is incomplete: {g['file']} is missing; re-export it")
            _verify_graph(path, g)
            spec = GraphSpec(name, [i["name"] for i in g["inputs"]], g["outputs"],
                             {i["name"]: i["shape"] for i in g["inputs"]}, {i["name"]: i["dtype"] for i in g["inputs"]},
                             {k: tuple(v) for k, v in g["dims"].items()})
            try:
                runners[name] = GraphRunner(backend, path, spec, dev,
                                            manifest["max_frames"] if name == "dit_step" else None)
            except ExportError:
                raise
            except Exception as err:
                raise ExportError(f"cannot load {path} with {backend}: {str(err).splitlines()[0]}") from None
        dit = checkpoint.dit.to(dev).eval()
        vae = checkpoint.vae.to(dev).eval()
        return cls(manifest, ExportedDiT(dit, runners["dit_step"], dtype),
                   ExportedVAE(vae, runners["vae_decode_step"], dtype), export_dir)



def _verify_graph(path: Path, graph: dict[str, Any]) -> None:
    """A graph file must hash to the sha256 its manifest recorded: a changed byte means a graph that was never
    validated against the eager model (or a tampered one), and it is refused before it runs."""
    want = graph.get("sha256")
    if not isinstance(want, str) or len(want) != 64:
        raise ExportError(f"{path.parent / MANIFEST_NAME} records no valid sha256 for {path.name}; re-export it")
    got = file_sha256(path)
    if got != want:
        raise ExportError(f"{path} does not match its manifest (sha256 {got[:12]}..., recorded {want[:12]}...): "
                          f"the file was changed after export; re-export it")


def check_backend_args(backend: str, export_dir: str | os.PathLike | None, device: str) -> dict[str, Any]:
    """Validate `load_pipeline(backend=..., export_dir=...)`; returns the manifest (its device and dtype rule)."""
    if backend not in BACKENDS:
        raise ExportError(f"backend must be 'eager', 'compile' or one of {', '.join(BACKENDS)}, got {backend!r}")
    if export_dir is None:
        raise ExportError(f"backend {backend!r} needs export_dir (a folder written by ardiff-export --{backend})")
    manifest = read_manifest(export_dir)
    exported = manifest.get("device", "cpu")
    if device not in ("auto", exported) and torch.device(device).type != exported:
        raise ExportError(f"{export_dir} was exported for {exported}, not {device}; re-export with --device {device}")
    if manifest.get("backend") != backend:
        raise ExportError(f"{export_dir} holds a {manifest.get('backend')} export, not {backend}; export with "
                          f"ardiff-export --{backend} or load it with backend={manifest.get('backend')!r}")
    return manifest


def load_exported(export_dir: str | os.PathLike | None, checkpoint: Checkpoint, backend: str,
                  device: torch.device) -> ExportedModels:
    """The runtime of `Pipeline(backend=...)`: the exported graphs, checked against this checkpoint."""
    check_backend_args(backend, export_dir, device.type)
    return ExportedModels.load(export_dir, checkpoint, backend)

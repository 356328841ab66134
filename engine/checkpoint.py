"""Checkpoints: one safetensors file holding both networks, with the model config and provenance as JSON.

Loading never unpickles: safetensors is a plain tensor container, and anything else (a PyTorch pickle, a
foreign safetensors file, wrong shapes) is refused with a `CheckpointError` that says what is wrong.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.overrides import TorchFunctionMode

from engine.atomic import atomic_path
from engine.errors import CheckpointError, WeightsUnavailableError
from engine.models import build_models
from engine.models.presets import ModelConfig

FORMAT = "ardiff"
FORMAT_VERSION = 1
ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"
DEFAULT_CHECKPOINT_NAME = "ardiff-default.safetensors"


def default_checkpoint_path() -> Path:
    """The embedded default model: $ARDIFF_CHECKPOINT if set, else assets/ardiff-default.safetensors."""
    return Path(os.environ.get("ARDIFF_CHECKPOINT", ASSETS_DIR / DEFAULT_CHECKPOINT_NAME))


@dataclass
class Checkpoint:
    """A loaded model pair with its config and metadata (latent scale, recipe, data provenance, ...)."""

    vae: torch.nn.Module
    dit: torch.nn.Module
    config: ModelConfig
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def save_checkpoint(path: str | os.PathLike, vae: torch.nn.Module, dit: torch.nn.Module, cfg: ModelConfig,
                    meta: dict[str, Any] | None = None, dtype: torch.dtype | None = None) -> Path:
    """Write both networks and their config atomically. `dtype` (e.g. bfloat16) shrinks shipped weights."""
    tensors = {}
    for prefix, module in (("vae.", vae), ("dit.", dit)):
        for name, tensor in module.state_dict().items():
            tensor = tensor.detach().cpu()
            if dtype is not None and tensor.is_floating_point() and not name.endswith("latent_scale"):
                tensor = tensor.to(dtype)
            tensors[prefix + name] = tensor.contiguous()
    meta = dict(meta or {})
    if hasattr(vae, "latent_scale"):
        meta.setdefault("latent_scale", float(vae.latent_scale))
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "config": json.dumps(cfg.to_dict()),
        "meta": json.dumps(meta),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def read_checkpoint_header(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, Any]]:
    """Config and metadata of a checkpoint without loading its weights."""
    path = _existing_file(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a safetensors checkpoint ({_first_line(err)}); ardiff never "
                              f"unpickles files, so .pt/.ckpt pickles cannot be loaded") from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not an ardiff checkpoint (no ardiff metadata)")
    version = int(metadata.get("format_version", "0"))
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path} uses checkpoint format {version}; this ardiff reads up to "
                              f"{FORMAT_VERSION}: upgrade ardiff")
    try:
        cfg = ModelConfig.from_dict(json.loads(metadata["config"]))
        meta = json.loads(metadata.get("meta", "{}"))
    except (KeyError, json.JSONDecodeError, ValueError, TypeError) as err:
        raise CheckpointError(f"{path} has an invalid model config: {_first_line(err)}") from None
    return cfg, meta


def load_checkpoint(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint (None: the embedded default) into float32 models in eval mode on `device`."""
    if path is None:
        path = default_checkpoint_path()
        if not path.is_file():
            raise WeightsUnavailableError(
                f"the embedded default model is not at {path}; pass --checkpoint PATH (train one with "
                f"ardiff-train) or set ARDIFF_CHECKPOINT")
    path = _existing_file(path)
    cfg, meta = read_checkpoint_header(path)
    sampling_defaults(meta, path)  # a bad entry fails at load, not at the first sample
    vae, dit = build_meta_models(cfg)  # no random init to overwrite: every tensor comes from the file
    with safe_open(str(path), framework="pt") as f:
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    for prefix, module in (("vae.", vae), ("dit.", dit)):
        _load_into(module, {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, prefix, path)
        _check_materialised(module, prefix)
    stray = sorted(k for k in tensors if not k.startswith(("vae.", "dit.")))
    if stray:
        raise CheckpointError(f"{path} has unexpected tensors: {', '.join(stray[:5])}")
    vae.to(device).eval()
    dit.to(device).eval()
    return Checkpoint(vae=vae, dit=dit, config=cfg, meta=meta, path=path)


def sampling_defaults(meta: dict[str, Any], path: str | os.PathLike | None = None) -> dict[str, float]:
    """The sampling settings a checkpoint recommends (meta "sampling", written by `ardiff-train package`):
    so far `history_guidance` (engine.sampling), 1.0 (off) when absent."""
    given = meta.get("sampling", {})
    where = f"{path}: " if path else ""
    if not isinstance(given, dict) or set(given) - {"history_guidance"}:
        raise CheckpointError(f"{where}meta 'sampling' must be an object with at most 'history_guidance', got "
                              f"{json.dumps(given)[:80]}")
    value = given.get("history_guidance", 1.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise CheckpointError(f"{where}meta sampling.history_guidance must be a number >= 0, got {value!r}")
    return {"history_guidance": float(value)}


def _load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], prefix: str, path: Path) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {prefix}{missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
        if unexpected:
            parts.append(f"unexpected {prefix}{unexpected[0]}"
                         + (f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else ""))
        raise CheckpointError(f"{path} does not match its config: {'; '.join(parts)}")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(f"{path}: {prefix}{name} has shape {tuple(tensor.shape)}, the config expects "
                                  f"{tuple(expected[name].shape)}")
    # assign: the loaded tensors become the parameters (one copy, no random init underneath); float32 as built
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, assign=True)


def build_meta_models(cfg: ModelConfig) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(ARVAE, DiT) for a config on the meta device: shapes without memory or initialisation, to count
    parameters or to be filled by `load_state_dict(..., assign=True)`."""
    with _SkipMetaInit(), torch.device("meta"):  # the device context must be the inner mode
        return build_models(cfg)


class _SkipMetaInit(TorchFunctionMode):
    """Inside `torch.device("meta")`: initialisers on meta tensors do nothing, as there is no data to fill.
    Run, several of them (normal_, trunc_normal_) go through torch's Python reference ops, whose first use
    imports torch._dynamo: seconds of start-up for values that are thrown away. The mode is thread-local."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        target = args[0] if args else kwargs.get("tensor")  # torch.nn.init passes its tensor by keyword
        initialiser = (getattr(func, "__module__", None) == "torch.nn.init"
                       or getattr(func, "__name__", "") in _FILLS)
        if initialiser and isinstance(target, torch.Tensor) and target.is_meta:
            return target
        return func(*args, **kwargs)


# in-place ops that only fill values (never change a shape): the ones initialisers are made of
_FILLS = {"uniform_", "normal_", "zero_", "fill_", "copy_", "erfinv_", "mul_", "add_", "clamp_",
          "exponential_"}


def _check_materialised(module: torch.nn.Module, prefix: str) -> None:
    """Models are built on the meta device and filled from the file, so a tensor the state dict does not
    hold (a non-persistent buffer, a plain tensor attribute) would stay without data: fail loudly here."""
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if tensor.is_meta:
            raise RuntimeError(f"{prefix}{name} is not in the state dict, so load_checkpoint cannot fill it; "
                               f"make it a persistent buffer or compute it in forward")
    for name, sub in module.named_modules():
        for key, value in vars(sub).items():
            if isinstance(value, torch.Tensor) and value.is_meta:
                raise RuntimeError(f"{prefix}{name}.{key} is a tensor attribute load_checkpoint cannot fill")


def _existing_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint must be a file, got a directory: {path}")
    return path


def _first_line(err: BaseException) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0]

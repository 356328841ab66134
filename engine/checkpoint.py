"""Checkpoint files: one safetensors file holding both networks, with the model config and provenance as JSON.
Reading and writing the file lives here; building the models from its weights is engine.models.weights.

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

from engine.atomic import atomic_path
from engine.errors import CheckpointError, WeightsUnavailableError
from engine.hub import resolve_checkpoint
from engine.models.presets import ModelConfig
from engine.models.weights import models_from_state

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
    try:
        version = int(metadata.get("format_version", "0"))
    except ValueError:
        raise CheckpointError(f"{path} has an invalid format_version {metadata.get('format_version')!r:.40} "
                              f"(expected a whole number)") from None
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
    with safe_open(str(path), framework="pt") as f:
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    _check_values(tensors, path)
    vae, dit = models_from_state(cfg, tensors, str(path))
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


def _check_values(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Weights must be floats and finite: NaN, inf, int or bool weights give silent black frames."""
    for name, tensor in tensors.items():
        if not tensor.is_floating_point():
            raise CheckpointError(f"{path}: {name} holds {str(tensor.dtype).replace('torch.', '')} values; "
                                  f"weights must be floating point")
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise CheckpointError(f"{path}: {name} has {bad} non-finite value(s) (NaN or inf); the checkpoint "
                                  f"is damaged")


def _existing_file(path: str | os.PathLike) -> Path:
    from engine.outputs import describe_special

    path = resolve_checkpoint(path)  # hf:/https:// references are fetched (engine.hub); a path stays a path
    special = describe_special(path)  # a FIFO or /dev/zero is not "a directory", a loop not "not found"
    if special:
        raise CheckpointError(f"checkpoint must be a file, got {special}: {path}")
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint must be a file, got a directory: {path}")
    return path


def _first_line(err: BaseException) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0]

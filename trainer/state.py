"""A training run's directory on disk: atomic checkpoints of the whole training state, without pickles.

    checkpoints/step-00000100/   state.safetensors (weights, EMA, optimiser tensors, RNG tensors)
                                 state.json (step, data position, RNG, optimiser index, configs)
    checkpoints/latest.json      pointer to the newest complete checkpoint (written last, atomically)
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from engine.atomic import atomic_path
from engine.errors import CheckpointError
from engine.models.presets import ModelConfig
from trainer.config import TrainConfig, config_from_dict

STATE_FORMAT = "ardiff-train-state"
STATE_VERSION = 1

def flatten_optimizer(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state -> (tensors for safetensors, JSON index). No pickles."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    state_index: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        entry = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                name = f"{prefix}.state.{pid}.{k}"
                tensors[name] = v.detach().cpu().contiguous()
                entry[k] = {"tensor": name}
            else:
                entry[k] = {"value": v}
        state_index[str(pid)] = entry
    return tensors, {"state": state_index, "param_groups": sd["param_groups"]}


def unflatten_optimizer(index: dict, tensors: dict[str, torch.Tensor]) -> dict:
    state = {}
    for pid, entry in index["state"].items():
        state[int(pid)] = {k: (tensors[v["tensor"]] if "tensor" in v else v["value"]) for k, v in entry.items()}
    return {"state": state, "param_groups": index["param_groups"]}


def rng_state(gen: torch.Generator) -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"rng.torch": torch.get_rng_state(), "rng.train": gen.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    np_state = np.random.get_state()
    py_state = random.getstate()
    meta = {
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict, gen: torch.Generator) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    gen.set_state(tensors["rng.train"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
        if states and len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    n = meta["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = meta["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint directory of a run, or None."""
    pointer = checkpoints_dir(Path(run_dir)) / "latest.json"
    if not pointer.is_file():
        return None
    try:
        name = json.loads(pointer.read_text())["dir"]
    except (ValueError, KeyError) as err:
        raise CheckpointError(f"{pointer} is damaged ({err}); point it at a step-* folder by hand") from None
    path = pointer.parent / name
    if not (path / "state.json").is_file() or not (path / "state.safetensors").is_file():
        raise CheckpointError(f"{pointer} points at {path}, which is incomplete")
    return path


def write_checkpoint(run_dir: Path, step: int, tensors: dict[str, torch.Tensor], meta: dict,
                     keep: int) -> Path:
    """Atomically write checkpoints/step-N/, then the latest.json pointer, then prune old checkpoints."""
    root = checkpoints_dir(run_dir)
    target = root / f"step-{step:08d}"
    n = 0
    while target.exists():  # the same step saved again (e.g. a finished run resumed): never overwrite
        n += 1
        target = root / f"step-{step:08d}-{n}"
    with atomic_path(target, directory=True) as tmp:
        save_file(tensors, str(tmp / "state.safetensors"), metadata={"format": STATE_FORMAT})
        (tmp / "state.json").write_text(json.dumps(meta, indent=1))
    with atomic_path(root / "latest.json") as tmp:
        tmp.write_text(json.dumps({"dir": target.name, "step": step}))
    done = sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.startswith("."))
    for old in done[:-keep]:
        if old != target:
            for f in old.iterdir():
                f.unlink()
            old.rmdir()
    return target


def read_checkpoint(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(state.json, tensors) of one checkpoint directory."""
    try:
        meta = json.loads((path / "state.json").read_text())
        with safe_open(str(path / "state.safetensors"), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, ValueError, SafetensorError) as err:  # SafetensorError: truncated or damaged tensors
        raise CheckpointError(f"cannot read training checkpoint {path}: {err} (the file is damaged or "
                              f"truncated; resume from an older checkpoint by pointing checkpoints/latest.json "
                              f"at its step-* folder)") from None
    if meta.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not an ardiff-train checkpoint")
    return meta, tensors


def prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


@dataclass
class RunWeights:
    """The newest checkpoint of a run: its stage, configs and weights (model and EMA)."""

    path: Path
    stage: str
    step: int
    train_config: TrainConfig
    model_config: ModelConfig
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)


def load_run(run_dir: str | os.PathLike) -> RunWeights:
    """The weights of a run's newest checkpoint, or of one checkpoint (a run's `checkpoints/step-N` folder:
    e.g. the same step of several runs, for an ablation at equal budget)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory not found: {run_dir}")
    path = run_dir if (run_dir / "state.json").is_file() else latest_checkpoint(run_dir)
    if path is None:
        raise CheckpointError(f"{run_dir} holds no training checkpoint (checkpoints/latest.json missing)")
    meta, tensors = read_checkpoint(path)
    return RunWeights(path=path, stage=meta["stage"], step=meta["step"],
                      train_config=config_from_dict(meta["train_config"]),
                      model_config=ModelConfig.from_dict(meta["model_config"]),
                      model=prefixed(tensors, "model."), ema=prefixed(tensors, "ema."), meta=meta,
                      tensors=tensors)


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """A short hash of a module's weights (latent_scale left out: it is recorded on its own)."""
    h = hashlib.sha256()
    for k in sorted(k for k in state if not k.endswith("latent_scale")):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()[:16]

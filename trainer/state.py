"""A training run's directory on disk: atomic checkpoints of the whole training state, without pickles.

    checkpoints/step-00000100/   state.safetensors (weights, EMA, optimiser tensors, RNG tensors)
                                 state.json (step, data position, RNG, optimiser index, configs, provenance)
    checkpoints/latest.json      pointer to the newest complete checkpoint (written last, atomically)

The one place a run's state is written and read back: `TrainingState.save` / `restore`, `open_run_dir`
for a fresh or resumed run, `load_run` for a finished one.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
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
from trainer.config import RESUME_MUTABLE, ConfigError, TrainConfig, config_from_dict
from trainer.ema import EMA
from trainer.provenance import DataRecord, VAEProvenance

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


# =========================================================================== a run's state in training


@dataclass
class Position:
    """Where the loop is: optimizer steps done, and the data position (epoch, batches read in it)."""

    step: int = 0
    epoch: int = 0
    batch: int = 0


@dataclass
class Lineage:
    """What a run was made from, saved beside its state: the VAE its latents come from (or that it continues),
    its data, and the stages before this run (its own stage is added at every save)."""

    vae_source: VAEProvenance | None
    data: DataRecord
    recipe: list[dict]


@dataclass
class Saved:
    """A checkpoint read back to resume from."""

    path: Path
    meta: dict
    tensors: dict[str, torch.Tensor]


@dataclass
class TrainingState:
    """Everything a checkpoint restores: the trained model, its EMA and optimiser, the discriminator and its
    optimiser (VAE stages with the GAN), the RNGs (global ones and `gen`, the per-sample draws), and whether the
    VAE's latent scale was measured."""

    model: torch.nn.Module
    ema: EMA
    opt: torch.optim.Optimizer
    gen: torch.Generator
    disc: torch.nn.Module | None = None
    d_opt: torch.optim.Optimizer | None = None
    latent_scale_measured: bool = False

    def save(self, run_dir: Path, at: Position, cfg: TrainConfig, model_cfg: ModelConfig, world: int,
             lineage: Lineage, stage_record: dict, latent_scale: float | None, last_lr: float) -> Path:
        """Write checkpoints/step-N (atomically, then the pointer) and prune old ones; return its path.
        `stage_record` is this run's entry of the recipe; `last_lr` the learning rate of the last step."""
        tensors: dict[str, torch.Tensor] = {}
        tensors.update({f"model.{k}": v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()})
        tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in self.ema.state_dict().items()})
        opt_t, opt_index = flatten_optimizer(self.opt, "opt")
        tensors.update(opt_t)
        optimizers = {"opt": opt_index}
        if self.disc is not None:
            tensors.update({f"disc.{k}": v.detach().cpu().contiguous() for k, v in self.disc.state_dict().items()})
            d_t, d_index = flatten_optimizer(self.d_opt, "d_opt")
            tensors.update(d_t)
            optimizers["d_opt"] = d_index
        rng_t, rng_meta = rng_state(self.gen)
        tensors.update(rng_t)
        meta = {
            "format": STATE_FORMAT, "version": STATE_VERSION, "stage": cfg.stage, "step": at.step,
            "data_position": {"epoch": at.epoch, "batch": at.batch},
            "train_config": cfg.to_dict(), "model_config": model_cfg.to_dict(),
            "optimizers": optimizers, "ema_updates": self.ema.num_updates, "rng": rng_meta,
            "lr_scheduler": {"kind": cfg.lr_schedule, "warmup_steps": cfg.warmup_steps,
                             "last_step": at.step, "last_lr": last_lr},
            "world_size": world, "latent_scale_measured": self.latent_scale_measured,
            "latent_scale": latent_scale,
            "vae_source": lineage.vae_source.to_json() if lineage.vae_source is not None else None,
            "data": lineage.data.to_json(), "recipe": lineage.recipe + [stage_record], "time": time.time(),
        }
        return write_checkpoint(run_dir, at.step, tensors, meta, cfg.keep_checkpoints)

    def restore(self, saved: Saved, device: torch.device) -> Position:
        """Load a checkpoint's state into this one; return where its loop was."""
        meta, tensors = saved.meta, saved.tensors
        self.model.load_state_dict(prefixed(tensors, "model."))
        self.ema.load_state_dict({k: v.to(device) for k, v in prefixed(tensors, "ema.").items()},
                                 meta["ema_updates"])
        self.opt.load_state_dict(unflatten_optimizer(meta["optimizers"]["opt"], tensors))
        if self.disc is not None:
            self.disc.load_state_dict(prefixed(tensors, "disc."))
            self.d_opt.load_state_dict(unflatten_optimizer(meta["optimizers"]["d_opt"], tensors))
        restore_rng(tensors, meta["rng"], self.gen)
        self.latent_scale_measured = meta.get("latent_scale_measured", False)
        return Position(meta["step"], meta["data_position"]["epoch"], meta["data_position"]["batch"])


def open_run_dir(run_dir: Path, cfg: TrainConfig, resume: bool) -> Saved | None:
    """The checkpoint to resume from (`resume`), or None for a fresh run; refuses a resume without a
    checkpoint, of another stage or with a changed config, and a fresh run in a used directory."""
    path = latest_checkpoint(run_dir) if run_dir.is_dir() else None
    if not resume:
        if path is not None:
            raise ConfigError(f"{run_dir} already holds a run (checkpoint {path.name}); pass --resume to "
                              f"continue it or choose a new --run-dir")
        return None
    if path is None:
        raise ConfigError(f"--resume: {run_dir} has no checkpoint to resume from")
    meta, tensors = read_checkpoint(path)
    if meta["stage"] != cfg.stage:
        raise ConfigError(f"--resume: {run_dir} is a {meta['stage']} run, not {cfg.stage}")
    a, b = config_from_dict(meta["train_config"]).to_dict(), cfg.to_dict()
    changed = [k for k in a if a[k] != b[k] and k not in RESUME_MUTABLE]
    if changed:
        raise ConfigError(f"--resume cannot change {', '.join(f'{k} ({a[k]!r} -> {b[k]!r})' for k in changed)}; "
                          f"only {', '.join(sorted(RESUME_MUTABLE))} may change on resume")
    return Saved(path, meta, tensors)


def make_run_dir(run_dir: Path) -> None:
    """Create the run dir and drop checkpoint writes killed half-way (SIGKILL, power loss)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in checkpoints_dir(run_dir).glob(".step-*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)


def write_run_config(run_dir: Path, cfg: TrainConfig, model_cfg: ModelConfig, world: int) -> None:
    """config.json: the resolved training and model configs of the run (rewritten on every start)."""
    with atomic_path(run_dir / "config.json") as tmp:
        tmp.write_text(json.dumps({"train_config": cfg.to_dict(), "model_config": model_cfg.to_dict(),
                                   "world_size": world}, indent=1))

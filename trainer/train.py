"""ardiff-train's loop: the three stages (vae-image, vae-temporal, diffusion) in one straight loop.

Read `train()` top to bottom: setup (distributed, device, precision, run dir, models, optimiser, data),
then the loop (micro-steps with gradient accumulation, clip, AdamW step, EMA, logging, checkpoints), then
the end of the run (latent scale for VAE stages, final checkpoint). The helpers above it are small.

Run directory:
    config.json                       the resolved training config and model config
    metrics.jsonl                     one JSON line per `log_every` steps
    loss.png                          the loss curve (PIL)
    checkpoints/step-00000100/        state.safetensors (weights, EMA, optimiser tensors, RNG tensors)
                                      state.json (step, data position, RNG, optimiser index, configs)
    checkpoints/latest.json           pointer to the newest complete checkpoint (written last, atomically)

Nothing is pickled: tensors go to safetensors, everything else to JSON. A checkpoint directory is written
under a temporary name and renamed; the pointer is replaced only after that, so a crash or a failing write
leaves the previous checkpoint as the latest.

Distributed: under `torchrun` (WORLD_SIZE > 1) the trained module is wrapped in DDP (NCCL on CUDA, gloo on
CPU). Each rank reads its share of every global batch through a DistributedSampler, and every per-sample
random draw (FoPP compositions, noise) is made for the whole global batch from one seeded generator and
sliced per rank, so K processes at batch b give the same update as one process at batch K * b.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from engine.atomic import atomic_path
from engine.diffusion import DiffusionSchedule
from engine.errors import ArdiffError, CheckpointError
from engine.models.arvae import ARVAE
from engine.models.discriminator import PatchDiscriminator, hinge_d_loss, hinge_g_loss
from engine.models.dit import DiT
from engine.models.presets import ModelConfig, get_preset
from engine.schedulers import make_training_scheduler
from engine.threads import describe_current
from trainer.config import RESUME_MUTABLE, ConfigError, TrainConfig, config_from_dict, stage_num_frames
from trainer.ema import EMA
from trainer.losses import adaptive_gan_weight, diffusion_loss
from trainer.state import (
    STATE_FORMAT,
    STATE_VERSION,
    checkpoints_dir,
    flatten_optimizer,
    latest_checkpoint,
    load_run,
    prefixed,
    read_checkpoint,
    restore_rng,
    rng_state,
    unflatten_optimizer,
    weights_digest,
    write_checkpoint,
)


class TrainingError(ArdiffError):
    """Training cannot go on: diverged (NaN), a checkpoint could not be written, a run dir mismatch."""


# =========================================================================== console and metrics


class Log:
    """Rank-0 console (rich, stderr) plus metrics.jsonl, loss.png and optional TensorBoard."""

    def __init__(self, run_dir: Path, rank: int, tensorboard: bool) -> None:
        from rich.console import Console

        self.run_dir, self.rank = run_dir, rank
        self.console = Console(stderr=True, highlight=False)
        self.records: list[dict[str, Any]] = []
        self.tb = None
        if tensorboard and rank == 0:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except Exception as err:  # noqa: BLE001 - tensorboard is optional
                self.info(f"tensorboard: not available ({type(err).__name__}: {err}); metrics.jsonl only")

    def info(self, text: str) -> None:
        if self.rank == 0:
            self.console.print(f"[ardiff-train] {text}", markup=False, soft_wrap=True)

    def load_previous(self, upto_step: int) -> None:
        """On resume: keep the metric lines up to the checkpoint's step (later ones are redone)."""
        path = self.run_dir / "metrics.jsonl"
        if self.rank != 0 or not path.is_file():
            return
        kept = []
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                if rec.get("step", 0) <= upto_step:
                    kept.append(rec)
        self.records = kept
        with atomic_path(path) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def metrics(self, record: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        self.records.append(record)
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"train/{k}", v, record["step"])

    def plot(self) -> None:
        if self.rank == 0 and self.records:
            plot_loss_curve(self.records, self.run_dir / "loss.png")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def plot_loss_curve(records: list[dict[str, Any]], path: Path, key: str = "loss") -> None:
    """A log-scale loss curve as PNG, drawn with PIL (no matplotlib)."""
    from PIL import Image, ImageDraw

    pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float)) and r[key] > 0
           and math.isfinite(r[key])]
    W, H, m = 720, 400, 60
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    d.rectangle([m, 20, W - 20, H - m], outline="black")
    if pts:
        s0, s1 = pts[0][0], max(pts[-1][0], pts[0][0] + 1)
        ys = [math.log10(v) for _, v in pts]
        lo, hi = min(ys), max(ys)
        if hi - lo < 1e-6:
            lo, hi = lo - 0.5, hi + 0.5

        def xy(s: float, y: float) -> tuple[float, float]:
            return (m + (s - s0) / (s1 - s0) * (W - 20 - m), H - m - (y - lo) / (hi - lo) * (H - m - 20))

        line = [xy(s, y) for (s, _), y in zip(pts, ys)]
        if len(line) > 1:
            d.line(line, fill=(31, 119, 180), width=2)
        else:
            x, y = line[0]
            d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(31, 119, 180))
        d.text((5, 20), f"{10 ** hi:.3g}", fill="black")
        d.text((5, H - m - 10), f"{10 ** lo:.3g}", fill="black")
        d.text((m, H - m + 5), f"{s0}", fill="black")
        d.text((W - 80, H - m + 5), f"{s1}", fill="black")
    d.text((m, H - 25), f"{key} (log scale) vs optimizer step", fill="black")
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


@dataclass
class VAESource:
    vae: ARVAE
    model_config: ModelConfig
    info: dict


def load_vae_source(path: str) -> VAESource:
    """A trained VAE (EMA weights) from a vae-image/vae-temporal run dir or an ardiff checkpoint file."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"vae: {path} does not exist (give a vae-image/vae-temporal run dir or a checkpoint)")
    if p.is_dir():
        run = load_run(p)
        if run.stage not in ("vae-image", "vae-temporal"):
            raise ConfigError(f"vae: {path} is a {run.stage} run, not a VAE run (vae-image or vae-temporal)")
        vae = ARVAE(run.model_config.vae)
        vae.load_state_dict(run.ema)
        info = {"path": str(p.resolve()), "kind": "run", "stage": run.stage, "step": run.step,
                "latent_scale": float(vae.latent_scale),
                "latent_scale_measured": bool(run.meta.get("latent_scale_measured", False)),
                "digest": weights_digest(run.ema), "encoder_digest": encoder_digest(vae),
                "data": run.meta.get("data"),
                "recipe": run.meta.get("recipe", [])}
        return VAESource(vae, run.model_config, info)
    from engine.checkpoint import load_checkpoint

    return checkpoint_vae_source(load_checkpoint(p))


def checkpoint_vae_source(ck) -> VAESource:
    """The VAE of a loaded ardiff checkpoint (engine.checkpoint.Checkpoint) as a VAE source."""
    info = {"path": str(ck.path.resolve()), "kind": "checkpoint", "stage": "checkpoint",
            "step": ck.meta.get("steps"), "latent_scale": float(ck.vae.latent_scale), "latent_scale_measured": True,
            "digest": weights_digest(ck.vae.state_dict()), "encoder_digest": encoder_digest(ck.vae),
            "data": ck.meta.get("data"), "recipe": ck.meta.get("recipe", [])}
    return VAESource(ck.vae.float(), ck.config, info)


@dataclass
class DiffusionSource:
    """A trained DiT (EMA weights) from a diffusion run or a packaged checkpoint, with what its latents were."""

    model_config: ModelConfig
    ema: dict[str, torch.Tensor]
    meta: dict  # "vae_source" (the VAE its latents came from) and "recipe" (every stage it went through)
    data: dict | None  # the diffusion stage's data provenance
    step: int | None
    ema_decay: float | None


def load_diffusion_source(path: str) -> DiffusionSource:
    """A diffusion run dir or a packaged ardiff checkpoint (whose DiT was trained on its own VAE's latents)."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{path} does not exist (give a diffusion run dir or an ardiff checkpoint)")
    if p.is_file():
        from engine.checkpoint import load_checkpoint

        ck = load_checkpoint(p)
        vae_info = checkpoint_vae_source(ck).info
        used = {k: vae_info[k] for k in ("path", "step", "digest", "encoder_digest")}
        used["latent_scale"] = float(ck.meta.get("latent_scale", vae_info["latent_scale"]))  # already folded in
        meta = {**ck.meta, "vae_source": used}
        return DiffusionSource(ck.config, {k: v.float() for k, v in ck.dit.state_dict().items()}, meta,
                               (ck.meta.get("data") or {}).get("diffusion"),
                               ck.meta.get("sources", {}).get("diffusion_step"), ck.meta.get("ema_decay"))
    run = load_run(p)
    if run.stage != "diffusion":
        raise CheckpointError(f"{path} is a {run.stage} run, not a diffusion run")
    return DiffusionSource(run.model_config, run.ema, run.meta, run.meta.get("data"), run.step,
                           run.train_config.ema_decay)


def init_dit_from(dit: DiT, path: str, model_cfg: ModelConfig, vae_src: VAESource, other_vae: bool = False
                  ) -> list[dict]:
    """Load the DiT at `path` (init_dit) into `dit`; return the recipe stages it went through.

    Only a DiT trained on this run's latents may be continued (the same encoder and latent scale), unless
    `other_vae` (init_dit_other_vae): a warm start."""
    src = load_diffusion_source(path)
    if src.model_config.to_dict() != model_cfg.to_dict():
        raise ConfigError(f"init_dit: the DiT at {path} (preset {src.model_config.name!r}) has another model "
                          f"config than this run's; set preset= and the model keys to its own")
    used = src.meta.get("vae_source") or {}
    if not other_vae and (used.get("encoder_digest"), used.get("latent_scale")) != (
            vae_src.info["encoder_digest"], vae_src.info["latent_scale"]):
        raise ConfigError(f"init_dit: the DiT at {path} was trained on the latents of another VAE "
                          f"({used.get('path')}) than this run's vae; give the VAE it was trained with, or set "
                          f"init_dit_other_vae = true for a warm start")
    dit.load_state_dict(src.ema)
    return list(src.meta.get("recipe", []))


def encoder_digest(vae: ARVAE) -> str:
    """A short hash of the encoder's weights alone: what a DiT trained on the VAE's latents depends on."""
    ids = {id(p) for p in vae.encoder_parameters()}
    return weights_digest({name: p for name, p in vae.named_parameters() if id(p) in ids})


def check_vae_matches(src: VAESource, model_cfg: ModelConfig, where: str) -> None:
    have, want = src.model_config.vae.__dict__, model_cfg.vae.__dict__
    diff = [f"{k}={have[k]} (wanted {want[k]})" for k in want if have.get(k) != want[k]]
    if diff:
        raise ConfigError(f"the VAE at {src.info['path']} (preset {src.model_config.name!r}) does not match "
                          f"preset {model_cfg.name!r} of this {where} run: {', '.join(diff)}; set preset= to the "
                          f"VAE's preset or train a VAE for this preset")


# =========================================================================== setup helpers


def resolve_precision(precision: str, device: torch.device) -> tuple[bool, str]:
    """(use bf16 autocast?, why). 'auto': bf16 on CUDA and on CPUs with AMX/AVX512-BF16, else fp32."""
    from engine.pipeline import cpu_supports_bf16

    if precision == "fp32":
        return False, "fp32 (asked for)"
    if precision == "bf16":
        if device.type == "cpu" and not cpu_supports_bf16():
            return True, ("bf16 autocast (asked for; this CPU has no AMX/AVX512-BF16, so bf16 is emulated and "
                          "slower than fp32 here)")
        return True, "bf16 autocast (asked for)"
    if device.type == "cuda":
        return True, "bf16 autocast (auto: CUDA)"
    if cpu_supports_bf16():
        return True, "bf16 autocast (auto: this CPU has AMX/AVX512-BF16)"
    return False, "fp32 (auto: this CPU has no AMX/AVX512-BF16; bf16 would be emulated and ~4x slower)"


def init_distributed(device_pref: str) -> tuple[int, int, torch.device]:
    """(rank, world, device). Under torchrun (WORLD_SIZE > 1) joins the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = device_pref == "cuda" or (device_pref == "auto" and torch.cuda.is_available())
    if device_pref == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda was asked for but this torch has no CUDA device; use device=cpu")
    if world > 1:
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        rank = dist.get_rank()
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if use_cuda:
            torch.cuda.set_device(local)
            return rank, world, torch.device("cuda", local)
        return rank, world, torch.device("cpu")
    return 0, 1, torch.device("cuda" if use_cuda else "cpu")


class ResumableSampler(DistributedSampler):
    """DistributedSampler (shuffled per epoch from `seed + epoch`, drop_last) that can start mid-epoch."""

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.skip = 0

    def __iter__(self):
        return iter(list(super().__iter__())[self.skip:])

    def __len__(self) -> int:
        return self.num_samples - self.skip


def build_dataset(cfg: TrainConfig, num_frames: int, size: int, quiet: bool):
    from trainer.data import make_dataset

    if not cfg.data.startswith("synthetic:") and not Path(cfg.data).exists():
        raise ConfigError(f"data: {cfg.data} does not exist (give a folder of videos or synthetic:bouncing)")
    kwargs: dict[str, Any] = {}
    if cfg.data.startswith("synthetic:"):
        kwargs["num_items"] = cfg.num_items
    else:
        kwargs["cache_dir"] = cfg.data_cache or None
        if num_frames > 1:
            kwargs["frame_stride"] = cfg.frame_stride
        else:
            kwargs["frame_every"] = cfg.frame_every
    with warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore")
        try:
            return make_dataset(cfg.data, num_frames, size, seed=cfg.seed, flip=cfg.flip, **kwargs)
        except ArdiffError:
            raise
        except ValueError as err:
            raise ConfigError(f"data: {err}") from None


@torch.no_grad()
def latent_moments(vae: ARVAE, dataset, num_items: int, batch_size: int, device: torch.device,
                   seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and variance [D] (float64) of the VAE's latents before any scale, over a fixed
    sample of the data."""
    n = min(num_items, len(dataset))
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed + 7))[:n].tolist()
    was_training = vae.training
    vae.eval()
    D = vae.cfg.latent_dim
    total = total_sq = torch.zeros(D, dtype=torch.float64)
    count = 0
    for i in range(0, n, batch_size):
        x = torch.stack([dataset[j] for j in order[i:i + batch_size]]).to(device)
        z = (vae.encode(x) / vae.latent_scale).double().reshape(-1, D).cpu()
        total, total_sq, count = total + z.sum(0), total_sq + (z * z).sum(0), count + len(z)
    vae.train(was_training)
    mean = total / count
    return mean, (total_sq / count - mean * mean).clamp_min(1e-12)


def measure_latent_scale(vae: ARVAE, dataset, num_items: int, batch_size: int, device: torch.device,
                         seed: int) -> float:
    """1 / std of the VAE's latents (before any scale, all channels together) over a fixed sample of the data."""
    mean, var = latent_moments(vae, dataset, num_items, batch_size, device, seed)
    overall = mean.mean()
    return 1.0 / math.sqrt(max(float((var + mean * mean).mean() - overall * overall), 1e-12))


def normalize_latent_channels(vae: ARVAE, dataset, cfg: TrainConfig, device: torch.device) -> list[float]:
    """Give each latent channel unit std (folded into the VAE's layers; latent_scale becomes 1); returns the
    per-channel factors, which packaging applies to the same VAE."""
    _, var = latent_moments(vae, dataset, cfg.latent_scale_samples, cfg.batch_size, device, cfg.seed)
    scale = var.rsqrt()
    vae.scale_latent_channels(scale)
    vae.latent_scale.fill_(1.0)
    return scale.tolist()


@torch.no_grad()
def init_vae_from_pca(vae: ARVAE, dataset, num_frames: int, seed: int, info: Callable[[str], None]) -> None:
    """Initialise a local-latent VAE as the local PCA code of a fixed random sample of training frames."""
    if not vae.cfg.local_latents:
        raise ConfigError("pca_init_frames needs a preset with local latents (vae.local_latents)")
    n = min(num_frames, len(dataset))
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed + 11))[:n].tolist()
    frames = torch.cat([dataset[j] for j in order]).to(vae.region_in.weight.device)  # items are [1, 3, H, W]
    vae.init_from_local_pca(frames)
    info(f"VAE region paths initialised from the local PCA of {n} training frames")


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warm-up, then constant or cosine to min_lr."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


class StopRequest:
    """SIGINT/SIGTERM handlers that ask the loop to finish the step, save and exit; a second Ctrl-C aborts."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum

    def __enter__(self) -> "StopRequest":
        with contextlib.suppress(ValueError):  # not the main thread: no handlers
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    stopped: bool  # True: interrupted (signal or on_step) before max_steps; a checkpoint was saved
    last_checkpoint: Path | None
    records: list[dict[str, Any]]


def _check_resume_config(saved: TrainConfig, cfg: TrainConfig) -> None:
    a, b = saved.to_dict(), cfg.to_dict()
    changed = [k for k in a if a[k] != b[k] and k not in RESUME_MUTABLE]
    if changed:
        raise ConfigError(f"--resume cannot change {', '.join(f'{k} ({a[k]!r} -> {b[k]!r})' for k in changed)}; "
                          f"only {', '.join(sorted(RESUME_MUTABLE))} may change on resume")


def _model_config(cfg: TrainConfig) -> ModelConfig:
    mc = get_preset(cfg.preset)
    mc.dit.attention = cfg.attention
    mc.diffusion.prediction = cfg.prediction
    return ModelConfig.from_dict(mc.to_dict())  # re-validated


# =========================================================================== the loop


def train(cfg: TrainConfig, run_dir: str | os.PathLike, resume: bool = False,
          on_step: Callable[[int, dict], bool | None] | None = None) -> TrainResult:
    """Run one stage. `on_step(step, record)` is called after every optimizer step on every rank;
    returning True requests a stop (as Ctrl-C does: the state is saved and train returns)."""
    run_dir = Path(run_dir)
    rank, world, device = init_distributed(cfg.device)
    is_main = rank == 0
    ddp = world > 1

    # ---- run directory: fresh or resumed
    resume_path = latest_checkpoint(run_dir) if run_dir.is_dir() else None
    if resume:
        if resume_path is None:
            raise ConfigError(f"--resume: {run_dir} has no checkpoint to resume from")
        saved_meta, saved_tensors = read_checkpoint(resume_path)
        if saved_meta["stage"] != cfg.stage:
            raise ConfigError(f"--resume: {run_dir} is a {saved_meta['stage']} run, not {cfg.stage}")
        _check_resume_config(config_from_dict(saved_meta["train_config"]), cfg)
    elif resume_path is not None:
        raise ConfigError(f"{run_dir} already holds a run (checkpoint {resume_path.name}); pass --resume to "
                          f"continue it or choose a new --run-dir")
    log = Log(run_dir, rank, cfg.tensorboard)
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in checkpoints_dir(run_dir).glob(".step-*.tmp"):  # a write killed by SIGKILL / power loss
            shutil.rmtree(stale, ignore_errors=True)

    # ---- seeds, precision, models
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1)  # per-sample draws (compositions, noise): global batch
    use_bf16, why = resolve_precision(cfg.precision, device)
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)  # noqa: E731
    log.info(f"stage {cfg.stage}, preset {cfg.preset}, {world} process(es) on {device}, {why}, "
             f"{describe_current()}")

    model_cfg = _model_config(cfg)
    vae_src: VAESource | None = None
    if cfg.vae:  # needed by the later stages; optional for vae-image, which then trains that VAE further
        vae_src = load_vae_source(cfg.vae)
        check_vae_matches(vae_src, model_cfg, cfg.stage)
        if cfg.stage == "vae-image":
            log.info(f"vae-image continues the {vae_src.info['stage']} VAE {cfg.vae}")
        elif cfg.stage == "vae-temporal" and vae_src.info["stage"] != "vae-image":
            log.info(f"vae-temporal starts from a {vae_src.info['stage']} VAE ({cfg.vae})")
    stage_is_vae = cfg.stage in ("vae-image", "vae-temporal")
    num_frames = stage_num_frames(cfg, model_cfg)
    if num_frames > model_cfg.window and cfg.stage == "diffusion":
        raise ConfigError(f"num_frames ({num_frames}) exceeds the model window ({model_cfg.window})")

    frozen_vae: ARVAE | None = None
    disc: PatchDiscriminator | None = None
    if stage_is_vae:
        model: torch.nn.Module = ARVAE(model_cfg.vae)
        if vae_src is not None:
            model.load_state_dict(vae_src.vae.state_dict())
        temporal = list(model.temporal_parameters())
        temporal_ids = {id(p) for p in temporal}
        rest = [p for p in model.parameters() if id(p) not in temporal_ids]
        if cfg.stage == "vae-image":
            groups = [{"params": rest, "lr_scale": 1.0}]
            trainable = rest
        elif cfg.temporal_rest_lr_scale > 0:
            groups = [{"params": temporal, "lr_scale": 1.0}, {"params": rest, "lr_scale": cfg.temporal_rest_lr_scale}]
            trainable = temporal + rest
        else:
            groups = [{"params": temporal, "lr_scale": 1.0}]
            trainable = temporal
        if not temporal and cfg.stage == "vae-temporal":
            raise ConfigError("this preset's VAE has temporal_window 1: it has no temporal parameters to train")
        if not cfg.train_encoder:  # decoder-only: the encoder (and so every latent) stays bit for bit
            if vae_src is None:
                raise ConfigError("train_encoder = false needs a trained VAE to start from: run the vae-temporal "
                                  "stage with vae=RUN_DIR_OR_CHECKPOINT")
            encoder_ids = {id(p) for p in model.encoder_parameters()}
            groups = [{**g, "params": [p for p in g["params"] if id(p) not in encoder_ids]} for g in groups]
            trainable = [p for p in trainable if id(p) not in encoder_ids]
        trainable_ids = {id(p) for p in trainable}
        last_layer = model.to_pixels.weight  # the decoder's last layer, for the adaptive GAN weight
        for p in model.parameters():
            p.requires_grad_(id(p) in trainable_ids or (cfg.gan and p is last_layer))
        if cfg.gan:
            disc = PatchDiscriminator(3, cfg.disc_channels, cfg.disc_layers).to(device)
            if vae_src is not None and vae_src.info["kind"] == "run":
                prev = prefixed(load_run(cfg.vae).tensors, "disc.")
                if prev and set(prev) == set(disc.state_dict()) and all(
                        prev[k].shape == v.shape for k, v in disc.state_dict().items()):
                    disc.load_state_dict(prev)
                    log.info("discriminator: continued from the VAE run")
    else:
        frozen_vae = vae_src.vae.to(device).eval().requires_grad_(False)
        model = DiT(model_cfg)
        if cfg.init_dit:
            source_recipe = init_dit_from(model, cfg.init_dit, model_cfg, vae_src, cfg.init_dit_other_vae)
            if cfg.init_dit_other_vae:  # a warm start: what it learned on other latents is not this model's past
                log.info(f"the DiT starts from {cfg.init_dit} (trained on another VAE's latents)")
            else:  # the stages before this one are the continued DiT's own (its VAE's, then its diffusion runs)
                recipe = source_recipe
                stages = ", ".join(f"{r['stage']} {r['steps']:,} steps" for r in recipe)
                log.info(f"the DiT continues from {cfg.init_dit} ({stages})")
        trainable = list(model.parameters())
        groups = [{"params": trainable, "lr_scale": 1.0}]
        schedule = DiffusionSchedule(model_cfg.diffusion.num_timesteps, model_cfg.diffusion.beta_start,
                                     model_cfg.diffusion.beta_end, model_cfg.diffusion.schedule)
        scheduler = make_training_scheduler(cfg.scheduler, num_frames, model_cfg.diffusion.num_timesteps,
                                            clean_prefix_p=cfg.clean_prefix_p)
        log.info(f"timestep compositions: {scheduler.name} (clean_prefix_p {cfg.clean_prefix_p}); "
                 f"prediction {cfg.prediction}, attention {cfg.attention}")
    model.to(device).train()
    raw = model
    ema = EMA(raw, cfg.ema_decay, cfg.ema_warmup).to(device)
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                            weight_decay=cfg.weight_decay)
    d_opt = None
    if disc is not None:
        d_opt = torch.optim.Adam(disc.parameters(), lr=cfg.disc_lr or cfg.lr, betas=(0.5, 0.9))
    n_params = sum(p.numel() for p in trainable)
    log.info(f"training {n_params / 1e6:.3f}M parameters ({type(raw).__name__}); EMA decay {cfg.ema_decay} "
             f"({'LDM warm-up rule' if cfg.ema_warmup else 'DiT rule: constant'})")

    # ---- data
    dataset = build_dataset(cfg, num_frames, model_cfg.vae.image_size, quiet=not is_main)
    report = getattr(dataset, "report", None)
    data_info = {"spec": cfg.data, "num_frames": num_frames, "items": len(dataset),
                 "report": str(report) if report is not None else f"{len(dataset)} synthetic items",
                 "skipped": dict(getattr(report, "skipped", {}) or {})}
    log.info(f"data: {data_info['report']}")
    sampler = ResumableSampler(dataset, world, rank, cfg.seed)
    global_batch = cfg.batch_size * world
    batches_per_epoch = len(sampler) // cfg.batch_size
    if batches_per_epoch < 1:
        raise ConfigError(f"data: {len(dataset)} items is fewer than one global batch ({global_batch}); "
                          f"lower batch_size or add data")

    if cfg.pca_init_frames and cfg.stage == "vae-image" and not resume:
        init_vae_from_pca(raw, dataset, cfg.pca_init_frames, cfg.seed, log.info)
        ema = EMA(raw, cfg.ema_decay, cfg.ema_warmup).to(device)  # the average starts from the new weights

    # ---- resume
    step, epoch, batch_in_epoch = 0, 0, 0
    latent_scale_measured = False
    if resume:
        raw.load_state_dict(prefixed(saved_tensors, "model."))
        ema.load_state_dict({k: v.to(device) for k, v in prefixed(saved_tensors, "ema.").items()},
                            saved_meta["ema_updates"])
        opt.load_state_dict(unflatten_optimizer(saved_meta["optimizers"]["opt"], saved_tensors))
        if disc is not None:
            disc.load_state_dict(prefixed(saved_tensors, "disc."))
            d_opt.load_state_dict(unflatten_optimizer(saved_meta["optimizers"]["d_opt"], saved_tensors))
        restore_rng(saved_tensors, saved_meta["rng"], gen)
        step = saved_meta["step"]
        epoch, batch_in_epoch = saved_meta["data_position"]["epoch"], saved_meta["data_position"]["batch"]
        latent_scale_measured = saved_meta.get("latent_scale_measured", False)
        log.load_previous(step)
        log.info(f"resumed from {resume_path} at step {step} (epoch {epoch}, batch {batch_in_epoch})")
        del saved_tensors
    if ddp:
        model = DDP(raw, device_ids=[device.index] if device.type == "cuda" else None)
        if disc is not None:
            disc_ddp = DDP(disc, device_ids=[device.index] if device.type == "cuda" else None)
    if disc is not None and not ddp:
        disc_ddp = disc
    if frozen_vae is not None and not vae_src.info["latent_scale_measured"]:
        scale = measure_latent_scale(frozen_vae, dataset, cfg.latent_scale_samples, cfg.batch_size, device,
                                     cfg.seed)
        frozen_vae.latent_scale.fill_(scale)
        vae_src.info.update(latent_scale=scale, latent_scale_measured_by="diffusion run")
        log.info(f"the VAE's latent scale was never measured (its run did not finish); measured {scale:.4f} "
                 f"on this data")
    if frozen_vae is not None and cfg.latent_norm == "channel":
        if frozen_vae.region_in is None:
            raise ConfigError("latent_norm=channel needs a VAE with local latents (the default preset)")
        channel = normalize_latent_channels(frozen_vae, dataset, cfg, device)
        vae_src.info.update(latent_scale=1.0, latent_channel_scale=channel)
        log.info(f"latent channels scaled to unit std (factors {min(channel):.3f} .. {max(channel):.3f})")
    if frozen_vae is not None:
        log.info(f"VAE: {vae_src.info['path']} (latent scale {float(frozen_vae.latent_scale):.4f})")
    if frozen_vae is not None and cfg.latent_cache:
        from trainer.latents import LatentDataset, cached_latents

        key = {"vae": vae_src.info["digest"], "latent_scale": float(frozen_vae.latent_scale), "data": cfg.data,
               "num_frames": num_frames, "items": len(dataset), "seed": cfg.seed, "flip": cfg.flip,
               "num_items": cfg.num_items, "frame_stride": cfg.frame_stride}
        if "latent_channel_scale" in vae_src.info:
            key["latent_channel_scale"] = vae_src.info["latent_channel_scale"]
        latents = None
        if is_main:
            latents = cached_latents(run_dir / "latents.safetensors", key, frozen_vae, dataset, cfg.batch_size,
                                     device, cfg.num_workers, autocast, log.info)
        if ddp:
            dist.barrier()
            if not is_main:
                from trainer.latents import cached_latents as _load

                latents = _load(run_dir / "latents.safetensors", key, frozen_vae, dataset, cfg.batch_size, device,
                                cfg.num_workers, autocast, lambda _: None)
        dataset = LatentDataset(latents)

    if not (cfg.stage == "diffusion" and cfg.init_dit and not cfg.init_dit_other_vae):
        # a packaged checkpoint's recipe ends with the diffusion stage of its own DiT: not this run's past
        recipe = [r for r in (vae_src.info.get("recipe", []) if vae_src is not None else [])
                  if r["stage"] != "diffusion"]

    def save(step_now: int) -> Path:
        """Rank 0 writes the whole training state; every rank waits for it."""
        path, failure = None, None
        if is_main:
            tensors: dict[str, torch.Tensor] = {}
            tensors.update({f"model.{k}": v.detach().cpu().contiguous() for k, v in raw.state_dict().items()})
            tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()})
            opt_t, opt_index = flatten_optimizer(opt, "opt")
            tensors.update(opt_t)
            optimizers = {"opt": opt_index}
            if disc is not None:
                tensors.update({f"disc.{k}": v.detach().cpu().contiguous() for k, v in disc.state_dict().items()})
                d_t, d_index = flatten_optimizer(d_opt, "d_opt")
                tensors.update(d_t)
                optimizers["d_opt"] = d_index
            rng_t, rng_meta = rng_state(gen)
            tensors.update(rng_t)
            this = {"stage": cfg.stage, "steps": step_now, "preset": cfg.preset, "data": cfg.data,
                    "lr": cfg.lr, "batch_size": cfg.batch_size, "world_size": world, "grad_accum": cfg.grad_accum}
            if stage_is_vae:
                this.update(gan=cfg.gan, train_encoder=cfg.train_encoder)
                if cfg.stage == "vae-image" and vae_src is not None:
                    this.update(vae=vae_src.info["path"])
            if cfg.stage == "diffusion":
                this.update(scheduler=cfg.scheduler, clean_prefix_p=cfg.clean_prefix_p,
                            prediction=cfg.prediction, attention=cfg.attention)
                if cfg.init_dit:
                    this.update(init_dit=str(Path(cfg.init_dit).resolve()))
                    if cfg.init_dit_other_vae:
                        this.update(init_dit_other_vae=True)
            meta = {
                "format": STATE_FORMAT, "version": STATE_VERSION, "stage": cfg.stage, "step": step_now,
                "data_position": {"epoch": epoch, "batch": batch_in_epoch},
                "train_config": cfg.to_dict(), "model_config": model_cfg.to_dict(),
                "optimizers": optimizers, "ema_updates": ema.num_updates, "rng": rng_meta,
                "lr_scheduler": {"kind": cfg.lr_schedule, "warmup_steps": cfg.warmup_steps,
                                 "last_step": step_now, "last_lr": lr_at(cfg, max(step_now - 1, 0))},
                "world_size": world, "latent_scale_measured": latent_scale_measured,
                "latent_scale": float(getattr(raw, "latent_scale", torch.tensor(1.0))) if stage_is_vae else None,
                "vae_source": vae_src.info if vae_src is not None else None,
                "data": data_info, "recipe": recipe + [this], "time": time.time(),
            }
            try:
                path = write_checkpoint(run_dir, step_now, tensors, meta, cfg.keep_checkpoints)
                log.plot()
            except Exception as err:  # noqa: BLE001 - report as one line; the previous checkpoint stays
                prev = latest_checkpoint(run_dir)
                failure = TrainingError(f"could not save the checkpoint of step {step_now}: "
                                        f"{type(err).__name__}: {err}; the previous checkpoint is intact"
                                        f"{f' ({prev})' if prev else ''}")
                failure.__cause__ = err
        if ddp:  # every rank learns whether rank 0's write worked (and nobody waits for a failed rank 0)
            ok = torch.tensor([0.0 if failure is not None else 1.0], device=device)
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
            if failure is None and ok.item() < 1:
                raise TrainingError(f"rank 0 could not save the checkpoint of step {step_now}")
        if failure is not None:
            raise failure
        return path or (latest_checkpoint(run_dir) if is_main else None)

    if is_main:
        with atomic_path(run_dir / "config.json") as tmp:
            tmp.write_text(json.dumps({"train_config": cfg.to_dict(), "model_config": model_cfg.to_dict(),
                                       "world_size": world}, indent=1))

    if resume and step >= cfg.max_steps:
        log.info(f"{run_dir} already finished {step} steps (max_steps {cfg.max_steps}); nothing to do "
                 f"(raise max_steps to train on)")
        log.close()
        return TrainResult(run_dir=run_dir, step=step, stopped=False, last_checkpoint=resume_path,
                           records=list(log.records))

    # ---- the loop
    loader_gen = torch.Generator().manual_seed(cfg.seed + 2)

    def batches():
        nonlocal epoch, batch_in_epoch
        while True:
            sampler.set_epoch(epoch)
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
            sampler.skip = batch_in_epoch * cfg.batch_size
            loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                                drop_last=True, pin_memory=device.type == "cuda", generator=loader_gen)
            for x in loader:
                batch_in_epoch += 1
                yield x
            epoch, batch_in_epoch = epoch + 1, 0

    data_iter = batches()
    last_ckpt: Path | None = resume_path if resume else None
    stopped = False
    t_last, steps_since, wait_since = time.perf_counter(), 0, 0.0
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn(f"{cfg.stage}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("loss {task.fields[loss]:.4f}  {task.fields[sps]:.2f} steps/s  ETA"),
                        TimeRemainingColumn(), console=log.console, disable=not (is_main and cfg.progress))
    task = progress.add_task("train", total=cfg.max_steps, completed=step, loss=float("nan"), sps=0.0)
    with StopRequest() as stop, progress:
        while step < cfg.max_steps:
            lr = lr_at(cfg, step)
            for g in opt.param_groups:
                g["lr"] = lr * g["lr_scale"]
            gan_on = disc is not None and step >= cfg.disc_start
            sums = {"loss": 0.0, "rec": 0.0, "g": 0.0, "d": 0.0, "gan_weight": 0.0}
            wait = 0.0
            for micro in range(cfg.grad_accum):
                t0 = time.perf_counter()
                x = next(data_iter).to(device, non_blocking=True)
                wait += time.perf_counter() - t0
                sync = micro == cfg.grad_accum - 1
                ctx = contextlib.ExitStack()
                if ddp and not sync:
                    ctx.enter_context(model.no_sync())
                    if gan_on:
                        ctx.enter_context(disc_ddp.no_sync())
                with ctx:
                    if stage_is_vae:
                        with autocast():
                            rec = model(x)
                        rec_loss = (rec.float() - x).abs().mean()
                        loss = cfg.l1_weight * rec_loss
                        sums["rec"] += rec_loss.item()
                        if gan_on:
                            disc.requires_grad_(False)
                            with autocast():
                                g_loss = hinge_g_loss(disc(rec).float())
                            w = cfg.disc_weight * adaptive_gan_weight(loss, g_loss, last_layer, ddp)
                            loss = loss + w * g_loss
                            disc.requires_grad_(True)
                            sums["g"] += g_loss.item()
                            sums["gan_weight"] += float(w)
                        (loss / cfg.grad_accum).backward()
                        if gan_on:
                            with autocast():
                                logits = disc_ddp(torch.cat([x, rec.detach()])).float()
                            real, fake = logits.chunk(2)
                            d_loss = hinge_d_loss(real, fake)
                            (d_loss / cfg.grad_accum).backward()
                            sums["d"] += d_loss.item()
                    else:
                        if cfg.latent_cache:
                            z0 = x.float()  # already latents
                        else:
                            with torch.no_grad(), autocast():
                                z0 = frozen_vae.encode(x).float()
                        gb = x.shape[0] * world
                        t = scheduler.sample(gb, generator=gen)[rank::world].to(device)
                        noise = torch.randn((gb, *z0.shape[1:]), generator=gen)[rank::world].to(device)
                        with autocast():
                            loss, _ = diffusion_loss(model, schedule, z0, t, noise, cfg.prediction)
                        (loss / cfg.grad_accum).backward()
                sums["loss"] += loss.item()
            # one collective per step: global mean loss, divergence and stop requests of all ranks
            local_stop = stop.signal is not None
            flags = torch.tensor([sums["loss"] / cfg.grad_accum, float(not math.isfinite(sums["loss"])),
                                  float(local_stop)], dtype=torch.float64, device=device)
            if ddp:
                dist.all_reduce(flags)
                flags[0] /= world
            if flags[1] > 0:
                ck = latest_checkpoint(run_dir)
                raise TrainingError(
                    f"the loss became {sums['loss'] / cfg.grad_accum} at step {step + 1} (lr {lr:.3g}); stopped "
                    f"without saving. Last good checkpoint: {ck if ck else 'none (no checkpoint was written yet)'}. "
                    f"Try a lower lr, a warm-up, grad_clip, or precision=fp32")
            if cfg.grad_clip > 0:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip))
            else:
                grad_norm = float(torch.linalg.vector_norm(
                    torch.stack([p.grad.detach().float().norm() for p in trainable if p.grad is not None])))
            if not math.isfinite(grad_norm):
                raise TrainingError(f"the gradient norm became {grad_norm} at step {step + 1}; stopped without "
                                    f"saving. Last good checkpoint: {latest_checkpoint(run_dir)}")
            opt.step()
            raw.zero_grad(set_to_none=True)
            if gan_on:
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(disc.parameters(), cfg.grad_clip)
                d_opt.param_groups[0]["lr"] = lr_at(cfg, step) * (cfg.disc_lr or cfg.lr) / cfg.lr
                d_opt.step()
            if disc is not None:
                disc.zero_grad(set_to_none=True)
            ema.update(raw)
            step += 1
            steps_since += 1
            wait_since += wait

            record = {"step": step, "loss": float(flags[0]), "lr": lr, "grad_norm": grad_norm}
            if stage_is_vae:
                record["rec"] = sums["rec"] / cfg.grad_accum
                if gan_on:
                    record.update(g=sums["g"] / cfg.grad_accum, d=sums["d"] / cfg.grad_accum,
                                  gan_weight=sums["gan_weight"] / cfg.grad_accum)
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                now = time.perf_counter()
                sps = steps_since / max(now - t_last, 1e-9)
                record.update(steps_per_s=sps, clips_per_s=sps * global_batch * cfg.grad_accum,
                              data_wait_s=wait_since / steps_since, epoch=epoch)
                log.metrics(record)
                progress.update(task, sps=sps)
                t_last, steps_since, wait_since = now, 0, 0.0
            progress.update(task, completed=step, loss=record["loss"])
            if on_step is not None and on_step(step, record):
                stop.signal = stop.signal or -1
            want_stop = bool(flags[2] > 0) or (stop.signal is not None and not ddp)
            if want_stop and step < cfg.max_steps:
                last_ckpt = save(step)
                why = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}.get(stop.signal, "a stop request")
                log.info(f"stopped by {why} after step {step}; saved {last_ckpt}; continue with --resume")
                stopped = True
                break
            if step % cfg.checkpoint_every == 0 and step < cfg.max_steps:
                last_ckpt = save(step)

    # ---- end of the run
    if not stopped:
        if stage_is_vae and not latent_scale_measured and not cfg.train_encoder:
            latent_scale_measured = True  # the source's scale: the latents are the source's
            log.info(f"latent scale kept from the source VAE ({float(raw.latent_scale):.4f}): the encoder was frozen")
        if stage_is_vae and not latent_scale_measured:
            ema_vae = ema.copy_to(ARVAE(model_cfg.vae).to(device))
            scale = measure_latent_scale(ema_vae, dataset, cfg.latent_scale_samples, cfg.batch_size, device,
                                         cfg.seed)
            raw.latent_scale.fill_(scale)
            ema.buffers["latent_scale"].fill_(scale)
            latent_scale_measured = True
            log.info(f"latent scale: 1 / std of the latents over {min(cfg.latent_scale_samples, len(dataset))} "
                     f"items = {scale:.4f} (stored in the VAE's latent_scale)")
        last_ckpt = save(step)
        log.info(f"done: {step} steps; checkpoint {last_ckpt}")
    log.close()
    return TrainResult(run_dir=run_dir, step=step, stopped=stopped, last_checkpoint=last_ckpt,
                       records=list(log.records))

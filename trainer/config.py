"""Training configuration: one dataclass, read from TOML, every field overridable with `--set key=value`.

A config file holds common keys at the top level and optional per-stage tables that override them for
one stage only:

    preset = "tiny"
    data = "synthetic:bouncing"
    [vae-image]
    max_steps = 200
    [diffusion]
    lr = 3e-4

`--config` takes a path or the name of a packaged config (trainer/configs/NAME.toml: tiny, default,
paper). Unknown keys, unknown tables and values of the wrong type are `ConfigError`s (one line, exit 2).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from engine.errors import ArdiffError
from engine.models.presets import PREDICTIONS, PRESETS

STAGES = ("vae-image", "vae-temporal", "diffusion")
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(ArdiffError):
    """A training config that cannot be used: unknown key, wrong type, value out of range."""


@dataclass
class TrainConfig:
    """Everything one training run needs. Field comments are the documentation of the config keys."""

    stage: str = "diffusion"  # vae-image | vae-temporal | diffusion (set by the CLI sub-command)
    preset: str = "tiny"  # model preset: tiny | default | wide | paper (engine.models.presets)
    # ---- data
    data: str = "synthetic:bouncing"  # a folder / file of videos, or synthetic:bouncing
    data_cache: str = ""  # where the video index is cached ("" = the user cache dir)
    num_items: int = 10_000  # size of a synthetic dataset
    num_frames: int = 0  # clip length; 0 = stage default (1 | vae.temporal_window | window)
    frame_stride: int = 1  # take every k-th source frame
    frame_every: int = 8  # vae-image: train on every k-th frame (neighbours are near-duplicates)
    flip: bool = True  # random horizontal flips (seeded per item and epoch)
    num_workers: int = 0  # DataLoader worker processes
    # ---- optimisation
    max_steps: int = 1000  # optimizer steps
    batch_size: int = 8  # clips per process per micro-step; global batch = batch_size * world * grad_accum
    grad_accum: int = 1  # micro-steps per optimizer step
    lr: float = 1e-4  # peak learning rate (AdamW)
    min_lr: float = 0.0  # floor of the cosine schedule
    lr_schedule: str = "constant"  # constant | cosine (after warm-up)
    warmup_steps: int = 0  # linear warm-up from lr / warmup_steps to lr
    weight_decay: float = 0.0  # AdamW decoupled weight decay (DiT: 0)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    grad_clip: float = 1.0  # max global gradient norm; 0 = off
    ema_decay: float = 0.9999  # DiT's rule: ema = d * ema + (1 - d) * param after every optimizer step
    ema_warmup: bool = False  # LDM's rule instead: d_t = min(d, (1 + t) / (10 + t))
    precision: str = "auto"  # auto | fp32 | bf16 (autocast); auto = bf16 on CUDA and AMX/AVX512-BF16 CPUs
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 0
    # ---- run directory
    checkpoint_every: int = 1000  # steps between checkpoints (also written at the end and on Ctrl-C/SIGTERM)
    keep_checkpoints: int = 2  # checkpoints kept in the run dir (oldest pruned)
    log_every: int = 10  # steps between metrics.jsonl lines
    progress: bool = True  # rich progress bar on rank 0
    tensorboard: bool = False  # also write TensorBoard events (only if torch.utils.tensorboard imports)
    # ---- model overrides (Table 3 ablations)
    attention: str = "causal"  # causal | full (DiT temporal attention)
    rope_space: bool = False  # rotary places in the frame too (engine.models.presets.DiTConfig.rope_space)
    prediction: str = "x0"  # x0 | eps | x0-prev (what the DiT outputs: engine.models.presets.PREDICTIONS)
    context_noise: int = 0  # clean frames shown at a level drawn from 0..this in training, at this when sampling
    #   (engine.objective); 0 = clean, as the paper
    # ---- VAE stages
    vae: str = ""  # vae-temporal: the vae-image run; diffusion: a VAE run dir or an ardiff checkpoint;
    #   vae-image (optional): a VAE run or checkpoint to train further (its image stage, from its EMA weights)
    l1_weight: float = 1.0
    seam_weight: float = 0.0  # times the L1 of the frames' steps across region borders against the real ones'
    #   (trainer.losses.border_gradient_loss): the seams `ardiff eval` measures, as a loss
    gan: bool = True  # hinge GAN with a PatchGAN discriminator (after disc_start steps)
    disc_start: int = 0  # optimizer step at which the GAN loss starts (paper: 50k)
    disc_weight: float = 0.8  # times the VQGAN adaptive weight
    disc_lr: float = 0.0  # 0 = lr
    disc_channels: int = 64
    disc_layers: int = 3
    perceptual_weights: str = ""  # LPIPS-style weights; not supported yet (an error if set)
    pca_init_frames: int = 0  # vae-image with local latents: start the region paths as the local PCA of
    #   this many training frames (ARVAE.init_from_local_pca); 0 = data-free init
    temporal_rest_lr_scale: float = 0.1  # vae-temporal: lr factor for the non-temporal parameters; 0 = frozen
    train_encoder: bool = True  # VAE stages: false freezes the encoder and its latent scale, so the latents, and a
    #   DiT trained on them, stay valid: a decoder-only fine-tune (e.g. with the GAN) of a packaged model's VAE
    decoder_latent_noise: float = 0.0  # VAE stages: each clip's latents get noise of up to this many channel stds
    #   (uniform per clip) before decoding: a decoder robust to the DiT's imperfect latents (ARVAE.forward)
    mixer_channels: int = 0  # VAE stages: the decoder's border mixer (engine.models.presets.VAEConfig); a run may
    #   add it to a VAE without one (it starts as the identity)
    latent_scale_samples: int = 256  # items encoded to measure 1 / std of the latents at the end of VAE stages
    # ---- diffusion stage
    scheduler: str = "fopp"  # fopp | equal | independent | naive-nondecreasing
    clean_prefix_p: float = 0.25  # probability of a clean prefix (continuation conditioning)
    latent_cache: bool = False  # encode the dataset once with the frozen VAE (trainer/latents.py)
    latent_norm: str = "global"  # global: one latent_scale for all latents; channel: unit std per latent channel,
    #   folded into the frozen (local-latent) VAE's layers (ARVAE.scale_latent_channels) and packaged with it
    init_dit: str = ""  # diffusion: start the DiT from the EMA weights of a packaged checkpoint or a diffusion run
    #   (training it further, with fresh optimizer state); its latents must be this run's VAE's
    init_dit_other_vae: bool = False  # init_dit's DiT may have learned another VAE's latents: a warm start for a
    #   DiT on a VAE trained further from that one (close latents); the recipe is then this run's VAE's

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_TYPES = {f.name: type(f.default) for f in dataclasses.fields(TrainConfig)}
_CHOICES = {
    "stage": STAGES,
    "preset": tuple(PRESETS),
    "lr_schedule": ("constant", "cosine"),
    "precision": ("auto", "fp32", "bf16"),
    "device": ("auto", "cpu", "cuda"),
    "attention": ("causal", "full"),
    "prediction": PREDICTIONS,
    "scheduler": ("fopp", "equal", "independent", "naive-nondecreasing"),
    "latent_norm": ("global", "channel"),
}
# Keys a resumed run may change (everything else must match the saved run, or resuming is not a resume).
# lr / min_lr: the paper's fine-tune phase (100k steps at 2e-4, then 50k more at 1e-5) is a resume with
# --set lr=1e-5 --set max_steps=150000. clean_prefix_p: a continuation fine-tune (more clips with a clean
# context) on top of plain FoPP training is a resume too.
RESUME_MUTABLE = {"max_steps", "lr", "min_lr", "clean_prefix_p", "checkpoint_every", "keep_checkpoints", "log_every",
                  "progress", "tensorboard", "num_workers", "data_cache", "device"}


def _type_name(t: type) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[t]


def coerce(key: str, value: Any) -> Any:
    """Check a TOML value against the field's type (ints are accepted for floats)."""
    if key not in FIELDS:
        raise ConfigError(f"unknown config key {key!r}; known keys: {', '.join(sorted(FIELDS))}")
    t = _TYPES[key]
    ok = isinstance(value, t) and not (t is int and isinstance(value, bool))
    if t is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise ConfigError(f"config key {key!r} must be {_type_name(t)}, got {type(value).__name__} {value!r}")
    return value


def parse_set(item: str) -> tuple[str, Any]:
    """'key=value' from the command line -> (key, typed value)."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, text = (s.strip() for s in item.split("=", 1))
    if key not in FIELDS:
        raise ConfigError(f"unknown config key {key!r} in --set; known keys: {', '.join(sorted(FIELDS))}")
    t = _TYPES[key]
    try:
        if t is bool:
            low = text.lower()
            if low not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                raise ValueError
            return key, low in ("true", "1", "yes", "on")
        if t is int:
            return key, int(text.replace("_", ""))
        if t is float:
            return key, float(text)
    except ValueError:
        raise ConfigError(f"--set {key}: must be {_type_name(t)}, got {text!r}") from None
    return key, text


def resolve_config_path(name: str) -> Path:
    path = Path(name)
    if path.is_file():
        return path
    packaged = CONFIG_DIR / f"{name}.toml"
    if "/" not in name and packaged.is_file():
        return packaged
    known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.toml")))
    raise ConfigError(f"config file not found: {name} (packaged configs: {known})")


def read_toml(path: Path, stage: str) -> dict[str, Any]:
    """Common keys plus the stage's table of a config file."""
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    values: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            if key not in STAGES:
                raise ConfigError(f"{path}: unknown table [{key}]; tables are per stage: {', '.join(STAGES)}")
            continue
        values[key] = coerce(key, value)
    for key, value in data.get(stage, {}).items():
        if isinstance(value, dict):
            raise ConfigError(f"{path}: nested table [{stage}.{key}] is not allowed")
        values[key] = coerce(key, value)
    if "stage" in values:
        raise ConfigError(f"{path}: 'stage' is chosen on the command line, not in the config file")
    return values


# Keys only the VAE stages read, with what a diffusion run should know instead.
_VAE_ONLY_KEYS = {
    "decoder_latent_noise": " (the diffusion stage's counterpart is context_noise)",
    "seam_weight": "",
    "mixer_channels": " (the diffusion stage takes its VAE as it is)",
}


def validate(cfg: TrainConfig) -> TrainConfig:
    for key, choices in _CHOICES.items():
        if getattr(cfg, key) not in choices:
            raise ConfigError(f"config key {key!r} must be one of {', '.join(choices)}, got {getattr(cfg, key)!r}")
    for key in ("max_steps", "batch_size", "grad_accum", "checkpoint_every", "log_every", "keep_checkpoints",
                "num_items", "frame_stride", "frame_every", "disc_layers", "disc_channels", "latent_scale_samples"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"config key {key!r} must be >= 1, got {getattr(cfg, key)}")
    for key in ("num_frames", "warmup_steps", "num_workers", "disc_start", "seed", "pca_init_frames", "context_noise",
                "mixer_channels"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"config key {key!r} must be >= 0, got {getattr(cfg, key)}")
    for key in ("lr", "disc_lr", "min_lr", "weight_decay", "grad_clip", "l1_weight", "disc_weight",
                "temporal_rest_lr_scale", "decoder_latent_noise", "seam_weight"):
        if not getattr(cfg, key) >= 0:
            raise ConfigError(f"config key {key!r} must be >= 0, got {getattr(cfg, key)}")
    if cfg.lr <= 0:
        raise ConfigError(f"config key 'lr' must be > 0, got {cfg.lr}")
    if cfg.init_dit and cfg.stage != "diffusion":
        raise ConfigError(f"config key 'init_dit' is for the diffusion stage, not {cfg.stage}")
    if cfg.init_dit_other_vae and not cfg.init_dit:
        raise ConfigError("config key 'init_dit_other_vae' needs init_dit (the DiT to start from)")
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise ConfigError(f"config key 'ema_decay' must be in [0, 1), got {cfg.ema_decay}")
    if not 0.0 <= cfg.clean_prefix_p <= 1.0:
        raise ConfigError(f"config key 'clean_prefix_p' must be in [0, 1], got {cfg.clean_prefix_p}")
    for key in ("adam_beta1", "adam_beta2"):
        if not 0.0 <= getattr(cfg, key) < 1.0:
            raise ConfigError(f"config key {key!r} must be in [0, 1), got {getattr(cfg, key)}")
    if not cfg.data:
        raise ConfigError("config key 'data' is empty: give a folder of videos or synthetic:bouncing")
    if cfg.perceptual_weights:
        raise ConfigError("perceptual_weights: a perceptual (LPIPS-style) loss is not supported yet; "
                          "leave it empty (the VAE trains with L1 + GAN)")
    if cfg.stage in ("vae-temporal", "diffusion") and not cfg.vae:
        what = "the vae-image run" if cfg.stage == "vae-temporal" else "a VAE run dir or checkpoint"
        raise ConfigError(f"the {cfg.stage} stage needs vae=PATH ({what}): --set vae=RUN_DIR")
    if cfg.stage == "vae-image" and cfg.vae and cfg.pca_init_frames:
        raise ConfigError("vae-image: pca_init_frames starts a new VAE; it cannot be combined with vae=PATH "
                          "(which continues a trained one)")
    for key, note in _VAE_ONLY_KEYS.items():
        if getattr(cfg, key) and cfg.stage == "diffusion":
            raise ConfigError(f"config key {key!r} is for the VAE stages{note}")
    if cfg.stage == "vae-temporal" and cfg.num_frames == 1:
        raise ConfigError("the vae-temporal stage trains cross-frame attention: num_frames must be 0 or >= 2")
    if cfg.stage == "vae-image" and cfg.num_frames > 1:
        raise ConfigError("the vae-image stage trains on single frames: num_frames must be 0 or 1")
    return cfg


def load_config(stage: str, config: str | None = None, sets: list[str] | tuple[str, ...] = (),
                base: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults (or `base`, a saved run's config) <- config file (common keys, then [stage]) <- --set
    overrides; validated."""
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    values: dict[str, Any] = {k: coerce(k, v) for k, v in (base or {}).items() if k != "stage"}
    if config:
        values.update(read_toml(resolve_config_path(config), stage))
    for item in sets:
        key, value = parse_set(item)
        if key == "stage":
            raise ConfigError("'stage' is the sub-command (vae-image, vae-temporal, diffusion), not a --set key")
        values[key] = value
    return validate(TrainConfig(stage=stage, **values))


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """A saved config (run dir JSON) back into the dataclass."""
    for key, value in data.items():
        coerce(key, value)
    return TrainConfig(**data)


def stage_num_frames(cfg: TrainConfig, model_cfg) -> int:
    """Clip length for a stage: the config's num_frames, or the stage default."""
    if cfg.num_frames:
        return cfg.num_frames
    if cfg.stage == "vae-image":
        return 1
    if cfg.stage == "vae-temporal":
        return max(2, min(model_cfg.vae.temporal_window, model_cfg.window))
    return model_cfg.window


__all__ = ["TrainConfig", "ConfigError", "load_config", "config_from_dict", "parse_set", "STAGES",
           "RESUME_MUTABLE", "stage_num_frames", "validate"]

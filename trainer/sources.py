"""Where a run's models come from: a fresh model of the config's preset, a trained VAE (a VAE run or a packaged
checkpoint: `vae=`), a trained DiT (a diffusion run or a packaged checkpoint: `init_dit=`, and packaging),
and a VAE run's discriminator.

Every trained source is read at its EMA weights and comes with its provenance (trainer.provenance), which
the checks here use to refuse a DiT on the latents of another VAE.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.errors import CheckpointError
from engine.hub import is_reference, resolve_checkpoint
from engine.models.arvae import ARVAE
from engine.models.discriminator import PatchDiscriminator
from engine.models.dit import DiT
from engine.models.presets import ModelConfig, VAEConfig, get_preset
from trainer.config import ConfigError, TrainConfig
from trainer.provenance import VAEProvenance
from trainer.state import load_run, prefixed, weights_digest


def model_config(cfg: TrainConfig) -> ModelConfig:
    """The model config a run trains: its preset with the config's switches (attention, rotary places, prediction,
    context noise, the decoder's border mixer)."""
    mc = get_preset(cfg.preset)
    mc.vae.mixer_channels = cfg.mixer_channels
    mc.dit.attention = cfg.attention
    mc.dit.rope_space = cfg.rope_space
    mc.diffusion.prediction = cfg.prediction
    mc.diffusion.context_noise = cfg.context_noise
    return ModelConfig.from_dict(mc.to_dict())  # re-validated


def encoder_digest(vae: ARVAE) -> str:
    """A short hash of the encoder's weights alone: what a DiT trained on the VAE's latents depends on."""
    ids = {id(p) for p in vae.encoder_parameters()}
    return weights_digest({name: p for name, p in vae.named_parameters() if id(p) in ids})


# =========================================================================== a trained VAE


@dataclass
class VAESource:
    """A trained VAE (EMA weights, float32) with its model config and provenance."""

    vae: ARVAE
    model_config: ModelConfig
    provenance: VAEProvenance


def load_vae_source(path: str) -> VAESource:
    """A trained VAE (EMA weights) from a vae-image/vae-temporal run dir or an ardiff checkpoint (a file, or an
    hf:/https:// reference that engine.hub fetches)."""
    p = resolve_checkpoint(path)
    if not p.exists():
        raise ConfigError(f"vae: {path} does not exist (give a vae-image/vae-temporal run dir or a checkpoint)")
    if p.is_dir():
        run = load_run(p)
        if run.stage not in ("vae-image", "vae-temporal"):
            raise ConfigError(f"vae: {path} is a {run.stage} run, not a VAE run (vae-image or vae-temporal)")
        vae = ARVAE(run.model_config.vae)
        vae.load_state_dict(run.ema)
        provenance = VAEProvenance(
            path=str(p.resolve()), kind="run", stage=run.stage, step=run.step,
            latent_scale=float(vae.latent_scale),
            latent_scale_measured=bool(run.meta.get("latent_scale_measured", False)),
            digest=weights_digest(run.ema), encoder_digest=encoder_digest(vae), data=run.meta.get("data"),
            recipe=run.meta.get("recipe", []))
        return VAESource(vae, run.model_config, provenance)
    from engine.checkpoint import load_checkpoint

    src = checkpoint_vae_source(load_checkpoint(p))
    if is_reference(path):
        src.provenance.path = path  # the reference travels; the cache path is this machine's
    return src


def checkpoint_vae_source(ck) -> VAESource:
    """The VAE of a loaded ardiff checkpoint (engine.checkpoint.Checkpoint) as a VAE source."""
    provenance = VAEProvenance(
        path=str(ck.path.resolve()), kind="checkpoint", stage="checkpoint", step=ck.meta.get("steps"),
        latent_scale=float(ck.vae.latent_scale), latent_scale_measured=True,
        digest=weights_digest(ck.vae.state_dict()), encoder_digest=encoder_digest(ck.vae),
        data=ck.meta.get("data"), recipe=ck.meta.get("recipe", []))
    return VAESource(ck.vae.float(), ck.config, provenance)


# VAE config keys that change the decoder alone: the latents, and a DiT trained on them, stay what they were.
DECODER_ONLY_KEYS = ("mixer_channels",)


def same_latents_config(a: VAEConfig, b: VAEConfig) -> bool:
    """Whether two VAE configs differ at most in their decoder-only keys (a DiT of one fits the other)."""
    strip = lambda c: {k: v for k, v in c.__dict__.items() if k not in DECODER_ONLY_KEYS}
    return strip(a) == strip(b)


def adds_mixer(src: VAESource, model_cfg: ModelConfig) -> bool:
    """Whether a VAE run adds the border mixer to a source VAE that has none (it starts as the identity)."""
    return src.model_config.vae.mixer_channels == 0 and model_cfg.vae.mixer_channels > 0


def check_vae_matches(src: VAESource, model_cfg: ModelConfig, where: str) -> None:
    """Refuse a VAE whose config is not the one of this run's preset (one line naming every difference). The
    diffusion stage ignores decoder-only keys; a VAE stage may add a border mixer to a VAE without one."""
    have, want = src.model_config.vae.__dict__, model_cfg.vae.__dict__
    if where == "diffusion":
        free = DECODER_ONLY_KEYS  # the DiT learns the latents; the decoder after them is no concern of its run
    elif adds_mixer(src, model_cfg):
        free = ("mixer_channels",)
    else:
        free = ()
    diff = [f"{k}={have[k]} (wanted {want[k]})" for k in want if k not in free and have.get(k) != want[k]]
    if diff:
        raise ConfigError(f"the VAE at {src.provenance.path} (preset {src.model_config.name!r}) does not match "
                          f"preset {model_cfg.name!r} of this {where} run: {', '.join(diff)}; set preset= to the "
                          f"VAE's preset or train a VAE for this preset")


def previous_discriminator(src: VAESource, disc: PatchDiscriminator) -> bool:
    """Load the discriminator of the VAE run `src` came from into `disc`, if it has one of the same shape."""
    if src.provenance.kind != "run":
        return False
    prev = prefixed(load_run(src.provenance.path).tensors, "disc.")
    own = disc.state_dict()
    if not prev or set(prev) != set(own) or any(prev[k].shape != v.shape for k, v in own.items()):
        return False
    disc.load_state_dict(prev)
    return True


# =========================================================================== a trained DiT


@dataclass
class DiffusionSource:
    """A trained DiT (EMA weights) from a diffusion run or a packaged checkpoint, with what its latents were."""

    model_config: ModelConfig
    ema: dict[str, torch.Tensor]
    vae_source: VAEProvenance | None  # the VAE its latents came from
    recipe: list[dict]  # every stage it went through (its VAE's, then its own)
    data: dict | None  # the diffusion stage's data record
    step: int | None
    ema_decay: float | None
    sampling: dict = field(default_factory=dict)  # a packaged checkpoint's sampling defaults


def load_diffusion_source(path: str) -> DiffusionSource:
    """A diffusion run dir or a packaged ardiff checkpoint, local or an hf:/https:// reference (whose DiT was
    trained on its own VAE's latents)."""
    p = resolve_checkpoint(path)
    if not p.exists():
        raise CheckpointError(f"{path} does not exist (give a diffusion run dir or an ardiff checkpoint)")
    if p.is_file():
        from engine.checkpoint import load_checkpoint

        ck = load_checkpoint(p)
        own = checkpoint_vae_source(ck).provenance
        # its VAE is in the same checkpoint: a reference travels, the cache path does not
        used = VAEProvenance(path=path if is_reference(path) else own.path, step=own.step, digest=own.digest, encoder_digest=own.encoder_digest,
                             latent_scale=float(ck.meta.get("latent_scale", own.latent_scale)))  # folded in
        return DiffusionSource(ck.config, {k: v.float() for k, v in ck.dit.state_dict().items()}, used,
                               list(ck.meta.get("recipe", [])), (ck.meta.get("data") or {}).get("diffusion"),
                               ck.meta.get("sources", {}).get("diffusion_step"), ck.meta.get("ema_decay"),
                               dict(ck.meta.get("sampling") or {}))
    run = load_run(p)
    if run.stage != "diffusion":
        raise CheckpointError(f"{path} is a {run.stage} run, not a diffusion run")
    return DiffusionSource(run.model_config, run.ema, VAEProvenance.from_json(run.meta.get("vae_source")),
                           list(run.meta.get("recipe", [])), run.meta.get("data"), run.step,
                           run.train_config.ema_decay, dict(run.meta.get("sampling") or {}))


_MAY_CHANGE = {"diffusion": ("context_noise", "prediction"), "dit": ("rope_space",), "vae": DECODER_ONLY_KEYS}


def _architecture(cfg: ModelConfig) -> dict:
    """A model config less what a run may change when it continues a DiT: the context-noise level, what the
    output means (a fine-tune may start context noise, or move x0-prev to x0-delta: the same weights, whose
    first new frame means the same in both) and the rotary places in the frame (the same weights; between
    tokens of one place those pairs only lose their small time turn), and the decoder-only VAE keys."""
    data = cfg.to_dict()
    for part, keys in _MAY_CHANGE.items():
        data[part] = {k: v for k, v in data[part].items() if k not in keys}
    return data


def init_dit_from(dit: DiT, path: str, model_cfg: ModelConfig, vae: VAEProvenance, other_vae: bool = False
                  ) -> list[dict]:
    """Load the DiT at `path` (init_dit) into `dit`; return the recipe stages it went through.

    Only a DiT trained on this run's latents may be continued (the same encoder and latent scale), unless
    `other_vae` (init_dit_other_vae): a warm start."""
    src = load_diffusion_source(path)
    if _architecture(src.model_config) != _architecture(model_cfg):
        raise ConfigError(f"init_dit: the DiT at {path} (preset {src.model_config.name!r}) has another model "
                          f"config than this run's; set preset= and the model keys to its own")
    used = src.vae_source or VAEProvenance()
    if not other_vae and not used.same_latents(vae):
        raise ConfigError(f"init_dit: the DiT at {path} was trained on the latents of another VAE "
                          f"({used.path}) than this run's vae; give the VAE it was trained with, or set "
                          f"init_dit_other_vae = true for a warm start")
    dit.load_state_dict(src.ema)
    return list(src.recipe)

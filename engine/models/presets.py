"""Model presets: one JSON-serialisable config used by the trainer, checkpoints, the pipeline and export."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class VAEConfig:
    """AR-VAE: per-frame TiTok-style encoder, temporally causal decoder."""

    image_size: int = 64
    patch_size: int = 8
    width: int = 256
    encoder_depth: int = 4
    decoder_depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    num_latent_tokens: int = 16  # L
    latent_dim: int = 16  # D
    temporal_window: int = 16  # the decoder's patch tokens see latents of this many frames (itself included)
    # Latent tokens on a sqrt(L) x sqrt(L) grid, each tied to one image region: encoder latent j reads only
    # its region's patches, decoder patches read only their region's latent (patches still see each other),
    # and a linear path per region (a strided convolution in, its transpose out) runs beside the transformer,
    # so the model starts from what a linear code of each region can do. Latents are then not unit-normalised
    # per token (that would erase a region's brightness from the linear path); latent_scale still gives the
    # diffusion model unit variance. False: the paper's TiTok-style tokens, free to encode anything, unit norm.
    local_latents: bool = False
    # Hidden channels of the border mixer (0: none): a small residual convolution over each decoded frame, so
    # neighbouring regions' pixels meet across their borders. Local latents reach the frame through a linear path
    # per region, so any disagreement between two regions' latents (the DiT's, never exactly the encoder's) shows
    # as a step on their border; the mixer is trained to leave the real frames' steps and smooth the rest. It
    # starts at the identity and changes only the decoder: a DiT trained on the latents stays valid.
    mixer_channels: int = 0

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass
class DiTConfig:
    """Temporally causal DiT over frames x L latent tokens."""

    hidden: int = 224
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    num_classes: int = 0  # 0: unconditional; otherwise class index num_classes is the null class for CFG
    attention: str = "causal"  # "causal" (block-causal over frames) | "full" (the paper's ablation)
    rope_theta: float = 10000.0
    # Also give each token its place in the frame: the slowest half of the rotary pairs (which turn by under 0.2
    # rad over a 16-frame window, so time hardly uses them) turn by the token's row and column in the square
    # grid of latent tokens instead. Attention then sees relative places, so "the same region in the frame
    # before" is one pattern for every region. Between tokens of the same place only those pairs' small time
    # turn is lost, which lets a DiT trained without it continue with it.
    rope_space: bool = False


# What the DiT's output means: x0 (the paper's choice), eps (ablation), x0-prev: a correction to the
# previous frame as the DiT sees it (DiffusionSchedule.previous_frame_term), so that an untrained DiT repeats
# the last frame, or x0-delta: a correction to the previous frame's clean estimate (engine.diffusion.chain_x0),
# which stays clean where x0-prev's term carries the previous frame's noise.
PREDICTIONS = ("x0", "eps", "x0-prev", "x0-delta")


@dataclass
class DiffusionConfig:
    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02  # the paper's Table 6 says 0.002, which never reaches noise; the released code uses 0.02
    schedule: str = "linear"
    prediction: str = "x0"  # one of PREDICTIONS
    context_noise: int = 0  # the level clean frames are shown at when sampling (engine.objective); 0 = clean


@dataclass
class ModelConfig:
    """Everything needed to build the model pair and run it. `window` is the training length W."""

    name: str = "default"
    window: int = 16
    vae: VAEConfig = field(default_factory=VAEConfig)
    dit: DiTConfig = field(default_factory=DiTConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)

    def __post_init__(self) -> None:
        validate_config(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """Build a config from `to_dict()` output; unknown keys are an error, missing keys take defaults."""
        if not isinstance(data, dict):
            raise ValueError(f"model config must be a JSON object, got {type(data).__name__}")
        parts = {"vae": VAEConfig, "dit": DiTConfig, "diffusion": DiffusionConfig}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key in parts:
                kwargs[key] = _from_dict(parts[key], value, key)
            elif key in ("name", "window"):
                kwargs[key] = value
            else:
                raise ValueError(f"unknown model config key {key!r}")
        return cls(**kwargs)

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def _from_dict(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"model config {where!r} must be an object, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown key(s) in model config {where!r}: {', '.join(unknown)}")
    return cls(**data)


def validate_config(cfg: ModelConfig) -> None:
    """Reject configs the models cannot be built from, naming the field and what is allowed."""
    v, d = cfg.vae, cfg.dit
    if cfg.window < 1:
        raise ValueError(f"window must be >= 1, got {cfg.window}")
    if v.patch_size < 1 or v.image_size % v.patch_size:
        raise ValueError(f"vae.image_size ({v.image_size}) must be a multiple of vae.patch_size ({v.patch_size})")
    if v.width % v.heads:
        raise ValueError(f"vae.width ({v.width}) must be divisible by vae.heads ({v.heads})")
    if d.hidden % d.heads or (d.hidden // d.heads) % 2:
        raise ValueError(f"dit.hidden ({d.hidden}) / dit.heads ({d.heads}) must be an even integer (rotary)")
    if d.attention not in ("causal", "full"):
        raise ValueError(f"dit.attention must be 'causal' or 'full', got {d.attention!r}")
    if d.rope_space and (math.isqrt(v.num_latent_tokens) ** 2 != v.num_latent_tokens
                         or (d.hidden // d.heads) % 8):  # a quarter of the head each for rows and columns
        raise ValueError(f"dit.rope_space needs a square grid of latent tokens (got {v.num_latent_tokens}) and a "
                         f"head size divisible by 8 (got {d.hidden // d.heads})")
    if cfg.diffusion.prediction not in PREDICTIONS:
        raise ValueError(f"diffusion.prediction must be one of {', '.join(PREDICTIONS)}, "
                         f"got {cfg.diffusion.prediction!r}")
    if not 0 <= cfg.diffusion.context_noise <= cfg.diffusion.num_timesteps:
        raise ValueError(f"diffusion.context_noise must be in 0..{cfg.diffusion.num_timesteps}, "
                         f"got {cfg.diffusion.context_noise}")
    if v.local_latents:
        side, grid = math.isqrt(v.num_latent_tokens), v.image_size // v.patch_size
        if side * side != v.num_latent_tokens or grid % side:
            raise ValueError(f"vae.local_latents needs a square number of latent tokens whose grid divides the "
                             f"{grid}x{grid} patch grid, got num_latent_tokens={v.num_latent_tokens}")
    for name, value in (("vae.num_latent_tokens", v.num_latent_tokens), ("vae.latent_dim", v.latent_dim),
                        ("vae.temporal_window", v.temporal_window), ("dit.depth", d.depth),
                        ("vae.encoder_depth", v.encoder_depth), ("vae.decoder_depth", v.decoder_depth)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if d.num_classes < 0:
        raise ValueError(f"dit.num_classes must be >= 0, got {d.num_classes}")
    if v.mixer_channels < 0:
        raise ValueError(f"vae.mixer_channels must be >= 0 (0: no border mixer), got {v.mixer_channels}")


PRESETS: dict[str, ModelConfig] = {
    # Tests: a forward + backward in milliseconds.
    "tiny": ModelConfig(
        name="tiny",
        window=16,
        vae=VAEConfig(image_size=16, patch_size=4, width=32, encoder_depth=1, decoder_depth=1, heads=2,
                      mlp_ratio=2.0, num_latent_tokens=4, latent_dim=4, temporal_window=4),
        dit=DiTConfig(hidden=32, depth=2, heads=2, mlp_ratio=2.0),
    ),
    # The embedded model: 64x64 frames, window 16, trainable on a 2-core CPU in hours. Sampling cost grows
    # with L (tokens per frame), not D, and every frame needs n DiT updates: so few tokens, each wide
    # (L = 16, D = 16: 256 numbers per frame), and a DiT small enough to stream on two AVX2 cores.
    # VAE 7.5M + DiT 3.9M parameters: 23 MB in bfloat16, inside the 25 MB budget for assets/ (the first
    # choice, DiT hidden 256 / depth 6, made 29 MB).
    # Local latents (each token codes one 16x16 region): the TiTok-style free tokens memorised the few training
    # scenes in a CPU-sized run (20 dB PSNR on training footage, 13 dB on unseen footage; assets/MODEL_CARD.md).
    # D = 64: a linear code of 64 numbers per 16x16 region already reaches 26 dB PSNR on unseen footage.
    "default": ModelConfig(name="default", vae=VAEConfig(local_latents=True, latent_dim=64)),
    # The default preset with three times the channels per region (D = 192): a linear code of that size
    # reaches about 30.6 dB on unseen footage where D = 64 stops near 25 dB. The DiT's tokens stay 16 per
    # frame, so sampling costs about the same; only its input and output layers grow.
    "wide": ModelConfig(name="wide", vae=VAEConfig(local_latents=True, latent_dim=192)),
    # Table 6 of the paper: VAE width 1024 / 24 layers / 16 heads, L = 32, D = 4 at 256x256, patch 16;
    # DiT hidden 1152, depth 28, 16 heads (DiT-XL); window 16.
    "paper": ModelConfig(
        name="paper",
        window=16,
        vae=VAEConfig(image_size=256, patch_size=16, width=1024, encoder_depth=24, decoder_depth=24, heads=16,
                      num_latent_tokens=32, latent_dim=4, temporal_window=16),
        dit=DiTConfig(hidden=1152, depth=28, heads=16),
    ),
}


def get_preset(name: str) -> ModelConfig:
    """A fresh copy of a named preset ("tiny", "default", "paper")."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return ModelConfig.from_dict(PRESETS[name].to_dict())

"""The two networks of AR-Diffusion and their presets."""

from __future__ import annotations

from engine.models.presets import DiffusionConfig, DiTConfig, ModelConfig, VAEConfig, get_preset, PRESETS


def build_models(cfg: ModelConfig):
    """Randomly initialised (ARVAE, DiT) for a config."""
    from engine.models.arvae import ARVAE
    from engine.models.dit import DiT

    return ARVAE(cfg.vae), DiT(cfg)


__all__ = ["build_models", "get_preset", "ModelConfig", "VAEConfig", "DiTConfig", "DiffusionConfig", "PRESETS"]

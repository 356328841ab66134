"""trainer.provenance and trainer.sources: the typed records read and write the JSON checkpoints already hold,
so runs written before them and the shipped model still resume, continue and package the same."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from trainer import cli
from trainer.provenance import VAEProvenance
from trainer.sources import load_diffusion_source, load_vae_source

SHIPPED = Path(__file__).resolve().parents[1] / "assets" / "ardiff-default.safetensors"

# The "vae_source" of a diffusion run as the trainer wrote it before the record existed (a VAE whose run
# stopped early, measured by the diffusion run, then channel-normalised), and a key from a later version.
STORED = {
    "path": "/runs/vae-temporal", "kind": "run", "stage": "vae-temporal", "step": 400, "latent_scale": 1.0,
    "latent_scale_measured": False, "digest": "0123456789abcdef", "encoder_digest": "fedcba9876543210",
    "data": {"spec": "data/train-64", "num_frames": 4, "items": 10, "report": "10 items", "skipped": {}},
    "recipe": [{"stage": "vae-image", "steps": 2400}, {"stage": "vae-temporal", "steps": 400}],
    "latent_scale_measured_by": "diffusion run", "latent_channel_scale": [0.5, 2.0],
}


def test_a_stored_vae_source_reads_back_and_writes_the_same_json():
    record = VAEProvenance.from_json(STORED)
    assert record.latent_channel_scale == [0.5, 2.0] and record.recipe[1]["steps"] == 400
    assert json.dumps(record.to_json()) == json.dumps(STORED)  # same keys, same order, same values
    plain = {k: v for k, v in STORED.items() if k not in ("latent_scale_measured_by", "latent_channel_scale")}
    assert json.dumps(VAEProvenance.from_json(plain).to_json()) == json.dumps(plain)  # no late keys added
    later = VAEProvenance.from_json({**STORED, "a_key_from_a_later_version": 1})
    assert later == record
    assert VAEProvenance.from_json(None) is None


def test_the_shipped_model_is_a_source_and_repackages_with_its_recipe(tmp_path):
    from engine.checkpoint import load_checkpoint

    shipped = load_checkpoint(SHIPPED)
    vae = load_vae_source(str(SHIPPED))
    dit = load_diffusion_source(str(SHIPPED))
    assert vae.provenance.kind == "checkpoint" and vae.provenance.recipe == shipped.meta["recipe"]
    assert dit.vae_source.same_latents(vae.provenance)  # its DiT was trained on its own VAE's latents
    assert dit.vae_source.latent_scale == shipped.meta["latent_scale"]
    out = tmp_path / "again.safetensors"
    assert cli.main(["package", "--diffusion", str(SHIPPED), "-o", str(out)]) == 0
    again = load_checkpoint(out)
    for key in ("recipe", "steps", "latent_scale", "ema_decay", "weights"):
        assert again.meta[key] == shipped.meta[key], key
    for mine, theirs in ((again.vae, shipped.vae), (again.dit, shipped.dit)):
        ref = theirs.state_dict()
        assert all(torch.equal(v, ref[k].float()) for k, v in mine.state_dict().items())


def test_same_latents_after_a_per_channel_fold_is_the_encoder_alone():
    """A DiT trained with latent_norm=channel records the scale after its fold (1.0) beside the fold's factors;
    a decoder fine-tune of its VAE (same encoder, the VAE's own scale) must still package with it, and any other
    encoder must not. Without a fold the latent scale counts too."""
    from trainer.provenance import VAEProvenance

    folded = VAEProvenance(encoder_digest="enc", latent_scale=1.0, latent_channel_scale=[0.5, 2.0])
    decoder_tuned = VAEProvenance(encoder_digest="enc", latent_scale=0.8653)
    assert folded.same_latents(decoder_tuned)
    assert not folded.same_latents(VAEProvenance(encoder_digest="other", latent_scale=0.8653))
    plain = VAEProvenance(encoder_digest="enc", latent_scale=1.0)
    assert not plain.same_latents(decoder_tuned) and plain.same_latents(VAEProvenance(encoder_digest="enc",
                                                                                      latent_scale=1.0))

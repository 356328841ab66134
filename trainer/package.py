"""`ardiff-train package`: a VAE run + a diffusion run -> the single checkpoint engine.checkpoint loads.

EMA weights of both networks, the diffusion run's model config (with the VAE's decoder-only keys), and as
metadata the training recipe (every stage with its steps), the data provenance of each stage, the latent scale,
and where it all came from.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from engine.checkpoint import read_checkpoint_header, sampling_defaults, save_checkpoint
from engine.errors import CheckpointError
from engine.hub import is_reference
from engine.models.dit import DiT
from engine.sampling import HISTORY_GUIDANCE_UNSUPPORTED, supports_history_guidance
from trainer.model_card import write_model_card
from trainer.provenance import VAEProvenance
from trainer.sources import load_diffusion_source, load_vae_source, same_latents_config

DTYPES = {"fp32": None, "float32": None, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


def package(diffusion_run: str, output: str, vae: str | None = None, dtype: str = "fp32",
            history_guidance: float | None = None, license: str = "apache-2.0",
            datasets: list[str] | None = None) -> Path:
    """One checkpoint from a diffusion run (or a packaged checkpoint) and the VAE its DiT was trained with.

    The VAE may be another one than the DiT saw if its encoder and latent scale are the same (a decoder-only
    fine-tune, `train_encoder = false`): the DiT's latents are then unchanged. `history_guidance`: the value
    the engine samples this model with unless told otherwise (meta "sampling"; None: keep a packaged
    checkpoint's, else off). A Hub model card (README.md, trainer.model_card) is written beside the checkpoint
    with `license` and the Hub `datasets` it was trained on.
    """
    if dtype not in DTYPES:
        raise CheckpointError(f"--dtype must be one of fp32, bf16, fp16; got {dtype!r}")
    check_output(output, [diffusion_run, vae])
    diff = load_diffusion_source(diffusion_run)
    used = diff.vae_source or VAEProvenance()
    vae_path = vae or used.path
    if not vae_path:
        raise CheckpointError("--vae is needed: the diffusion run does not record its VAE")
    src = load_vae_source(vae_path)
    got = src.provenance
    other_vae = bool(used.digest) and got.digest != used.digest
    if other_vae and not used.same_latents(got):
        raise CheckpointError(
            f"the diffusion run {diffusion_run} was trained on the latents of the VAE at {used.path} "
            f"(step {used.step}, weights {used.digest}), but --vae {vae_path} holds different weights "
            f"({got.digest}, step {got.step}) and another encoder or latent scale: package the "
            f"VAE the diffusion model was trained on, or one fine-tuned from it with train_encoder = false")
    if not same_latents_config(src.model_config.vae, diff.model_config.vae):
        raise CheckpointError(f"--vae {vae_path} has a different VAE config than the diffusion run's model")
    config = diff.model_config.replace(vae=src.model_config.vae)  # with the decoder's own keys (its mixer)
    if used.latent_channel_scale is not None:  # latent_norm=channel: the same fold as in training
        src.vae.scale_latent_channels(torch.tensor(used.latent_channel_scale, dtype=torch.float64))
    scale = float(used.latent_scale if used.latent_scale is not None else got.latent_scale)
    src.vae.latent_scale.fill_(scale)  # the scale the diffusion model saw its latents at
    dit = DiT(config)
    dit.load_state_dict(diff.ema)
    recipe = list(diff.recipe)
    if other_vae:  # the decoder fine-tunes (one or several) after the stages the DiT's VAE went through
        shared = [r for r in diff.recipe if r["stage"] != "diffusion"]
        recipe += got.recipe[len(shared):] if got.recipe[:len(shared)] == shared else got.recipe[-1:]
    meta = {
        "recipe": recipe,
        "steps": steps_by_stage(recipe),
        "data": {"vae": got.data, "diffusion": diff.data},
        "latent_scale": scale,
        "latent_norm": "channel" if used.latent_channel_scale is not None else "global",
        "weights": "ema",
        "ema_decay": diff.ema_decay,
        "sources": {"vae": got.path, "vae_step": got.step,
                    "diffusion": diffusion_run if is_reference(diffusion_run) else str(Path(diffusion_run).resolve()),
                    "diffusion_step": diff.step},
        "packaged_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    sampling = dict(diff.sampling)
    if history_guidance is not None:
        if history_guidance != 1.0 and not supports_history_guidance(diff.model_config.diffusion.prediction):
            raise CheckpointError("--history-guidance: " + HISTORY_GUIDANCE_UNSUPPORTED.format(
                prediction=diff.model_config.diffusion.prediction))
        sampling["history_guidance"] = history_guidance
    if sampling:
        meta["sampling"] = sampling
        sampling_defaults(meta)  # a bad value is refused here, before anything is written
    path = save_checkpoint(output, src.vae, dit, config, meta=meta, dtype=DTYPES[dtype])
    read_checkpoint_header(path)  # what the engine reads first: fail here, not in the user's hands
    write_model_card(path, config, meta, license=license, datasets=datasets,
                     sources=[diffusion_run, vae_path])
    return path


def check_output(output: str, inputs: list[str | None]) -> None:
    """Refuse, before any work, an output that is a folder or one of the inputs (replacing it would lose it)."""
    out = Path(output)
    if out.is_dir():
        raise CheckpointError(f"-o {output} is a folder; give the checkpoint's file name, e.g. "
                              f"{out / 'model.safetensors'} (nothing in the folder was touched)")
    for source in inputs:
        if source and out.exists() and Path(source).exists() and os.path.samefile(out, source):
            raise CheckpointError(f"-o {output} is the input {source}; write the package to another file")


def steps_by_stage(recipe: list[dict]) -> dict[str, int]:
    """Steps of every stage in order, by a readable name; a name met again (a second vae-temporal stage after a
    continued image stage) is numbered, so no stage is lost."""
    steps: dict[str, int] = {}
    for record in recipe:
        name = base = _stage_name(record)
        count = 1
        while name in steps:
            count += 1
            name = f"{base} #{count}"
        steps[name] = record["steps"]
    return steps


def _stage_name(record: dict) -> str:
    if record.get("init_dit_other_vae"):
        return record["stage"] + " (warm start)"
    if record.get("init_dit") or (record["stage"] == "vae-image" and record.get("vae")):
        return record["stage"] + " (continued)"
    return record["stage"] + (" (decoder only)" if record.get("train_encoder") is False else "")

"""The three training stages as small objects, each saying what it builds and trains, the loss of one
micro-batch, what a logged step shows, what happens at the end of the run, and what the recipe records.

    VAEImageStage      the AR-VAE per frame: encoder and decoder, L1, then + hinge GAN from disc_start
    VAETemporalStage   the AR-VAE's temporal path (the rest at temporal_rest_lr_scale, or frozen)
    DiffusionStage     the DiT on the frozen VAE's latents, on FoPP (or ablation) timestep compositions

`make_stage` builds the stage of `cfg.stage`; trainer.train runs every stage in the same loop. A stage's
extra state (the discriminator and its optimiser) is saved with the rest by trainer.state.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from engine.diffusion import DiffusionSchedule
from engine.hub import is_reference
from engine.models.arvae import ARVAE
from engine.models.discriminator import PatchDiscriminator, hinge_d_loss, hinge_g_loss
from engine.models.dit import DiT
from engine.models.presets import ModelConfig
from engine.schedulers import make_training_scheduler
from trainer.config import ConfigError, TrainConfig, stage_num_frames
from trainer.latent_stats import init_vae_from_pca, measure_latent_scale, normalize_latent_channels
from engine.objective import context_levels, diffusion_loss
from trainer.losses import adaptive_gan_weight, border_gradient_loss
from trainer.metrics import Log
from trainer.runtime import Process
from trainer.sources import (VAESource, adds_mixer, check_vae_matches, init_dit_from, load_vae_source,
                             previous_discriminator)
from trainer.state import TrainingState


@dataclass
class RunContext:
    """What every stage is built with: the configs, this process, the per-sample generator and the log."""

    cfg: TrainConfig
    model_cfg: ModelConfig
    proc: Process
    gen: torch.Generator  # per-sample draws for the global batch (compositions, noise), sliced per rank
    log: Log


def make_stage(ctx: RunContext) -> Stage:
    """The stage `ctx.cfg.stage`, built: its VAE source loaded and checked, its networks made."""
    stages = {cls.name: cls for cls in (VAEImageStage, VAETemporalStage, DiffusionStage)}
    return stages[ctx.cfg.stage](ctx)


class Stage:
    """What every stage has: the trained network (`model`, on the device, in train mode; `net` is it wrapped
    in DDP under torchrun), its trainable parameters and AdamW groups (with an "lr_scale"), an optional
    discriminator, the VAE it starts from or encodes with, and the recipe stages before it."""

    name = ""  # the stage's name in configs, the CLI and checkpoints
    model: torch.nn.Module
    trainable: list[torch.nn.Parameter]
    param_groups: list[dict]
    disc: PatchDiscriminator | None = None
    d_opt: torch.optim.Optimizer | None = None

    def __init__(self, ctx: RunContext) -> None:
        self.ctx, self.cfg = ctx, ctx.cfg
        self.vae_src: VAESource | None = None
        if self.cfg.vae:  # the later stages need it; vae-image may start from it
            self.vae_src = load_vae_source(self.cfg.vae)
            check_vae_matches(self.vae_src, ctx.model_cfg, self.cfg.stage)
        self.num_frames = stage_num_frames(self.cfg, ctx.model_cfg)
        self.recipe: list[dict] = [r for r in (self.vae_src.provenance.recipe if self.vae_src else [])
                                   if r["stage"] != "diffusion"]  # a packaged model's DiT is not this run's past

    # ---- set-up after the model: data-dependent starts, the data the loop reads, DDP
    def init_from_data(self, dataset) -> None:
        """A fresh run's data-dependent start of the weights (before the EMA copies them)."""

    def prepare_data(self, dataset, run_dir: Path):
        """The dataset the loop reads (a stage may replace items by what it trains on)."""
        return dataset

    def wrap(self) -> None:
        """Wrap the trained networks in DDP under torchrun (after a resume has loaded them)."""
        self.net = self._ddp(self.model)

    def _ddp(self, module: torch.nn.Module) -> torch.nn.Module:
        proc = self.ctx.proc
        if not proc.ddp:
            return module
        return DDP(module, device_ids=[proc.device.index] if proc.device.type == "cuda" else None)

    # ---- one optimizer step
    def begin_step(self, step: int) -> None:
        """Called before the micro-steps of optimizer step `step` (0-based)."""

    def accumulating(self) -> contextlib.AbstractContextManager:
        """Under DDP: the context of a micro-step whose gradients are not synchronised yet."""
        return self.net.no_sync()

    def micro_step(self, x: torch.Tensor) -> float:
        """Forward and backward of one micro-batch (gradients divided by grad_accum); returns its loss."""
        raise NotImplementedError

    def step_extras(self, lr: float) -> None:
        """After the trained model's optimizer step at learning rate `lr`: the stage's own updates."""

    def record(self) -> dict:
        """What a logged step shows of this stage, beyond the loss, lr and grad norm."""
        return {}

    # ---- end of the run and the checkpoint's records
    def finish(self, state: TrainingState, dataset) -> None:
        """At the end of a run that was not stopped, before the last checkpoint."""

    def latent_scale(self) -> float | None:
        """The trained VAE's latent scale, recorded in the checkpoint (None: not a VAE stage)."""
        return None

    def recipe_entry(self, step: int) -> dict:
        """This stage's entry of the recipe (the stages a model went through), as of `step` steps."""
        cfg = self.cfg
        return {"stage": cfg.stage, "steps": step, "preset": cfg.preset, "data": cfg.data, "lr": cfg.lr,
                "batch_size": cfg.batch_size, "world_size": self.ctx.proc.world, "grad_accum": cfg.grad_accum}


# =========================================================================== the AR-VAE stages


class VAEStage(Stage):
    """The AR-VAE, L1 reconstruction plus (from disc_start) a hinge GAN with the VQGAN adaptive weight."""

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        cfg, device = self.cfg, ctx.proc.device
        self.started_from_source()
        model = self.model = ARVAE(ctx.model_cfg.vae)
        if self.vae_src is not None:
            adding = adds_mixer(self.vae_src, ctx.model_cfg)  # the rest is the source's, the mixer its identity
            missing, _ = model.load_state_dict(self.vae_src.vae.state_dict(), strict=not adding)
            assert all(k.startswith("mixer.") for k in missing), missing
            if adding:
                ctx.log.info(f"the decoder gains a border mixer ({cfg.mixer_channels} channels), starting as the "
                             f"identity")
        temporal = list(model.temporal_parameters())
        temporal_ids = {id(p) for p in temporal}
        rest = [p for p in model.parameters() if id(p) not in temporal_ids]
        groups, trainable = self.parameter_groups(temporal, rest)
        if not cfg.train_encoder:  # decoder-only: the encoder (and so every latent) stays bit for bit
            if self.vae_src is None:
                raise ConfigError("train_encoder = false needs a trained VAE to start from: run the vae-temporal "
                                  "stage with vae=RUN_DIR_OR_CHECKPOINT")
            encoder_ids = {id(p) for p in model.encoder_parameters()}
            groups = [{**g, "params": [p for p in g["params"] if id(p) not in encoder_ids]} for g in groups]
            trainable = [p for p in trainable if id(p) not in encoder_ids]
        trainable_ids = {id(p) for p in trainable}
        self.last_layer = model.to_pixels.weight  # the decoder's last layer, for the adaptive GAN weight
        for p in model.parameters():
            p.requires_grad_(id(p) in trainable_ids or (cfg.gan and p is self.last_layer))
        if cfg.gan:
            self.disc = PatchDiscriminator(3, cfg.disc_channels, cfg.disc_layers).to(device)
            if self.vae_src is not None and previous_discriminator(self.vae_src, self.disc):
                ctx.log.info("discriminator: continued from the VAE run")
            self.d_opt = torch.optim.Adam(self.disc.parameters(), lr=cfg.disc_lr or cfg.lr, betas=(0.5, 0.9))
        model.to(device).train()
        self.trainable, self.param_groups = trainable, groups

    def started_from_source(self) -> None:
        """Say which VAE the stage starts from (when one was given)."""

    def parameter_groups(self, temporal: list, rest: list) -> tuple[list[dict], list]:
        """(AdamW groups, trainable parameters) from the VAE's temporal parameters and the rest."""
        raise NotImplementedError

    def wrap(self) -> None:
        super().wrap()
        if self.disc is not None:
            self.disc_net = self._ddp(self.disc)

    def begin_step(self, step: int) -> None:
        self.gan_on = self.disc is not None and step >= self.cfg.disc_start
        self.sums = {"rec": 0.0, "seam": 0.0, "g": 0.0, "d": 0.0, "gan_weight": 0.0}

    def accumulating(self) -> contextlib.AbstractContextManager:
        ctx = contextlib.ExitStack()
        ctx.enter_context(self.net.no_sync())
        if self.gan_on:
            ctx.enter_context(self.disc_net.no_sync())
        return ctx

    def micro_step(self, x: torch.Tensor) -> float:
        cfg, autocast, sums = self.cfg, self.ctx.proc.autocast, self.sums
        with autocast():
            rec = self.net(x, self._latent_noise(x))
        rec_loss = (rec.float() - x).abs().mean()
        loss = cfg.l1_weight * rec_loss
        sums["rec"] += rec_loss.item()
        if cfg.seam_weight:
            seam_loss = border_gradient_loss(rec, x, self.model.region_size)
            loss = loss + cfg.seam_weight * seam_loss
            sums["seam"] += seam_loss.item()
        if self.gan_on:
            self.disc.requires_grad_(False)
            with autocast():
                g_loss = hinge_g_loss(self.disc(rec).float())
            w = cfg.disc_weight * adaptive_gan_weight(loss, g_loss, self.last_layer, self.ctx.proc.ddp)
            loss = loss + w * g_loss
            self.disc.requires_grad_(True)
            sums["g"] += g_loss.item()
            sums["gan_weight"] += float(w)
        (loss / cfg.grad_accum).backward()
        if self.gan_on:
            with autocast():
                logits = self.disc_net(torch.cat([x, rec.detach()])).float()
            real, fake = logits.chunk(2)
            d_loss = hinge_d_loss(real, fake)
            (d_loss / cfg.grad_accum).backward()
            sums["d"] += d_loss.item()
        return loss.item()

    def _latent_noise(self, x: torch.Tensor) -> torch.Tensor | None:
        """decoder_latent_noise's draw for frames x [B, N, ...]: each clip's noise, in channel stds, scaled by
        U(0, decoder_latent_noise); drawn for the global batch and sliced per rank, as the diffusion stage does."""
        if not self.cfg.decoder_latent_noise:
            return None
        proc, vae_cfg, gen = self.ctx.proc, self.ctx.model_cfg.vae, self.ctx.gen
        gb = x.shape[0] * proc.world
        std = self.cfg.decoder_latent_noise * torch.rand(gb, 1, 1, 1, generator=gen)
        noise = std * torch.randn((gb, x.shape[1], vae_cfg.num_latent_tokens, vae_cfg.latent_dim), generator=gen)
        return noise[proc.rank::proc.world].to(proc.device)

    def step_extras(self, lr: float) -> None:
        cfg = self.cfg
        if self.gan_on:
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.disc.parameters(), cfg.grad_clip)
            self.d_opt.param_groups[0]["lr"] = lr * (cfg.disc_lr or cfg.lr) / cfg.lr
            self.d_opt.step()
        if self.disc is not None:
            self.disc.zero_grad(set_to_none=True)

    def record(self) -> dict:
        n = self.cfg.grad_accum
        out = {"rec": self.sums["rec"] / n}
        if self.cfg.seam_weight:
            out.update(seam=self.sums["seam"] / n)
        if self.gan_on:
            out.update(g=self.sums["g"] / n, d=self.sums["d"] / n, gan_weight=self.sums["gan_weight"] / n)
        return out

    def finish(self, state: TrainingState, dataset) -> None:
        """Measure the latent scale on the data with the EMA weights (kept from the source when the encoder
        was frozen: the latents are the source's)."""
        cfg, log, device = self.cfg, self.ctx.log, self.ctx.proc.device
        if not state.latent_scale_measured and not cfg.train_encoder:
            state.latent_scale_measured = True
            log.info(f"latent scale kept from the source VAE ({float(self.model.latent_scale):.4f}): "
                     f"the encoder was frozen")
        if state.latent_scale_measured:
            return
        ema_vae = state.ema.copy_to(ARVAE(self.ctx.model_cfg.vae).to(device))
        scale = measure_latent_scale(ema_vae, dataset, cfg.latent_scale_samples, cfg.batch_size, device, cfg.seed)
        self.model.latent_scale.fill_(scale)
        state.ema.buffers["latent_scale"].fill_(scale)
        state.latent_scale_measured = True
        log.info(f"latent scale: 1 / std of the latents over {min(cfg.latent_scale_samples, len(dataset))} "
                 f"items = {scale:.4f} (stored in the VAE's latent_scale)")

    def latent_scale(self) -> float | None:
        return float(self.model.latent_scale)

    def recipe_entry(self, step: int) -> dict:
        return {**super().recipe_entry(step), "gan": self.cfg.gan, "train_encoder": self.cfg.train_encoder,
                "decoder_latent_noise": self.cfg.decoder_latent_noise, "seam_weight": self.cfg.seam_weight,
                "mixer_channels": self.cfg.mixer_channels}


class VAEImageStage(VAEStage):
    """Per-frame: every parameter but the temporal path; optionally a trained VAE continued, or a PCA start."""

    name = "vae-image"

    def started_from_source(self) -> None:
        if self.vae_src is not None:
            self.ctx.log.info(f"vae-image continues the {self.vae_src.provenance.stage} VAE {self.cfg.vae}")

    def parameter_groups(self, temporal: list, rest: list) -> tuple[list[dict], list]:
        return [{"params": rest, "lr_scale": 1.0}], rest

    def init_from_data(self, dataset) -> None:
        if self.cfg.pca_init_frames:
            init_vae_from_pca(self.model, dataset, self.cfg.pca_init_frames, self.cfg.seed, self.ctx.log.info)

    def recipe_entry(self, step: int) -> dict:
        entry = super().recipe_entry(step)
        if self.vae_src is not None:
            entry.update(vae=self.vae_src.provenance.path)
        return entry


class VAETemporalStage(VAEStage):
    """The decoder's causal cross-frame attention; the rest at temporal_rest_lr_scale times the lr (0: frozen)."""

    name = "vae-temporal"

    def started_from_source(self) -> None:
        if self.vae_src is not None and self.vae_src.provenance.stage != "vae-image":
            self.ctx.log.info(f"vae-temporal starts from a {self.vae_src.provenance.stage} VAE ({self.cfg.vae})")

    def parameter_groups(self, temporal: list, rest: list) -> tuple[list[dict], list]:
        if not temporal:
            raise ConfigError("this preset's VAE has temporal_window 1: it has no temporal parameters to train")
        scale = self.cfg.temporal_rest_lr_scale
        if scale > 0:
            return [{"params": temporal, "lr_scale": 1.0}, {"params": rest, "lr_scale": scale}], temporal + rest
        return [{"params": temporal, "lr_scale": 1.0}], temporal


# =========================================================================== the diffusion stage


class DiffusionStage(Stage):
    """The DiT learns to denoise the frozen VAE's latents at per-frame timesteps (FoPP compositions)."""

    name = "diffusion"

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        cfg, model_cfg, log = self.cfg, ctx.model_cfg, ctx.log
        if self.num_frames > model_cfg.window:
            raise ConfigError(f"num_frames ({self.num_frames}) exceeds the model window ({model_cfg.window})")
        self.vae = self.vae_src.vae.to(ctx.proc.device).eval().requires_grad_(False)
        self.model = DiT(model_cfg)
        if cfg.init_dit:
            source_recipe = init_dit_from(self.model, cfg.init_dit, model_cfg, self.vae_src.provenance,
                                          cfg.init_dit_other_vae)
            if cfg.init_dit_other_vae:  # a warm start: what it learned on other latents is not this model's past
                log.info(f"the DiT starts from {cfg.init_dit} (trained on another VAE's latents)")
            else:  # the stages before this one are the continued DiT's own (its VAE's, then its diffusion runs)
                self.recipe = source_recipe
                stages = ", ".join(f"{r['stage']} {r['steps']:,} steps" for r in self.recipe)
                log.info(f"the DiT continues from {cfg.init_dit} ({stages})")
        self.trainable = list(self.model.parameters())
        self.param_groups = [{"params": self.trainable, "lr_scale": 1.0}]
        d = model_cfg.diffusion
        self.schedule = DiffusionSchedule(d.num_timesteps, d.beta_start, d.beta_end, d.schedule)
        self.scheduler = make_training_scheduler(cfg.scheduler, self.num_frames, d.num_timesteps,
                                                 clean_prefix_p=cfg.clean_prefix_p)
        log.info(f"timestep compositions: {self.scheduler.name} (clean_prefix_p {cfg.clean_prefix_p}); "
                 f"prediction {cfg.prediction}, attention {cfg.attention}, context noise {cfg.context_noise}")
        self.model.to(ctx.proc.device).train()

    def prepare_data(self, dataset, run_dir: Path):
        """Fix the latents the DiT learns: the VAE's latent scale (measured here if its run never did), the
        per-channel normalisation (latent_norm = channel), and with latent_cache the encoded dataset."""
        cfg, proc, log = self.cfg, self.ctx.proc, self.ctx.log
        vae, provenance = self.vae, self.vae_src.provenance
        if not provenance.latent_scale_measured:
            scale = measure_latent_scale(vae, dataset, cfg.latent_scale_samples, cfg.batch_size, proc.device,
                                         cfg.seed)
            vae.latent_scale.fill_(scale)
            provenance.latent_scale, provenance.latent_scale_measured_by = scale, "diffusion run"
            log.info(f"the VAE's latent scale was never measured (its run did not finish); measured {scale:.4f} "
                     f"on this data")
        if cfg.latent_norm == "channel":
            if vae.region_in is None:
                raise ConfigError("latent_norm=channel needs a VAE with local latents (the default preset)")
            channel = normalize_latent_channels(vae, dataset, cfg, proc.device)
            provenance.latent_scale, provenance.latent_channel_scale = 1.0, channel
            log.info(f"latent channels scaled to unit std (factors {min(channel):.3f} .. {max(channel):.3f})")
        log.info(f"VAE: {provenance.path} (latent scale {float(vae.latent_scale):.4f})")
        if not cfg.latent_cache:
            return dataset
        from trainer.latents import LatentDataset, cached_latents

        key = {"vae": provenance.digest, "latent_scale": float(vae.latent_scale), "data": cfg.data,
               "num_frames": self.num_frames, "items": len(dataset), "seed": cfg.seed, "flip": cfg.flip,
               "num_items": cfg.num_items, "frame_stride": cfg.frame_stride}
        if provenance.latent_channel_scale is not None:
            key["latent_channel_scale"] = provenance.latent_channel_scale
        args = (run_dir / "latents.safetensors", key, vae, dataset, cfg.batch_size, proc.device, cfg.num_workers,
                proc.autocast)
        latents = cached_latents(*args, log.info) if proc.is_main else None
        if proc.ddp:
            dist.barrier()  # rank 0 has encoded (or read) them; the others read its file
            if not proc.is_main:
                latents = cached_latents(*args, lambda _: None)
        return LatentDataset(latents)

    def micro_step(self, x: torch.Tensor) -> float:
        cfg, proc, gen = self.cfg, self.ctx.proc, self.ctx.gen
        if cfg.latent_cache:
            z0 = x.float()  # already latents
        else:
            with torch.no_grad(), proc.autocast():
                z0 = self.vae.encode(x).float()
        gb = x.shape[0] * proc.world  # draws for the global batch, this rank's slice
        t = self.scheduler.sample(gb, generator=gen)[proc.rank::proc.world].to(proc.device)
        noise = torch.randn((gb, *z0.shape[1:]), generator=gen)[proc.rank::proc.world].to(proc.device)
        seen = context_levels(t, cfg.context_noise, gen)
        with proc.autocast():
            loss, _ = diffusion_loss(self.net, self.schedule, z0, t, noise, cfg.prediction, seen)
        (loss / cfg.grad_accum).backward()
        return loss.item()

    def recipe_entry(self, step: int) -> dict:
        cfg = self.cfg
        entry = {**super().recipe_entry(step), "scheduler": cfg.scheduler, "clean_prefix_p": cfg.clean_prefix_p,
                 "prediction": cfg.prediction, "attention": cfg.attention, "context_noise": cfg.context_noise}
        if cfg.init_dit:
            ref = cfg.init_dit  # a reference (hf:, https://) is kept as written, a path made absolute
            entry.update(init_dit=ref if is_reference(ref) else str(Path(ref).resolve()))
            if cfg.init_dit_other_vae:
                entry.update(init_dit_other_vae=True)
        return entry

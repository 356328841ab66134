"""ardiff-train's loop: any of the three stages (trainer.stages) in one straight loop.

Read `train()` top to bottom: set-up (process, run dir, seeds, the stage and its models, data, optimiser,
resume), then the loop (micro-steps with gradient accumulation, one collective, clip, AdamW step, EMA,
logging, checkpoints), then the end of the run (the stage's finish, the final checkpoint). Where models
come from is trainer.sources; what a checkpoint holds and how it is written, trainer.state.

Run directory:
    config.json                       the resolved training config and model config
    metrics.jsonl                     one JSON line per `log_every` steps
    loss.png                          the loss curve (PIL)
    checkpoints/step-00000100/        state.safetensors (weights, EMA, optimiser tensors, RNG tensors)
                                      state.json (step, data position, RNG, optimiser index, configs)
    checkpoints/latest.json           pointer to the newest complete checkpoint (written last, atomically)
    trainer.lock                      while a trainer runs: its pid and host (one run dir, one trainer)

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
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from engine.errors import ArdiffError
from engine.models.presets import ModelConfig
from engine.threads import describe_current
from trainer.config import TrainConfig
from trainer.ema import EMA
from trainer.loader import Batches, build_dataset
from trainer.lock import RunDirLock, claim_run_dir
from trainer.metrics import Log, Throughput, progress_bar
from trainer.provenance import DataRecord
from trainer.runtime import Process, StopRequest, init_process, seed_everything
from trainer.sources import model_config
from trainer.stages import RunContext, Stage, make_stage
from trainer.state import (
    Lineage,
    Position,
    TrainingState,
    latest_checkpoint,
    make_run_dir,
    open_run_dir,
    write_run_config,
)


class TrainingError(ArdiffError):
    """Training cannot go on: diverged (NaN), a checkpoint could not be written, a run dir mismatch."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    stopped: bool  # True: interrupted (signal or on_step) before max_steps; a checkpoint was saved
    last_checkpoint: Path | None
    records: list[dict[str, Any]]


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warm-up, then constant or cosine to min_lr."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def train(cfg: TrainConfig, run_dir: str | os.PathLike, resume: bool = False,
          on_step: Callable[[int, dict], bool | None] | None = None) -> TrainResult:
    """Run one stage. `on_step(step, record)` is called after every optimizer step on every rank;
    returning True requests a stop (as Ctrl-C does: the state is saved and train returns)."""
    run_dir = Path(run_dir)
    proc = init_process(cfg.device, cfg.precision)
    claim = claim_run_dir(run_dir, proc.rank, proc.world, proc.device)  # one run dir, one trainer
    try:
        return _train(cfg, run_dir, resume, on_step, proc, claim)
    finally:
        claim.release()


def _train(cfg: TrainConfig, run_dir: Path, resume: bool, on_step: Callable[[int, dict], bool | None] | None,
           proc: Process, claim: RunDirLock) -> TrainResult:
    """`train()` once the process is set up and the run dir is this trainer's."""
    # ---- run directory: fresh or resumed
    saved = open_run_dir(run_dir, cfg, resume)
    log = Log(run_dir, proc.rank, cfg.tensorboard)
    if proc.is_main:
        make_run_dir(run_dir)

    # ---- seeds, the stage and its models
    gen = seed_everything(cfg.seed)
    log.info(f"stage {cfg.stage}, preset {cfg.preset}, {proc.world} process(es) on {proc.device}, "
             f"{proc.precision_note}, {describe_current()}")
    model_cfg = model_config(cfg)
    stage = make_stage(RunContext(cfg, model_cfg, proc, gen, log))
    log.info(f"training {sum(p.numel() for p in stage.trainable) / 1e6:.3f}M parameters "
             f"({type(stage.model).__name__}); EMA decay {cfg.ema_decay} "
             f"({'LDM warm-up rule' if cfg.ema_warmup else 'DiT rule: constant'})")

    # ---- data, then the optimiser and EMA of the (possibly data-initialised) weights
    dataset = build_dataset(cfg, stage.num_frames, model_cfg.vae.image_size, quiet=not proc.is_main)
    data = DataRecord.of(cfg.data, stage.num_frames, dataset)
    log.info(f"data: {data.report}")
    batches = Batches(dataset, cfg, proc.rank, proc.world, pin_memory=proc.device.type == "cuda")
    if saved is None:
        stage.init_from_data(dataset)
    opt = torch.optim.AdamW(stage.param_groups, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                            weight_decay=cfg.weight_decay)
    ema = EMA(stage.model, cfg.ema_decay, cfg.ema_warmup).to(proc.device)
    state = TrainingState(stage.model, ema, opt, gen, stage.disc, stage.d_opt)

    # ---- resume: weights, optimisers, RNGs, data position
    step, resumed_from = 0, None
    if saved is not None:
        at = state.restore(saved, proc.device)
        step, resumed_from, saved = at.step, saved.path, None  # drop the tensors read
        batches.seek(at.epoch, at.batch)
        log.load_previous(step)
        log.info(f"resumed from {resumed_from} at step {step} (epoch {at.epoch}, batch {at.batch})")
    stage.wrap()
    batches.dataset = stage.prepare_data(dataset, run_dir)
    lineage = Lineage(stage.vae_src.provenance if stage.vae_src is not None else None, data, stage.recipe)
    checkpoints = Checkpoints(run_dir, cfg, model_cfg, proc, state, stage, lineage, log)
    claim.keep()  # the run is under way: its dir stays from here on
    if proc.is_main:
        write_run_config(run_dir, cfg, model_cfg, proc.world)
    if resumed_from is not None and step >= cfg.max_steps:
        log.info(f"{run_dir} already finished {step} steps (max_steps {cfg.max_steps}); nothing to do "
                 f"(raise max_steps to train on)")
        log.close()
        return TrainResult(run_dir=run_dir, step=step, stopped=False, last_checkpoint=resumed_from,
                           records=list(log.records))

    # ---- the loop
    last_ckpt, stopped = resumed_from, False
    meter = Throughput(cfg.batch_size * proc.world * cfg.grad_accum)
    progress, task = progress_bar(log, cfg.stage, cfg.max_steps, step, proc.is_main and cfg.progress)
    with StopRequest() as stop, progress:
        while step < cfg.max_steps:
            lr = lr_at(cfg, step)
            for g in opt.param_groups:
                g["lr"] = lr * g["lr_scale"]
            stage.begin_step(step)
            loss_sum, wait = 0.0, 0.0
            for micro in range(cfg.grad_accum):
                t0 = time.perf_counter()
                x = next(batches).to(proc.device, non_blocking=True)
                wait += time.perf_counter() - t0
                syncing = not proc.ddp or micro == cfg.grad_accum - 1  # DDP averages gradients on the last
                with contextlib.nullcontext() if syncing else stage.accumulating():
                    loss_sum += stage.micro_step(x)
            # one collective per step: global mean loss, divergence and stop requests of all ranks
            flags = torch.tensor([loss_sum / cfg.grad_accum, float(not math.isfinite(loss_sum)),
                                  float(stop.signal is not None)], dtype=torch.float64, device=proc.device)
            if proc.ddp:
                dist.all_reduce(flags)
                flags[0] /= proc.world
            if flags[1] > 0:
                ck = latest_checkpoint(run_dir)
                raise TrainingError(
                    f"the loss became {loss_sum / cfg.grad_accum} at step {step + 1} (lr {lr:.3g}); stopped "
                    f"without saving. Last good checkpoint: {ck if ck else 'none (no checkpoint was written yet)'}. "
                    f"Try a lower lr, a warm-up, grad_clip, or precision=fp32")
            grad_norm = clip_gradients(stage.trainable, cfg.grad_clip)
            if not math.isfinite(grad_norm):
                raise TrainingError(f"the gradient norm became {grad_norm} at step {step + 1}; stopped without "
                                    f"saving. Last good checkpoint: {latest_checkpoint(run_dir)}")
            opt.step()
            stage.model.zero_grad(set_to_none=True)
            stage.step_extras(lr)
            ema.update(stage.model)
            step += 1
            meter.step(wait)

            record = {"step": step, "loss": float(flags[0]), "lr": lr, "grad_norm": grad_norm, **stage.record()}
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                record.update(meter.take(), epoch=batches.epoch)
                log.metrics(record)
                progress.update(task, sps=record["steps_per_s"])
            progress.update(task, completed=step, loss=record["loss"])
            if on_step is not None and on_step(step, record):
                stop.signal = stop.signal or -1
            want_stop = bool(flags[2] > 0) or (stop.signal is not None and not proc.ddp)
            if want_stop and step < cfg.max_steps:
                last_ckpt, stopped = checkpoints.save(step, batches), True
                log.info(f"stopped by {stop.why()} after step {step}; saved {last_ckpt}; continue with --resume")
                break
            if step % cfg.checkpoint_every == 0 and step < cfg.max_steps:
                last_ckpt = checkpoints.save(step, batches)

    # ---- end of the run
    if not stopped:
        stage.finish(state, dataset)
        last_ckpt = checkpoints.save(step, batches)
        log.info(f"done: {step} steps; checkpoint {last_ckpt}")
    log.close()
    return TrainResult(run_dir=run_dir, step=step, stopped=stopped, last_checkpoint=last_ckpt,
                       records=list(log.records))


def clip_gradients(params: list[torch.nn.Parameter], max_norm: float) -> float:
    """The global gradient norm of `params`, clipped to `max_norm` first when it is > 0."""
    if max_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    return float(torch.linalg.vector_norm(
        torch.stack([p.grad.detach().float().norm() for p in params if p.grad is not None])))


class Checkpoints:
    """The loop's one way to save: rank 0 writes the whole training state (trainer.state), every rank learns
    whether that worked, and a failed write is one TrainingError that names the checkpoint still intact."""

    def __init__(self, run_dir: Path, cfg: TrainConfig, model_cfg: ModelConfig, proc: Process,
                 state: TrainingState, stage: Stage, lineage: Lineage, log: Log) -> None:
        self.run_dir, self.cfg, self.model_cfg, self.proc = run_dir, cfg, model_cfg, proc
        self.state, self.stage, self.lineage, self.log = state, stage, lineage, log

    def save(self, step: int, batches: Batches) -> Path | None:
        """The checkpoint of `step` at the data position of `batches`; its path (on rank 0)."""
        proc, cfg = self.proc, self.cfg
        path, failure = None, None
        if proc.is_main:
            try:
                path = self.state.save(self.run_dir, Position(step, batches.epoch, batches.batch), cfg,
                                       self.model_cfg, proc.world, self.lineage, self.stage.recipe_entry(step),
                                       self.stage.latent_scale(), lr_at(cfg, max(step - 1, 0)))
                self.log.plot()
            except Exception as err:  # noqa: BLE001 - report as one line; the previous checkpoint stays
                prev = latest_checkpoint(self.run_dir)
                failure = TrainingError(f"could not save the checkpoint of step {step}: "
                                        f"{type(err).__name__}: {err}; the previous checkpoint is intact"
                                        f"{f' ({prev})' if prev else ''}")
                failure.__cause__ = err
        if proc.ddp:  # every rank learns whether rank 0's write worked (and nobody waits for a failed rank 0)
            ok = torch.tensor([0.0 if failure is not None else 1.0], device=proc.device)
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
            if failure is None and ok.item() < 1:
                raise TrainingError(f"rank 0 could not save the checkpoint of step {step}")
        if failure is not None:
            raise failure
        return path or (latest_checkpoint(self.run_dir) if proc.is_main else None)

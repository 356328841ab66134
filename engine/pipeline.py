"""Continuation and generation as a stream of events, the one interface every surface uses.

    pipe = load_pipeline()                      # the embedded default model
    for event in pipe.run(RunRequest(new_frames=32, s=5), frames):   # or pipe.continue_video(frames, ...)
        ...  # Planned(plan), then FrameReady(index, image) | Progress(row, total_rows, levels, ...), Done(video, ...)

With `adapt_steps` > 0 the run first fine-tunes the DiT on the clip (engine.adapt): Adapting per step, Adapted.

A frame is decoded (incrementally, with the causal VAE decoder) and yielded the row it turns clean.
"""

from __future__ import annotations

import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Union

import numpy as np
import torch

from engine.adapt import ADAPT_CLIP_FRAMES, Adaptation, ClipAdapter
from engine.checkpoint import Checkpoint, load_checkpoint, sampling_defaults, save_checkpoint
from engine.device import describe_precision, resolve_device
from engine.diffusion import DiffusionSchedule
from engine.errors import RunError
from engine.frames import frames_to_tensor, tensor_to_frames
from engine.limits import check_level_matrix, check_sampling
from engine.run import Plan, RunRequest, check_precision, plan_rows, scheduler_for
from engine.sampling import HISTORY_GUIDANCE_UNSUPPORTED, SamplerStats, make_sampler, supports_history_guidance


@dataclass
class Adapting:
    """A fine-tuning step of "adapt to this clip" finished (only runs with `adapt_steps` > 0, before Planned)."""

    step: int  # steps done, 1-based
    total: int
    loss: float
    elapsed: float  # seconds since adapting started
    seconds_left: float | None


@dataclass
class Adapted:
    """Adapting ended: whether the adapted DiT is used for this run, and why, in one line for people."""

    kept: bool
    message: str
    held_out_before: float  # the DiT as it came: its denoising loss on the clip's held-out frames
    held_out_after: float  # the adapted DiT's
    psnr_before: float | None = None  # dB of each DiT's continuation of the held-out frames (None: not run)
    psnr_after: float | None = None


@dataclass
class Planned:
    """The first event of every run: the plan (engine.run.Plan) the rows that follow carry out."""

    plan: Plan


@dataclass
class FrameReady:
    """A finished frame: `index` into the output video (context frames come first), uint8 [H, W, 3]."""

    index: int
    image: np.ndarray


@dataclass
class Progress:
    """A row (network call) finished. `levels` are the DDIM levels of every frame after it (0 = clean)."""

    row: int  # rows done, 1-based
    total_rows: int
    levels: np.ndarray
    frames_done: int  # new frames finished so far
    elapsed: float  # seconds since sampling started


@dataclass
class Done:
    """The whole video, context frames first: uint8 [num_context + new, H, W, 3]."""

    video: np.ndarray
    num_context: int
    stats: SamplerStats
    elapsed: float
    cancelled: bool = False


Event = Union[Adapting, Adapted, Planned, FrameReady, Progress, Done]


@dataclass
class Pipeline:
    """A loaded model pair on a device, ready to continue or generate videos."""

    checkpoint: Checkpoint
    device: torch.device
    autocast_dtype: torch.dtype | None = None
    notes: list[str] = field(default_factory=list)
    backend: str = "eager"  # "eager" | "compile" | "aoti" | "onnx" | "tensorrt" (engine.backends)
    export_dir: str | Path | None = None

    def __post_init__(self) -> None:
        cfg = self.checkpoint.config
        d = cfg.diffusion
        self.config = cfg
        self.vae, self.dit = self.checkpoint.vae.to(self.device).eval(), self.checkpoint.dit.to(self.device).eval()
        self.exported = None
        self.adaptation: Adaptation | None = None  # the last "adapt to this clip" (save_adapted writes it)
        if self.backend == "compile":
            from engine.backends.compiled import CompiledDiT

            self.dit = CompiledDiT(self.dit)
            with self.autocast():
                self.dit.warm_up()  # compile before the first event; a machine that cannot compile fails here
        elif self.backend != "eager":
            from engine.backends.export import load_exported

            self.exported = load_exported(self.export_dir, self.checkpoint, self.backend, self.device)
            self.dit, self.vae = self.exported.dit, self.exported.vae  # stand-ins with the same interface
        self.schedule = DiffusionSchedule(d.num_timesteps, d.beta_start, d.beta_end, d.schedule)
        # what this model samples with unless a call says otherwise (its checkpoint's own; 1.0 = off)
        self.history_guidance = sampling_defaults(self.checkpoint.meta)["history_guidance"]
        self.history_guidance_supported = supports_history_guidance(d.prediction)  # the apps offer it only then
        self.resolution = cfg.vae.image_size
        self.window = cfg.window
        if self.exported is not None and self.exported.manifest["max_frames"] < self.window:
            self.window = self.exported.manifest["max_frames"]
            self.notes.append(f"sampling window limited to {self.window} frames (the export's --max-frames; "
                              f"the model's window is {cfg.window})")

    def describe(self) -> str:
        """One line saying what runs where, e.g. 'default model (64x64, window 16) on cpu, float32'."""
        precision = describe_precision(self.device, self.autocast_dtype)
        source = self.checkpoint.path.name if self.checkpoint.path else "in-memory model"
        backend = "" if self.exported is None else f"; sampling with {self.exported.describe()}"
        if self.backend == "compile":
            backend = " (one-frame DiT calls and window refreshes compiled by AOTInductor, the rest eager)"
        guidance = f", history guidance {self.history_guidance:g}" if self.history_guidance != 1.0 else ""
        return (f"{self.config.name} model {source} ({self.resolution}x{self.resolution}, window {self.window}"
                f"{guidance}) on {self.device}, {precision}, backend {self.backend}{backend}")

    def autocast(self):
        """The autocast context this pipeline's models run under (a no-op for float32)."""
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def fit_note(self, frames: np.ndarray) -> str | None:
        """What resizing the pipeline will apply to these frames, or None when they already fit."""
        from engine.video_io import describe_fit  # PyAV and PIL load on first use, not with the engine

        report = describe_fit(frames.shape[1:3], self.resolution)
        return str(report) if report.changed else None

    @torch.no_grad()
    def encode_frames(self, frames: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
        """uint8 [N, H, W, 3] at any size -> (fitted uint8 frames, latents [1, N, L, D])."""
        from engine.video_io import fit_frames

        frames = fit_frames(np.asarray(frames), self.resolution)
        x = frames_to_tensor(frames).to(self.device)[None]
        with self.autocast():
            latents = self.vae.encode(x)
        return frames, latents.float()

    def check(self, request: RunRequest, continuing: bool = True) -> None:
        """The checks of `request` that need this model (RunError naming the field): steps <= T, the class
        label, the sampler the backend runs, and for a continuation a context of 1..window - 1 frames."""
        if request.steps > self.schedule.T:
            raise RunError("steps", f"steps must be <= {self.schedule.T}, got {request.steps}")
        if self.exported is not None and request.sampler != "cached":
            from engine.backends.export import ExportError

            raise ExportError(f"the {self.backend} graphs run the cached sampler only; sampler={request.sampler!r} "
                              f"needs backend='eager'")
        if request.class_label is not None and not request.class_label < self.dit.num_classes:
            raise RunError("class_label", f"class_label must be in 0..{self.dit.num_classes - 1} for this model, "
                           f"got {request.class_label}" if self.dit.num_classes else "this model is unconditional")
        if request.history_guidance not in (None, 1.0) and not self.history_guidance_supported:
            raise RunError("history_guidance", HISTORY_GUIDANCE_UNSUPPORTED.format(
                prediction=self.config.diffusion.prediction))
        if continuing and not 1 <= request.context <= self.window - 1:
            raise RunError("context", f"context must be 1..{self.window - 1} frames (the model's window is "
                           f"{self.window} and at least one new frame must fit), got {request.context}")

    def plan(self, request: RunRequest, frames: np.ndarray | None = None) -> Plan:
        """Plan `request` on this model: the clip's last `request.context` frames fitted (None: generate from
        nothing), the rows the sampler will run, their work. Every check runs here, so a run fails at the
        call, never mid-stream."""
        self.check(request, continuing=frames is not None)
        history_guidance = self.history_guidance if request.history_guidance is None else request.history_guidance
        if frames is None:
            context, note = np.zeros((0, self.resolution, self.resolution, 3), np.uint8), None
        else:
            frames = np.asarray(frames)
            if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
                raise ValueError(f"frames must be uint8 [N, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
            if len(frames) < request.context:
                raise RunError("context", f"the clip has only {len(frames)} frame(s), fewer than context "
                               f"{request.context}; set context to {len(frames)} or less, or pick a longer clip")
            frames = frames[len(frames) - request.context:]
            from engine.video_io import fit_frames  # PyAV and PIL load on first use, not with the engine

            context, note = fit_frames(frames, self.resolution), self.fit_note(frames)
        # memory and time refused before the plan's level matrix and the run's noise are allocated
        L, D = self.config.vae.num_latent_tokens, self.config.vae.latent_dim
        check_sampling(len(context), request.new_frames, request.steps, self.resolution, L, D,
                       sum(p.numel() for p in self.checkpoint.dit.parameters()), self.device.type)
        check_level_matrix(request.new_frames, len(context), request.steps, self.window)
        guided = request.guidance_scale != 1.0 and request.class_label is not None
        levels, work = plan_rows(request, self.window, len(context), guided=guided,
                                 history_guidance=history_guidance)
        return Plan(request, context, note, levels, self.window, history_guidance, work)

    def run(self, request: RunRequest, frames: np.ndarray | None = None,
            cancel: threading.Event | None = None, adapt_clip: np.ndarray | None = None) -> Iterator[Event]:
        """Continue `frames` (uint8 [N, H, W, 3], any size; None: generate from nothing) as `request` asks.

        With `request.adapt_steps` > 0, Adapting per fine-tuning step and one Adapted come first; adapting learns
        from `adapt_clip` (engine.adapt.read_adapt_clip: more of the clip than a context needs), else from
        `frames`. Then
        Planned(plan), then FrameReady / Progress per row, then Done. `cancel` stops within one step or row."""
        plan = self.plan(request, frames)
        adapter = self._adapter(request, frames if adapt_clip is None else adapt_clip) if request.adapt_steps else None
        sampler = make_sampler(request.sampler, self.dit, self.schedule,
                               scheduler_for(request, self.window, plan.num_context),
                               prediction=self.config.diffusion.prediction, guidance_scale=request.guidance_scale,
                               clip_x0=request.clip_x0, history_guidance=plan.history_guidance,
                               context_noise=self.config.diffusion.context_noise)
        label = None if request.class_label is None else torch.tensor([request.class_label], device=self.device)
        if plan.num_context:
            latents = self.encode_frames(plan.context)[1]
        else:
            L, D = self.config.vae.num_latent_tokens, self.config.vae.latent_dim
            latents = torch.zeros(1, 0, L, D, device=self.device)
        return self._stream(plan, latents, sampler, label, cancel, adapter)

    def continue_video(self, frames: np.ndarray, num_new_frames: int = RunRequest.new_frames,
                       s: int = RunRequest.s, steps: int = RunRequest.steps, seed: int = RunRequest.seed,
                       cancel: threading.Event | None = None, sampler: str = RunRequest.sampler,
                       class_label: int | None = None, guidance_scale: float = RunRequest.guidance_scale,
                       min_context: int = RunRequest.min_context, clip_x0: float | None = None,
                       history_guidance: float | None = None) -> Iterator[Event]:
        """Continue a whole clip (uint8 [N, H, W, 3], N <= window - 1) by `num_new_frames` frames: `run` with a
        request whose context is the clip."""
        request = RunRequest(new_frames=num_new_frames, s=s, steps=steps, seed=seed, context=max(1, len(frames)),
                             min_context=min_context, history_guidance=history_guidance,
                             guidance_scale=guidance_scale, class_label=class_label, sampler=sampler,
                             clip_x0=clip_x0)
        return self.run(request, frames, cancel)

    def generate(self, num_frames: int = RunRequest.new_frames, s: int = RunRequest.s, steps: int = RunRequest.steps,
                 seed: int = RunRequest.seed, class_label: int | None = None, cancel: threading.Event | None = None,
                 sampler: str = RunRequest.sampler, guidance_scale: float = RunRequest.guidance_scale,
                 min_context: int = RunRequest.min_context, clip_x0: float | None = None,
                 history_guidance: float | None = None) -> Iterator[Event]:
        """Generate a video from nothing; the same events as `continue_video`."""
        request = RunRequest(new_frames=num_frames, s=s, steps=steps, seed=seed, min_context=min_context,
                             history_guidance=history_guidance, guidance_scale=guidance_scale,
                             class_label=class_label, sampler=sampler, clip_x0=clip_x0)
        return self.run(request, None, cancel)

    def _adapter(self, request: RunRequest, frames: np.ndarray | None) -> ClipAdapter:
        """Everything "adapt to this clip" needs, checked before the run starts (RunError naming adapt_steps)."""
        if frames is None:
            raise RunError("adapt_steps", "adapting needs a clip to learn from; a video from nothing has none")
        if self.exported is not None:
            raise RunError("adapt_steps", f"adapting trains the DiT, which the {self.backend} graphs cannot; use "
                           f"backend eager or compile")
        fitted, clip = self.encode_frames(np.asarray(frames)[-ADAPT_CLIP_FRAMES:])
        d = self.config.diffusion
        return ClipAdapter(self.checkpoint.dit, self.schedule, clip, self.window, d.prediction, d.context_noise,
                           request.seed, autocast=self.autocast, frames=fitted)

    @torch.no_grad()
    def _held_out_psnr(self, dit: torch.nn.Module, adapter: ClipAdapter, request: RunRequest,
                       history_guidance: float) -> float:
        """Mean PSNR (dB) of `dit`'s continuation of the clip's held-out frames from the context frames before
        them, decoded and compared with the real ones: the run's own settings and seed, so the check measures
        what the person would see."""
        from engine.metrics.image import mean_psnr_db, psnr

        split = adapter.split
        num_context = min(request.context, split.train)
        context = adapter.latents[:, split.train - num_context: split.train].to(self.device)
        sampler = make_sampler("cached", dit, self.schedule, scheduler_for(request, self.window, num_context),
                               prediction=self.config.diffusion.prediction, history_guidance=history_guidance,
                               clip_x0=request.clip_x0, context_noise=self.config.diffusion.context_noise)
        L, D = self.config.vae.num_latent_tokens, self.config.vae.latent_dim
        noise = torch.randn(1, split.held_out, L, D, generator=torch.Generator().manual_seed(request.seed))
        with self.autocast():
            for _ in sampler.denoise(context, noise.to(self.device)):
                pass
            decoder = self.vae.start_decode()
            for i in range(num_context):
                self.vae.decode_next(context[:, i], decoder)
            made = np.stack([self._decode(sampler.latents[:, num_context + i], decoder)
                             for i in range(split.held_out)])
        real = adapter.frames[split.train: split.train + split.held_out]
        return mean_psnr_db(psnr(real, made))

    def _adapt(self, adapter: ClipAdapter, plan: Plan, sampler, cancel) -> Iterator[Event]:
        """Fine-tune on the clip, then sample with the adapted DiT only if it passed the held-out check."""
        steps, request = plan.request.adapt_steps, plan.request
        before = adapter.held_out_loss(adapter.source)
        done = 0
        for step in adapter.train(steps, cancel):
            done = step.step
            yield Adapting(step.step, step.total, step.loss, step.elapsed,
                           step.elapsed / step.step * (step.total - step.step))
        if cancel is not None and cancel.is_set():
            yield Adapted(False, f"adapting cancelled after {done} of {steps} steps", before, before)
            return
        result = adapter.finish(done, before)
        result.psnr_before = self._held_out_psnr(adapter.source, adapter, request, plan.history_guidance)
        result.psnr_after = self._held_out_psnr(result.dit, adapter, request, plan.history_guidance)
        self.adaptation = result
        yield Adapted(result.kept, result.message, result.before, result.after, result.psnr_before,
                      result.psnr_after)
        if result.kept:
            sampler.dit = self._sampling_dit(result.dit)

    def _sampling_dit(self, dit: torch.nn.Module) -> torch.nn.Module:
        if self.backend != "compile":
            return dit
        from engine.backends.compiled import CompiledDiT

        compiled = CompiledDiT(dit)
        with self.autocast():
            compiled.warm_up()
        return compiled

    def save_adapted(self, path: str | Path) -> Path:
        """Write the last adaptation (this model's VAE with the adapted DiT) as a checkpoint; its recipe gains an
        "adapt" stage saying what was learnt from and whether the check passed."""
        result = self.adaptation
        if result is None:
            raise RunError("adapt_steps", "nothing has been adapted yet: run with adapt steps > 0 first")
        meta = dict(self.checkpoint.meta)
        recipe = meta.get("recipe", [])
        meta["recipe"] = (recipe if isinstance(recipe, list) else [recipe]) + [{
            "stage": "adapt", "steps": result.steps, "frames_learnt": result.split.train,
            "frames_held_out": result.split.held_out, "held_out_loss_before": result.before,
            "held_out_loss_after": result.after, "held_out_psnr_before": result.psnr_before,
            "held_out_psnr_after": result.psnr_after, "kept": result.kept}]
        return save_checkpoint(path, self.checkpoint.vae, result.dit, self.config, meta)

    @torch.no_grad()
    def _stream(self, plan: Plan, context: torch.Tensor, sampler, label, cancel,
                adapter: ClipAdapter | None = None) -> Iterator[Event]:
        if adapter is not None:
            yield from self._adapt(adapter, plan, sampler, cancel)
        yield Planned(plan)
        start = time.perf_counter()
        num_context, num_new = plan.num_context, plan.num_new
        L, D = self.config.vae.num_latent_tokens, self.config.vae.latent_dim
        generator = torch.Generator().manual_seed(plan.request.seed)
        noise = torch.randn(1, num_new, L, D, generator=generator).to(self.device)
        video = list(plan.context)
        decoder = self.vae.start_decode()
        with self.autocast():
            for i in range(num_context):  # the decoder's temporal memory starts from the real clip
                self.vae.decode_next(context[:, i], decoder)
        rows = sampler.denoise(context, noise, label, cancel)
        while True:
            # the row's DiT call and the decode at the pipeline's precision; the caller's code between events
            # runs outside it (a generator suspended inside `with` would leave autocast on for the caller)
            with self.autocast():
                step = next(rows, None)
                if step is None:
                    break
                images = [self._decode(step.latents[:, i], decoder) for i in range(len(step.clean_frames))]
            for index, image in zip(step.clean_frames, images):
                video.append(image)
                yield FrameReady(index, image)
            yield Progress(step.index + 1, step.total_rows, step.row.level_to.copy(), len(video) - num_context,
                           time.perf_counter() - start)
        cancelled = len(video) - num_context < num_new
        out = np.stack(video) if video else np.zeros((0, self.resolution, self.resolution, 3), np.uint8)
        yield Done(out, num_context, sampler.stats, time.perf_counter() - start, cancelled)

    def _decode(self, latent: torch.Tensor, state) -> np.ndarray:
        return tensor_to_frames(self.vae.decode_next(latent, state)[0])


def load_pipeline(checkpoint: str | Path | Checkpoint | None = None, device: str = "auto",
                  backend: str | None = "eager", export_dir: str | Path | None = None,
                  precision: str = "auto") -> Pipeline:
    """A pipeline for a checkpoint file (None: the embedded default in assets/) on "auto" | "cpu" | "cuda".

    `precision` "auto" | "fp32" | "bf16" (see `engine.device.resolve_device`); the exported backends run at the
    precision they were exported with.

    `backend` "compile" compiles the cached sampler's one-frame DiT call with AOTInductor (seconds, at load;
    engine.backends.compiled); "aoti" | "onnx" | "tensorrt" sample with the graphs `ardiff-export` wrote to
    `export_dir` (made from this same checkpoint), on the device they were exported for; None: the backend the
    export in `export_dir` was made for.
    """
    check_precision(precision)
    if backend is None:  # the backend the export in `export_dir` was made for; eager without one
        from engine.backends.export import read_manifest

        backend = read_manifest(export_dir)["backend"] if export_dir is not None else "eager"
    if backend in ("eager", "compile"):
        if export_dir is not None:
            raise ValueError(f"export_dir is for the exported backends (aoti, onnx, tensorrt), not {backend!r}")
        dev, dtype = resolve_device(device, precision)
    else:
        from engine.backends.export import check_backend_args

        manifest = check_backend_args(backend, export_dir, device)
        if precision not in ("auto", manifest["dtype"]):
            raise ValueError(f"the {backend} graphs in {export_dir} were exported in {manifest['dtype']}; "
                             f"precision {precision!r} cannot change that (re-export, or use precision 'auto')")
        dev = resolve_device(manifest["device"])[0]
        # The eager parts (encoder, conditioning table) run at the exported graphs' precision.
        dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[manifest["dtype"]]
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint, device=dev)
    return Pipeline(ckpt, dev, dtype, backend=backend, export_dir=export_dir)

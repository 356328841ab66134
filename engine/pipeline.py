"""Continuation and generation as a stream of events, the one interface every surface uses.

    pipe = load_pipeline()                      # the embedded default model
    for event in pipe.continue_video(frames, num_new_frames=32, s=5):
        ...  # FrameReady(index, image) | Progress(row, total_rows, levels, ...) | Done(video, ...)

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

from engine.checkpoint import Checkpoint, load_checkpoint, sampling_defaults
from engine.diffusion import DiffusionSchedule
from engine.precision import check_precision
from engine.schedulers.ad import ADScheduler
from engine.sampling import SamplerStats, make_sampler


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


Event = Union[FrameReady, Progress, Done]


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bfloat16 matrix units (AMX or AVX512-BF16); without them bf16 is emulated
    and far slower than float32."""
    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


def parse_device(device: str | torch.device) -> torch.device:
    """"cpu" | "cuda[:i]" -> torch.device; anything else is a ValueError naming what is allowed."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    return dev


def resolve_device(device: str = "auto", precision: str = "auto") -> tuple[torch.device, torch.dtype | None]:
    """("auto" | "cpu" | "cuda[:i]", "auto" | "fp32" | "bf16") -> (device, autocast dtype or None for float32).

    "auto" precision is bfloat16 autocast on CUDA and on CPUs with native bfloat16 (AMX or AVX512-BF16), float32
    elsewhere; "fp32" makes results the same on every CPU, whatever its matrix units.
    """
    check_precision(precision)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = parse_device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but this torch has no CUDA device; use --device cpu")
    if precision != "auto":
        return dev, None if precision == "fp32" else torch.bfloat16
    return dev, torch.bfloat16 if dev.type == "cuda" or cpu_supports_bf16() else None


@dataclass
class Pipeline:
    """A loaded model pair on a device, ready to continue or generate videos."""

    checkpoint: Checkpoint
    device: torch.device
    autocast_dtype: torch.dtype | None = None
    notes: list[str] = field(default_factory=list)
    backend: str = "eager"  # "eager" | "compile" (engine.compiled) | "aoti" | "onnx" | "tensorrt" (engine.export)
    export_dir: str | Path | None = None

    def __post_init__(self) -> None:
        cfg = self.checkpoint.config
        d = cfg.diffusion
        self.config = cfg
        self.vae, self.dit = self.checkpoint.vae.to(self.device).eval(), self.checkpoint.dit.to(self.device).eval()
        self.exported = None
        if self.backend == "compile":
            from engine.compiled import CompiledDiT

            self.dit = CompiledDiT(self.dit)
            with self._autocast():
                self.dit.warm_up()  # compile before the first event; a machine that cannot compile fails here
        elif self.backend != "eager":
            from engine.export import load_exported

            self.exported = load_exported(self.export_dir, self.checkpoint, self.backend, self.device)
            self.dit, self.vae = self.exported.dit, self.exported.vae  # stand-ins with the same interface
        self.schedule = DiffusionSchedule(d.num_timesteps, d.beta_start, d.beta_end, d.schedule)
        # what this model samples with unless a call says otherwise (its checkpoint's own; 1.0 = off)
        self.history_guidance = sampling_defaults(self.checkpoint.meta)["history_guidance"]
        self.resolution = cfg.vae.image_size
        self.window = cfg.window
        if self.exported is not None and self.exported.manifest["max_frames"] < self.window:
            self.window = self.exported.manifest["max_frames"]
            self.notes.append(f"sampling window limited to {self.window} frames (the export's --max-frames; "
                              f"the model's window is {cfg.window})")

    def describe(self) -> str:
        """One line saying what runs where, e.g. 'default model (64x64, window 16) on cpu, float32'."""
        precision = "float32" if self.autocast_dtype is None else f"{str(self.autocast_dtype)[6:]} autocast"
        why = ""
        if self.device.type == "cpu":
            native = cpu_supports_bf16()
            if self.autocast_dtype is None and not native:
                why = " (this CPU has no native bfloat16)"
            elif self.autocast_dtype is not None and not native:
                why = " (emulated on this CPU: slower than float32)"
        source = self.checkpoint.path.name if self.checkpoint.path else "in-memory model"
        backend = "" if self.exported is None else f"; sampling with {self.exported.describe()}"
        if self.backend == "compile":
            backend = " (one-frame DiT calls compiled by torch.compile, the rest eager)"
        guidance = f", history guidance {self.history_guidance:g}" if self.history_guidance != 1.0 else ""
        return (f"{self.config.name} model {source} ({self.resolution}x{self.resolution}, window {self.window}"
                f"{guidance}) on {self.device}, {precision}{why}, backend {self.backend}{backend}")

    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def fit_note(self, frames: np.ndarray) -> str | None:
        """What resizing the pipeline will apply to these frames, or None when they already fit."""
        from engine.video_io import describe_fit  # PyAV and PIL load on first use, not with the engine

        report = describe_fit(frames.shape[1:3], self.resolution)
        return str(report) if report.changed else None

    def _validate_run(self, num_new_frames: int, s: int, steps: int) -> None:
        for name, value, low in (("num_new_frames", num_new_frames, 1), ("s", s, 0), ("steps", steps, 1)):
            if not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")

    @torch.no_grad()
    def encode_frames(self, frames: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
        """uint8 [N, H, W, 3] at any size -> (fitted uint8 frames, latents [1, N, L, D])."""
        from engine.video_io import fit_frames

        frames = fit_frames(np.asarray(frames), self.resolution)
        x = torch.from_numpy(frames).to(self.device).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)[None]
        with self._autocast():
            latents = self.vae.encode(x)
        return frames, latents.float()

    def continue_video(self, frames: np.ndarray, num_new_frames: int = 32, s: int = 5, steps: int = 50,
                       seed: int = 0, cancel: threading.Event | None = None, sampler: str = "cached",
                       class_label: int | None = None, guidance_scale: float = 1.0, min_context: int = 1,
                       clip_x0: float | None = None, history_guidance: float | None = None) -> Iterator[Event]:
        """Continue a clip (uint8 [N, H, W, 3], N <= window - 1) by `num_new_frames` frames.

        `history_guidance`: None samples with the model's own (`Pipeline.history_guidance`); 1.0 is off."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 [N, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
        if not 1 <= len(frames) <= self.window - 1:
            raise ValueError(f"context must be 1..{self.window - 1} frames (the model's window is {self.window} "
                             f"and at least one new frame must fit), got {len(frames)}")
        self._validate_run(num_new_frames, s, steps)
        fitted, context = self.encode_frames(frames)
        return self._run(fitted, context, num_new_frames, s, steps, seed, cancel, sampler, class_label,
                         guidance_scale, min(min_context, len(frames)), clip_x0, history_guidance)

    def generate(self, num_frames: int = 16, s: int = 0, steps: int = 50, seed: int = 0,
                 class_label: int | None = None, cancel: threading.Event | None = None, sampler: str = "cached",
                 guidance_scale: float = 1.0, min_context: int = 1, clip_x0: float | None = None,
                 history_guidance: float | None = None) -> Iterator[Event]:
        """Generate a video from nothing; the same events as `continue_video`."""
        self._validate_run(num_frames, s, steps)
        L, D = self.config.vae.num_latent_tokens, self.config.vae.latent_dim
        empty = np.zeros((0, self.resolution, self.resolution, 3), np.uint8)
        context = torch.zeros(1, 0, L, D, device=self.device)
        return self._run(empty, context, num_frames, s, steps, seed, cancel, sampler, class_label,
                         guidance_scale, min_context, clip_x0, history_guidance)

    def _run(self, context_frames: np.ndarray, context: torch.Tensor, num_new: int, s: int, steps: int, seed: int,
             cancel: threading.Event | None, sampler_name: str, class_label: int | None, guidance_scale: float,
             min_context: int, clip_x0: float | None, history_guidance: float | None) -> Iterator[Event]:
        # Validate everything before the first event, so bad arguments fail at the call, not mid-stream.
        if steps > self.schedule.T:
            raise ValueError(f"steps must be <= {self.schedule.T}, got {steps}")
        if self.exported is not None and sampler_name != "cached":
            from engine.export import ExportError

            raise ExportError(f"the {self.backend} graphs run the cached sampler only; sampler={sampler_name!r} "
                              f"needs backend='eager'")
        scheduler = ADScheduler(steps, s, self.window, max(0, min(min_context, self.window - 1)))
        label = None
        if class_label is not None:
            if not 0 <= class_label < self.dit.num_classes:
                raise ValueError(f"class_label must be in 0..{self.dit.num_classes - 1} for this model, "
                                 f"got {class_label}" if self.dit.num_classes else "this model is unconditional")
            label = torch.tensor([class_label], device=self.device)
        sampler = make_sampler(sampler_name, self.dit, self.schedule, scheduler,
                               prediction=self.config.diffusion.prediction, guidance_scale=guidance_scale,
                               clip_x0=clip_x0,
                               history_guidance=self.history_guidance if history_guidance is None else history_guidance)
        L, D = self.config.vae.num_latent_tokens, self.config.vae.latent_dim
        noise = torch.randn(1, num_new, L, D, generator=torch.Generator().manual_seed(seed)).to(self.device)
        return self._stream(context_frames, context, noise, sampler, label, cancel)

    @torch.no_grad()
    def _stream(self, context_frames, context, noise, sampler, label, cancel) -> Iterator[Event]:
        start = time.perf_counter()
        num_context = context.shape[1]
        video = [f for f in context_frames]
        decoder = self.vae.start_decode()
        with self._autocast():
            for i in range(num_context):  # the decoder's temporal memory starts from the real clip
                self.vae.decode_next(context[:, i], decoder)
        for step in sampler.sample(context, noise, label, cancel):
            with self._autocast():
                images = [self._decode(step.latents[:, i], decoder) for i in range(len(step.clean_frames))]
            for index, image in zip(step.clean_frames, images):
                video.append(image)
                yield FrameReady(index, image)
            yield Progress(step.index + 1, step.total_rows, step.row.level_to.copy(), len(video) - num_context,
                           time.perf_counter() - start)
        cancelled = len(video) - num_context < noise.shape[1]
        out = np.stack(video) if video else np.zeros((0, self.resolution, self.resolution, 3), np.uint8)
        yield Done(out, num_context, sampler.stats, time.perf_counter() - start, cancelled)

    def _decode(self, latent: torch.Tensor, state) -> np.ndarray:
        return to_uint8_frames(self.vae.decode_next(latent, state)[0])


def to_uint8_frames(x: torch.Tensor) -> np.ndarray:
    """Decoder output [..., 3, H, W] in [-1, 1] -> uint8 [..., H, W, 3] (rounded, clipped)."""
    out = x.float().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)
    return out.movedim(-3, -1).cpu().numpy()


def load_pipeline(checkpoint: str | Path | Checkpoint | None = None, device: str = "auto", backend: str = "eager",
                  export_dir: str | Path | None = None, precision: str = "auto") -> Pipeline:
    """A pipeline for a checkpoint file (None: the embedded default in assets/) on "auto" | "cpu" | "cuda".

    `precision` "auto" | "fp32" | "bf16" (see `resolve_device`); the exported backends run at the precision
    they were exported with.

    `backend` "compile" compiles the cached sampler's one-frame DiT call with torch.compile (seconds, at load;
    engine.compiled); "aoti" | "onnx" | "tensorrt" sample with the graphs `ardiff-export` wrote to `export_dir`
    (made from this same checkpoint), on the device they were exported for.
    """
    check_precision(precision)
    if backend in ("eager", "compile"):
        if export_dir is not None:
            raise ValueError(f"export_dir is for the exported backends (aoti, onnx, tensorrt), not {backend!r}")
        dev, dtype = resolve_device(device, precision)
    else:
        from engine.export import check_backend_args

        manifest = check_backend_args(backend, export_dir, device)
        if precision not in ("auto", manifest["dtype"]):
            raise ValueError(f"the {backend} graphs in {export_dir} were exported in {manifest['dtype']}; "
                             f"precision {precision!r} cannot change that (re-export, or use precision 'auto')")
        dev = resolve_device(manifest["device"])[0]
        # The eager parts (encoder, conditioning table) run at the exported graphs' precision.
        dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[manifest["dtype"]]
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint, device=dev)
    return Pipeline(ckpt, dev, dtype, backend=backend, export_dir=export_dir)

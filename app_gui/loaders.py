"""What the window runs on worker threads to get a clip or a model, plus the one check the GUI words itself.

torch and the engine's models are imported here lazily, on the worker thread, so the window appears at
once instead of after the (seconds-long) torch import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from engine.pipeline import Pipeline

CLIP_MEMORY_BUDGET = 1 << 30  # bytes of decoded frames kept for the player (1 GiB)


def read_clip(path: str) -> tuple[np.ndarray, float, bool]:
    """(frames uint8 [N, H, W, 3], fps, truncated): the clip, capped to CLIP_MEMORY_BUDGET of frames."""
    from engine.video_io import probe_video, read_video

    info = probe_video(path)
    cap = max(16, CLIP_MEMORY_BUDGET // max(1, info.width * info.height * 3))
    frames = read_video(path, max_frames=cap + 1)
    return frames[:cap], info.fps, len(frames) > cap


def load_model(checkpoint: str, device: str, export_dir: str | None = None,
               precision: str = "auto") -> Pipeline:
    """A Pipeline for a checkpoint path ("" = the embedded default) on "auto" | "cpu" | "cuda" at `precision`
    "auto" | "fp32" | "bf16"; with `export_dir`, sampling runs the graphs ardiff-export wrote there (its
    manifest names the backend)."""
    from engine.threads import apply_thread_policy

    apply_thread_policy()  # before torch loads, as app_gui.main configured it (one core kept for the UI)
    from engine.pipeline import load_pipeline

    if export_dir:
        # The graphs run at the precision they were exported with; the person's choice (kept for checkpoints)
        # must not make loading them fail, so the export decides ("auto"), as it decides the backend (None).
        return load_pipeline(checkpoint or None, device, backend=None, export_dir=export_dir)
    return load_pipeline(checkpoint or None, device, precision=precision)


def cuda_unavailable() -> str | None:
    """Why this PyTorch cannot run on CUDA here ("this PyTorch build has no CUDA support", ...), or None."""
    import torch

    if torch.cuda.is_available():
        return None
    return ("this PyTorch build has no CUDA support" if torch.version.cuda is None
            else "no NVIDIA GPU was found")


def cuda_problem() -> str | None:
    """Why CUDA cannot be used here, in words for the GUI (the engine's message names a CLI flag), or None."""
    why = cuda_unavailable()
    return None if why is None else f"CUDA was chosen, but {why}. Choose Auto or CPU as the device."

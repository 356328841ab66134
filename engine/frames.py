"""uint8 video frames <-> the models' float tensors in [-1, 1]: the one conversion the pipeline, the
evaluation and the trainer's datasets share."""

from __future__ import annotations

import numpy as np
import torch


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``[..., H, W, 3]`` -> float32 ``[..., 3, H, W]`` in [-1, 1] (the models' input range)."""
    tensor = torch.from_numpy(np.ascontiguousarray(frames)).movedim(-1, -3)
    return tensor.to(torch.float32).div_(127.5).sub_(1.0)


def tensor_to_frames(tensor: torch.Tensor) -> np.ndarray:
    """float ``[..., 3, H, W]`` in [-1, 1] -> uint8 ``[..., H, W, 3]`` (rounded, clipped)."""
    scaled = (tensor.detach().float().cpu().clamp(-1, 1) + 1) * 127.5
    return scaled.round().to(torch.uint8).movedim(-3, -1).contiguous().numpy()

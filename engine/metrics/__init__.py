"""Evaluation metrics: FVD and KVD with the Kinetics-400 I3D, Frechet and kernel distances, PSNR/SSIM."""

from .frechet import frechet_distance, frechet_distance_from_features, gaussian_stats
from .fvd import fvd, fvd_16, fvd_128, fvd_segments, i3d_logits, preprocess_clips
from .i3d import I3D, find_i3d_weights, kinetics400_labels, load_i3d
from .image import copy_last_frame_baseline, psnr, seam_ratio, ssim
from .kernel import kernel_distance

__all__ = [
    "I3D",
    "copy_last_frame_baseline",
    "find_i3d_weights",
    "frechet_distance",
    "frechet_distance_from_features",
    "fvd",
    "fvd_16",
    "fvd_128",
    "fvd_segments",
    "gaussian_stats",
    "i3d_logits",
    "kernel_distance",
    "kinetics400_labels",
    "load_i3d",
    "preprocess_clips",
    "psnr",
    "seam_ratio",
    "ssim",
]

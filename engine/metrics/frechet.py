"""Frechet distance between two Gaussians fitted to feature sets (FID / FVD).

    d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr( (S1 S2)^{1/2} )

``tr((S1 S2)^{1/2})`` is computed without a general matrix square root: S1 S2 is similar to the
symmetric PSD matrix ``M = S1^{1/2} S2 S1^{1/2}``, so the trace is the sum of the square roots of
M's eigenvalues. Both steps are symmetric eigendecompositions in float64 with tiny negative
eigenvalues (round-off) clipped to zero, so the result is real and finite even when the
covariances are singular (fewer samples than dimensions, constant features), which is where
``scipy.linalg.sqrtm`` produces complex or infinite values and needs an eps-offset retry.
No scipy needed.
"""

from __future__ import annotations

import numpy as np

from engine.errors import ArdiffError

__all__ = ["frechet_distance", "frechet_distance_from_features", "gaussian_stats"]


def feature_matrix(features, use: str) -> np.ndarray:
    """``features [N, D]`` as float64, checked for what `use` (e.g. "a Gaussian fit") needs: N >= 2, finite."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2:
        raise ArdiffError(f"{use}: features must be [N, D], got shape {f.shape}")
    if f.shape[0] < 2:
        raise ArdiffError(f"{use} needs at least 2 samples, got {f.shape[0]}")
    if not np.all(np.isfinite(f)):
        raise ArdiffError(f"{use}: features contain NaN or inf")
    return f


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and covariance ``[D, D]`` (unbiased, N - 1) of ``features [N, D]``, in float64."""
    f = feature_matrix(features, "a Gaussian fit")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2); >= 0, symmetric, finite."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ArdiffError(
            f"mismatched Gaussian stats: mu {mu1.shape} / {mu2.shape}, sigma {s1.shape} / {s2.shape}")
    for name, a in (("mu1", mu1), ("mu2", mu2), ("sigma1", s1), ("sigma2", s2)):
        if not np.all(np.isfinite(a)):
            raise ArdiffError(f"{name} contains NaN or inf")
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2  # symmetrise round-off
    r1 = _psd_sqrt(s1)
    m = r1 @ s2 @ r1
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    # tiny negative values are round-off for (nearly) identical distributions
    return max(value, 0.0)


def frechet_distance_from_features(features1, features2) -> float:
    """Frechet distance between Gaussian fits of two feature sets ``[N1, D]`` and ``[N2, D]``."""
    mu1, s1 = gaussian_stats(features1)
    mu2, s2 = gaussian_stats(features2)
    return frechet_distance(mu1, s1, mu2, s2)

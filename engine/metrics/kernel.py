"""Kernel distance between two feature sets (KID for images, KVD for videos): the unbiased estimate of the
squared maximum mean discrepancy with the cubic polynomial kernel k(a, b) = (a.b / d + 1)^3.

Why beside FVD: the Frechet distance fits a Gaussian to each set, so with fewer samples than feature
dimensions (400 I3D logits, a handful of clips) its value is dominated by estimation bias, and the bias
differs between sets. This estimate is unbiased at any sample size: its mean over draws of the clips is the
true distance, so two rows of a small evaluation compare fairly, with noise instead of bias. Being unbiased,
it can be slightly negative when two sets come from the same distribution (identical sets included).
Kernel and estimator as in Binkowski et al. 2018 (KID) and Unterthiner et al. 2018 (KVD).
"""

from __future__ import annotations

import numpy as np

from engine.errors import ArdiffError
from engine.metrics.frechet import feature_matrix

__all__ = ["kernel_distance"]


def kernel_distance(features1, features2) -> float:
    """Unbiased MMD^2 between feature sets [N1, D] and [N2, D] (N1, N2 >= 2) with k(a, b) = (a.b / D + 1)^3."""
    x, y = (feature_matrix(f, "a kernel distance") for f in (features1, features2))
    if x.shape[1] != y.shape[1]:
        raise ArdiffError(f"feature sizes differ: {x.shape[1]} and {y.shape[1]}")
    d = x.shape[1]
    kxx, kyy, kxy = ((a @ b.T / d + 1.0) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    m, n = len(x), len(y)
    within_x = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))  # pairs of distinct samples only: no self-similarity
    within_y = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(within_x + within_y - 2.0 * kxy.mean())

"""Fréchet distance between two sets of image features (Heusel et al. 2017, "FID").

    FID = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))

with mu, S the mean and covariance (ddof 1) of each set's features. The trace of the matrix square root
is computed exactly without `sqrtm`: with A, B the centred feature matrices (S_a = A'A / (n-1), S_b =
B'B / (m-1)), the eigenvalues of S_a S_b are the squared singular values of A B' / sqrt((n-1)(m-1)), so
Tr((S_a S_b)^(1/2)) is the nuclear norm of R_a R_b' / sqrt((n-1)(m-1)), R from the QR factors of A and B.
That is exact for singular covariances (fewer images than feature dimensions) and takes milliseconds.

This project's feature space is the pooled 1024-d output of torchxrayvision's pathology DenseNet-121 (the
`features2` of the local weight file, so it runs offline); values are therefore NOT comparable with
Inception-v3 FIDs of other papers. With few images the estimate is biased upward; the report prints the
number of images beside every FID.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["frechet_distance"]


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID between feature sets a (n, d) and b (m, d); NaN with fewer than 2 rows on a side."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be (n, d) with the same d, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        return math.nan
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    centred_a, centred_b = a - mu_a, b - mu_b
    r_a = np.asarray(np.linalg.qr(centred_a, mode="r"))
    r_b = np.asarray(np.linalg.qr(centred_b, mode="r"))
    scale = math.sqrt((len(a) - 1) * (len(b) - 1))
    trace_sqrt = float(np.linalg.svd(r_a @ r_b.T, compute_uv=False).sum()) / scale
    trace_a = float((centred_a * centred_a).sum()) / (len(a) - 1)
    trace_b = float((centred_b * centred_b).sum()) / (len(b) - 1)
    diff = mu_a - mu_b
    return max(float(diff @ diff) + trace_a + trace_b - 2.0 * trace_sqrt, 0.0)

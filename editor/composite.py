"""Composite the decoded edit into the source at native resolution, in the stored-value domain.

The feathered alpha ramps *inward* from the mask's edge (alpha = d / (feather_px + 1), d = distance to
the nearest pixel outside the mask, capped at 1), so alpha is exactly 0 everywhere outside the binary
mask M: every pixel outside M keeps the source's stored value bit for bit, and the mask that the node
exports as "where the edit was allowed" is exactly the set of pixels that may differ.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def feather_alpha(mask: np.ndarray, feather_px: int) -> np.ndarray:
    """float32 alpha in [0, 1]: 0 outside `mask`, ramping up to 1 within `feather_px` of its edge."""
    from scipy import ndimage

    inside = np.asarray(mask, dtype=bool)
    if not inside.any():
        return np.zeros(inside.shape, dtype=np.float32)
    if inside.all() or feather_px <= 0:
        return inside.astype(np.float32)
    # Distance (pixels) from each mask pixel to the nearest non-mask pixel; the image border is not an edge.
    depth = ndimage.distance_transform_edt(inside)
    alpha = np.clip(depth / (feather_px + 1.0), 0.0, 1.0).astype(np.float32)
    alpha[~inside] = 0.0
    return alpha


def blend_stored(source: np.ndarray, edited: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """source + alpha (edited - source), rounded to the source dtype; exactly `source` where alpha == 0."""
    if source.shape != edited.shape or source.shape != alpha.shape:
        raise ValueError(f"shape mismatch: source {source.shape}, edited {edited.shape}, alpha {alpha.shape}")
    src = source.astype(np.float64)
    mixed = src + alpha.astype(np.float64) * (edited.astype(np.float64) - src)
    if np.issubdtype(source.dtype, np.integer):
        info = np.iinfo(source.dtype)
        mixed = np.clip(np.rint(mixed), info.min, info.max)
    out = mixed.astype(source.dtype)
    untouched = alpha <= 0
    out[untouched] = source[untouched]
    return out


def native_mask(mask_model: np.ndarray, to_native: Callable[..., np.ndarray]) -> np.ndarray:
    """Binary model-grid mask -> native grid (`to_native` = GridTransform.to_native): linear, >= 0.5."""
    interpolated = to_native(np.asarray(mask_model, dtype=np.float32), order="linear")
    return np.asarray(interpolated) >= 0.5

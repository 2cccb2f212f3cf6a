"""The mask operations the anatomy steps share: Otsu's threshold, dilation and erosion by a disk, the
filled convex hull, a mask's bounding rows and columns, and stretching a mask down to a new bottom row."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, QhullError


def otsu_threshold(values: np.ndarray) -> float:
    hist, edges = np.histogram(values, bins=256, range=(0.0, 1.0))
    p = hist / max(hist.sum(), 1)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (m0[-1] * w0 - m0) ** 2 / (w0 * (1.0 - w0))
    return float(centres[int(np.nanargmax(between))])


def dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    """Dilation by a disk, via the distance transform (fast for large radii)."""
    if radius <= 0 or not mask.any():
        return mask.copy()
    return np.asarray(ndi.distance_transform_edt(~mask) <= radius)


def erode(mask: np.ndarray, radius: float) -> np.ndarray:
    if radius <= 0:
        return mask.copy()
    padded = np.pad(mask, 1, constant_values=False)  # the image border counts as outside
    return np.asarray(ndi.distance_transform_edt(padded) > radius)[1:-1, 1:-1]


def filled_hull(mask: np.ndarray) -> np.ndarray:
    """Filled convex hull of a boolean mask (the mask itself when the hull is degenerate)."""
    from PIL import Image, ImageDraw

    pts = np.argwhere(mask)
    if len(pts) < 4:
        return mask.copy()
    try:
        hull = ConvexHull(pts)
    except (QhullError, ValueError):
        return mask.copy()
    canvas = Image.new("1", (mask.shape[1], mask.shape[0]), 0)
    ImageDraw.Draw(canvas).polygon([(float(c), float(r)) for r, c in pts[hull.vertices]], fill=1, outline=1)
    return np.asarray(canvas, dtype=bool) | mask


def mask_bounds(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def stretch_down(mask: np.ndarray, new_bottom: int) -> np.ndarray:
    """Resample a mask vertically so that its bottom row moves to `new_bottom` (top fixed)."""
    top, bottom, _, _ = mask_bounds(mask)
    if new_bottom <= bottom:
        return mask
    src_rows = top + (np.arange(top, new_bottom + 1) - top) * (bottom - top) / max(new_bottom - top, 1)
    out = np.zeros_like(mask)
    out[top: new_bottom + 1] = mask[np.clip(np.rint(src_rows).astype(int), top, bottom)]
    return out

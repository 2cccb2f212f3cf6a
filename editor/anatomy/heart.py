"""The heart and the mediastinum between the two lung fields: the dense lower region between the lung
fields' medial edges (the cardiac borders, followed row by row down to the diaphragm, so the apex is
inside), with a rounded top."""

from __future__ import annotations

import numpy as np

from editor.anatomy.morphology import mask_bounds
from editor.anatomy.types import IMAGE_SIDES


def _medial_edges(left: np.ndarray, right: np.ndarray, rows: range) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the image-left lung's rightmost and the image-right lung's leftmost column (-1: none)."""
    h = left.shape[0]
    medial_l = np.full(h, -1)
    medial_r = np.full(h, -1)
    for r in rows:
        xl = np.flatnonzero(left[r])
        xr = np.flatnonzero(right[r])
        if xl.size and xr.size and xl[-1] < xr[0]:
            medial_l[r], medial_r[r] = xl[-1], xr[0]
    return medial_l, medial_r


def _running_median(values: np.ndarray, window: int) -> np.ndarray:
    """Median over a window of rows (odd length, clipped at the ends): a border without vessel jitter."""
    if window <= 1 or values.size < 3:
        return values.astype(float)
    half = window // 2
    padded = np.pad(values.astype(float), half, mode="edge")
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1), axis=1)


def _lung_borders(raw: np.ndarray, medial_is_right: bool, rows: np.ndarray) -> np.ndarray:
    """Per row, the dark lung's medial column (the cardiac border where the heart touches it); below the
    lung's base the last border carries on down (the heart rests on the diaphragm there); -1 above it."""
    out = np.full(rows.size, -1.0)
    last = -1.0
    for i, r in enumerate(rows):
        xs = np.flatnonzero(raw[r])
        if xs.size:
            last = float(xs[-1] if medial_is_right else xs[0])
        out[i] = last
    return out


def heart_and_mediastinum(lungs: dict[str, np.ndarray], raw: dict[str, np.ndarray],
                          bottoms: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Mediastinum = between the lung fields; heart = the region between the dark lungs' medial edges
    (the cardiac borders) from where they part down to the diaphragm, with a rounded top.

    The borders are followed row by row rather than fitted with an ellipse: the heart is widest low
    down, where the apex (usually on the image right of a PA film, the patient's left) reaches out
    along the diaphragm; an ellipse centred on the silhouette misses it."""
    h, w = lungs["image_left"].shape
    top = min(mask_bounds(lungs[s])[0] for s in IMAGE_SIDES)
    bottom = max(bottoms.values())
    span = max(bottom - top + 1, 1)
    fl, fr = _medial_edges(lungs["image_left"], lungs["image_right"], range(top, bottom + 1))
    mediastinum = np.zeros((h, w), bool)
    for r in np.flatnonzero(fl >= 0):
        mediastinum[r, fl[r] + 1: fr[r]] = True
    # Cardiac borders from the dark lungs themselves (the filled fields overlap the heart). Kept
    # symmetric (no side preference): the segmenter does not know which side is the patient's left.
    el, er = _medial_edges(raw["image_left"], raw["image_right"], range(top, bottom + 1))
    valid = np.flatnonzero(el >= 0)
    gap = (er - el).astype(float)
    lungs_any = lungs["image_left"] | lungs["image_right"]
    _, _, outer_l, outer_r = mask_bounds(lungs_any)
    thorax = float(outer_r - outer_l + 1)
    mid = (outer_l + outer_r) / 2
    upper = valid[(valid >= top + 0.2 * span) & (valid < top + 0.45 * span)]
    lower = valid[(valid >= top + 0.45 * span) & (valid <= top + 0.92 * span)]
    rr, cc = np.mgrid[0:h, 0:w]
    heart_bottom = float(bottom)  # the heart rests on the diaphragm
    if lower.size < 3:
        # The lungs are never side by side low down (e.g. a large effusion): a typical heart, an ellipse.
        heart_top = top + 0.55 * span
        cx, rx = mid, 0.25 * thorax
        cy, ry = (heart_top + heart_bottom) / 2, max((heart_bottom - heart_top) / 2, 0.05 * h)
        heart = (((cc - cx) / rx) ** 2 + ((rr - cy) / ry) ** 2 <= 1.0) & (rr <= bottom)
        return heart, mediastinum | heart
    wide = lower[gap[lower] > 1.3 * float(np.median(gap[upper]))] if upper.size else lower
    heart_top = float(wide[0]) if wide.size >= 3 else top + 0.55 * span
    heart_top = min(max(heart_top, top + 0.45 * span), top + 0.7 * span)

    rows = np.arange(int(round(heart_top)), bottom + 1)
    window = max(3, int(0.04 * h) | 1)
    left = _running_median(_lung_borders(lungs["image_left"], True, rows), window)
    right = _running_median(_lung_borders(lungs["image_right"], False, rows), window)
    # Where a lung is missing from a row (e.g. above a mirrored lung's top), use the typical border.
    left = np.where(left < 0, mid - 0.2 * thorax, left)
    right = np.where(right < 0, mid + 0.2 * thorax, right)
    # A cardiac border runs steeply down to the diaphragm; a field's edge that swings outward faster
    # than 0.6 columns per row is the dome of the diaphragm under it, not the heart.
    for i in range(1, rows.size):
        left[i] = max(left[i], left[i - 1] - 0.6)
        right[i] = min(right[i], right[i - 1] + 0.6)
    # Cardiothoracic sanity: width 30-65 % of the thorax, centre within 15 % of the thorax's middle.
    centre = np.clip((left + right) / 2, mid - 0.15 * thorax, mid + 0.15 * thorax)
    half = np.clip((right - left) / 2, 0.15 * thorax, 0.325 * thorax)
    # Rounded top: over the upper quarter of the heart the width grows like a half ellipse.
    cap = max(0.25 * (heart_bottom - heart_top), 1.0)
    depth = np.clip((rows - heart_top) / cap, 0.0, 1.0)
    half = half * np.sqrt(1.0 - (1.0 - depth) ** 2)
    heart = np.zeros((h, w), bool)
    cols = np.arange(w)
    for i, r in enumerate(rows):
        heart[r] = np.abs(cols - centre[i]) <= half[i]
    mediastinum |= heart
    return heart, mediastinum

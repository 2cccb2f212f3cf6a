"""The parts of one lung field that instructions name: upper / middle / lower zone (vertical thirds),
apex (the top 30 %), costophrenic angle (lower-lateral corner), hilum (medial middle), lateral margin
(the lateral band of each row), and the hemithorax: the thoracic cavity on that side (the lung widened
to the chest wall and down to the diaphragm, for findings that hide aerated lung)."""

from __future__ import annotations

import numpy as np

from editor.anatomy.morphology import filled_hull, mask_bounds


def zones_and_parts(lung: np.ndarray, side: str, midline: float, masks: dict[str, np.ndarray]) -> None:
    """Zones, apex, costophrenic angle, hilum and lateral margin of one lung (in place into masks)."""
    h, w = lung.shape
    rr, cc = np.mgrid[0:h, 0:w]
    top, bottom, left, right = mask_bounds(lung)
    height = max(bottom - top + 1, 1)
    width = max(right - left + 1, 1)
    thirds = [top + height * k / 3.0 for k in range(4)]
    for name, (a, b) in zip(("upper", "middle", "lower"), zip(thirds[:-1], thirds[1:], strict=True),
                            strict=True):
        masks[f"{name}_{side}"] = lung & (rr >= a) & (rr < b + (1 if name == "lower" else 0))
    masks[f"apex_{side}"] = lung & (rr < top + 0.3 * height)
    lateral_is_left = side == "image_left"
    medial_x = right if lateral_is_left else left
    lateral_half = (cc <= left + width / 2) if lateral_is_left else (cc >= right - width / 2)
    masks[f"cp_angle_{side}"] = lung & (rr >= bottom - 0.22 * height) & lateral_half
    # The hilum sits at the medial border, mid-height; it is partly outside the dark lung, so the box
    # reaches a little beyond the lung toward the midline.
    medial_band = np.abs(cc - medial_x) <= 0.35 * width
    toward_mid = (cc <= medial_x + 0.1 * width) if lateral_is_left else (cc >= medial_x - 0.1 * width)
    masks[f"hilum_{side}"] = ((rr >= top + 0.3 * height) & (rr <= top + 0.6 * height) & medial_band
                              & toward_mid & (np.abs(cc - midline) > 0.02 * w))
    # Lateral margin: in every row, the lateral 25 % of that row's lung width (>= 2 px).
    margin = np.zeros_like(lung)
    for r in range(top, bottom + 1):
        xs = np.flatnonzero(lung[r])
        if xs.size == 0:
            continue
        band = max(2, int(round(0.25 * (xs[-1] - xs[0] + 1))))
        if lateral_is_left:
            margin[r, xs[0]: xs[0] + band] = True
        else:
            margin[r, max(xs[-1] - band + 1, 0): xs[-1] + 1] = True
    masks[f"lateral_margin_{side}"] = margin & lung


def hemithorax_floor(lungs: dict[str, np.ndarray], bottoms: dict[str, int]) -> int:
    """Lowest row either hemithorax reaches: the lower lung base, and no higher than 0.85 thorax widths
    below the apices (both bases can sit high over fluid; lungs are about as tall as the thorax is wide)."""
    h = lungs["image_left"].shape[0]
    both = lungs["image_left"] | lungs["image_right"]
    top, _, left, right = mask_bounds(both)
    expected = top + 0.85 * (right - left + 1)
    return int(min(h - 1, max(max(bottoms.values()), expected)))


def hemithorax(lung: np.ndarray, side: str, floor: int, midline: float) -> np.ndarray:
    """One side's thoracic cavity as the chest wall, the mediastinum and the diaphragm bound it.

    On an image that *shows* fluid or collapse, the lung segmented from the dark (aerated) lung stops at
    the fluid; the hemithorax does not: the lung's lower third sets its lateral wall (the chest wall is
    widest at the base) and its medial edge, and the box between them reaches down to `floor`. Its
    filled convex hull with the lung is the hemithorax ("Remove the finding of pleural effusion" must
    cover where the fluid is)."""
    h, w = lung.shape
    if not lung.any():
        return lung.copy()
    top, bottom, _, _ = mask_bounds(lung)
    low = lung[int(top + 2 * (bottom - top) / 3): bottom + 1]
    cols = np.flatnonzero(low.any(axis=0))
    if cols.size == 0:
        return lung.copy()
    lateral_is_left = side == "image_left"
    lateral = int(cols[0] if lateral_is_left else cols[-1])
    # Medial edge at the base, but never across the body midline.
    edges = [np.flatnonzero(row)[-1 if lateral_is_left else 0] for row in low if row.any()]
    medial = float(np.median(edges))
    medial = min(medial, midline) if lateral_is_left else max(medial, midline)
    box = np.zeros_like(lung)
    c0, c1 = sorted((lateral, int(round(medial))))
    box[bottom: max(floor, bottom) + 1, c0: c1 + 1] = True
    return filled_hull(lung | box)

"""Every named region from two lung fields: `assemble_anatomy` adds the heart, mediastinum, midline,
zones and parts of each lung and the hemithoraces; `template_anatomy` draws the lung fields of a
standard PA chest into the body's bounding box when none could be segmented."""

from __future__ import annotations

from typing import Any

import numpy as np

from editor.anatomy.heart import heart_and_mediastinum
from editor.anatomy.lung_parts import hemithorax, hemithorax_floor, zones_and_parts
from editor.anatomy.morphology import dilate, mask_bounds
from editor.anatomy.types import IMAGE_SIDES, Anatomy


def assemble_anatomy(lungs: dict[str, np.ndarray], bottoms: dict[str, int], quality: dict[str, Any],
                     raw: dict[str, np.ndarray] | None = None) -> Anatomy:
    h, w = lungs["image_left"].shape
    masks: dict[str, np.ndarray] = {f"lung_{s}": lungs[s] for s in IMAGE_SIDES}
    heart, mediastinum = heart_and_mediastinum(lungs, raw or lungs, bottoms)
    # Body midline from the mediastinum above the heart (the heart itself lies off-centre).
    upper_mediastinum = mediastinum & ~dilate(heart, 2)
    cols = np.nonzero(upper_mediastinum)[1]
    midline = float(np.median(cols)) if cols.size else (w - 1) / 2
    for side in IMAGE_SIDES:
        zones_and_parts(lungs[side], side, midline, masks)
    floor = hemithorax_floor(lungs, bottoms)
    for side in IMAGE_SIDES:
        masks[f"hemithorax_{side}"] = hemithorax(lungs[side], side, floor, midline)
    masks["heart"] = heart
    masks["mediastinum"] = mediastinum
    quality["midline_x"] = midline / w
    quality["lung_area_fraction"] = {s: float(lungs[s].mean()) for s in IMAGE_SIDES}
    quality["heart_area_fraction"] = float(heart.mean())
    return Anatomy(masks, quality)


# ------------------------------------------------------------------------------------- template


def template_anatomy(shape: tuple[int, int], body_box: tuple[int, int, int, int] | None = None,
                     *, reason: str = "") -> Anatomy:
    """A standard PA chest drawn into `body_box` (top, bottom, left, right) or the whole image."""
    h, w = shape
    top, bottom, left, right = body_box if body_box is not None else (0, h - 1, 0, w - 1)
    bh, bw = max(bottom - top + 1, 8), max(right - left + 1, 8)
    cx = left + bw / 2
    rr, cc = np.mgrid[0:h, 0:w]
    lung_top = top + 0.08 * bh
    lung_base = top + 0.78 * bh
    lungs: dict[str, np.ndarray] = {}
    for side, sign in (("image_left", -1.0), ("image_right", 1.0)):
        lx = cx + sign * 0.2 * bw
        ellipse = ((cc - lx) / (0.17 * bw)) ** 2 + ((rr - lung_base) / (lung_base - lung_top)) ** 2 <= 1.0
        dome = lung_base - 0.07 * bh * (1.0 - np.clip((cc - lx) / (0.17 * bw), -1, 1) ** 2)
        lungs[side] = ellipse & (rr <= dome)
    bottoms = {s: int(mask_bounds(lungs[s])[1]) for s in IMAGE_SIDES}
    notes = ["segmentation failed; used a geometric template of a standard PA chest" + (f": {reason}" if reason
                                                                                        else "")]
    return assemble_anatomy(lungs, bottoms, {"method": "template", "notes": notes,
                                             "body_box": [int(top), int(bottom), int(left), int(right)]})

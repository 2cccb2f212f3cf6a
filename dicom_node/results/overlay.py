"""The source in grey with the guidance map G in red, as an RGB Secondary Capture, for viewers that
show neither SEG nor Parametric Map. Red is blended in with opacity 0.6 x G, so G = 0 leaves grey."""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset

from dicom_node.results.provenance import mark_synthetic
from dicom_node.results.sc import synthetic_sc
from editor import DisplayMapping, EditResult, source_from_dataset

MAX_OPACITY = 0.6


def overlay_rgb(grey01: np.ndarray, guidance: np.ndarray) -> np.ndarray:
    """uint8 (rows, cols, 3): grey image with red proportional to G.

    Per pixel: grey' = 255 grey (1 - a), red = grey' + 255 a, a = 0.6 G (float32, rounded to nearest).
    Where G = 0 that is plain grey, so only the pixels with G > 0 are blended."""
    grey = np.clip(np.asarray(grey01, dtype=np.float32), 0.0, 1.0) * 255.0
    g = np.clip(np.asarray(guidance, dtype=np.float32), 0.0, 1.0)
    where = g > 0
    if where.mean() > 0.5:  # mostly red: blending every pixel is cheaper than selecting them
        alpha = MAX_OPACITY * g
        full = np.repeat((grey * (1.0 - alpha))[..., None], 3, axis=-1)
        full[..., 0] += 255.0 * alpha
        return np.clip(np.rint(full), 0, 255).astype(np.uint8)
    rgb = np.repeat(np.clip(np.rint(grey), 0, 255).astype(np.uint8)[..., None], 3, axis=-1)
    if where.any():
        alpha = MAX_OPACITY * g[where]
        shaded = grey[where] * (1.0 - alpha)
        rgb[where] = np.clip(np.rint(np.stack([shaded + 255.0 * alpha, shaded, shaded], axis=-1)), 0, 255)
    return rgb


def source_display(source: Dataset, result: EditResult) -> np.ndarray:
    """The source as the editor displayed it (grey [0, 1], bone bright): the editor's own display mapping."""
    if result.source_display is not None and result.source_display.shape == result.guidance.shape:
        return np.asarray(result.source_display, dtype=np.float32)
    image = source_from_dataset(source)
    return DisplayMapping.from_source(image).to_display(image.pixels)


def overlay_sc(
    source: Dataset,
    result: EditResult,
    *,
    series_uid: str,
    sop_uid: str,
    series_number: int,
    institution_name: str | None = None,
    rgb: np.ndarray | None = None,
) -> Dataset:
    """`rgb`: the overlay_rgb image when the caller made it already (write_outputs previews it too)."""
    if rgb is None:
        rgb = overlay_rgb(source_display(source, result), result.guidance)
    instruction = result.instruction.canonical()
    sc = synthetic_sc(
        source, result, rgb, photometric="RGB", bits_allocated=8,
        series_uid=series_uid, sop_uid=sop_uid, series_number=series_number, institution_name=institution_name,
    )
    sc.ImageComments = (
        "SYNTHETIC overlay: the ORIGINAL source image in grey, InstructX2X guidance map G in red "
        f"(opacity {MAX_OPACITY} x G). Not for diagnosis. Instruction: {instruction}"
    )
    mark_synthetic(sc, source, result, series_description=f"X2X overlay: {instruction}")
    return sc

"""Stored values -> display grey [0, 1] (bone bright) for the overlay and PNG previews.

Modality LUT / rescale, then the first window (linear, PS3.3 C.11.2.1.2.1) or the VOI LUT, else a
0.5-99.5 percentile stretch; MONOCHROME1 is inverted so that the result always reads as MONOCHROME2.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue


def _first(value: object) -> float:
    return float(value[0] if isinstance(value, (MultiValue, list, tuple)) else value)  # type: ignore[arg-type, index]


def display_image(ds: Dataset, stored: np.ndarray) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    out: np.ndarray
    values = apply_modality_lut(np.asarray(stored), ds).astype(np.float64)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = _first(ds.WindowCenter), max(_first(ds.WindowWidth), 1.0)
        if str(ds.get("VOILUTFunction", "LINEAR")).upper() == "SIGMOID":
            out = 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
        else:
            out = (values - (center - 0.5)) / (width - 1.0) + 0.5 if width > 1 else (values >= center) * 1.0
    elif "VOILUTSequence" in ds:
        out = apply_voi_lut(values, ds).astype(np.float64)
        lo, hi = float(out.min()), float(out.max())
        out = (out - lo) / (hi - lo) if hi > lo else np.zeros_like(out)
    else:
        lo, hi = np.percentile(values, [0.5, 99.5])
        out = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    out = np.clip(out, 0.0, 1.0)
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")) == "MONOCHROME1":
        out = 1.0 - out
    return out.astype(np.float32)


def save_png(image: np.ndarray, path: Path, max_side: int = 1024) -> None:
    """Grey [0,1] (rows, cols) or uint8 RGB (rows, cols, 3) -> PNG, downscaled to max_side."""
    from PIL import Image

    arr = image if image.dtype == np.uint8 else np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    scale = max_side / max(img.size)
    if scale < 1:
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.Resampling.BILINEAR)
    tmp = path.with_name(path.name + ".tmp")
    img.save(tmp, format="PNG")
    tmp.replace(path)

"""Build a `SourceImage` (stored pixels + the few DICOM facts the editor needs) from a dataset or a file.

Decoding uses pydicom's pixel handling (compressed syntaxes via the installed pylibjpeg plugins); only
frame 0 of a multi-frame object is decoded. The pixels stay *stored* values: display mapping and its
inverse live in editor/preprocess.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from editor.types import SourceImage

__all__ = ["UnsupportedImageError", "source_from_dataset", "source_from_file"]


class UnsupportedImageError(ValueError):
    """Not a single-channel 2-D greyscale image (colour, volume, missing or float pixel data ...)."""


def _first(value: Any) -> float | None:
    """First value of a possibly multi-valued DS (Window Center/Width may carry several)."""
    if value is None:
        return None
    if not isinstance(value, (str, bytes, int, float)):  # pydicom MultiValue
        seq = list(value)
        return float(seq[0]) if seq else None
    return float(value)


def _lut_from_item(item: Dataset) -> tuple[np.ndarray, int] | None:
    """(table, first mapped stored value) of a Modality/VOI LUT Sequence item."""
    desc = item.get("LUTDescriptor")
    data = item.get("LUTData")
    if desc is None or data is None:
        return None
    n_entries, first_mapped, n_bits = (int(v) for v in desc)
    n_entries = n_entries or 65536  # PS3.3 C.11.1.1: 0 means 2^16 entries
    if isinstance(data, (bytes, bytearray)):  # OW: raw little-endian words (explicit VR LE after decode)
        dtype = np.uint8 if n_bits <= 8 and len(data) == n_entries else np.dtype("<u2")
        table = np.frombuffer(bytes(data), dtype=dtype).astype(np.float64)
    else:
        table = np.asarray(list(data) if not isinstance(data, int) else [data], dtype=np.float64)
    if table.size < 1:
        return None
    return table[:n_entries], first_mapped


def _first_lut(ds: Dataset, keyword: str) -> tuple[np.ndarray | None, int]:
    """(table, first mapped value) of the first item of a LUT sequence; (None, 0) when absent or unusable."""
    items = ds.get(keyword)
    lut = _lut_from_item(items[0]) if items else None
    return lut if lut is not None else (None, 0)

def source_from_dataset(ds: Dataset) -> SourceImage:
    """SourceImage of frame 0 of a greyscale DICOM image (decompressing when needed)."""
    if "PixelData" not in ds:
        kind = "float pixel data" if ("FloatPixelData" in ds or "DoubleFloatPixelData" in ds) else "no pixel data"
        raise UnsupportedImageError(f"unsupported image: {kind}")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    samples = int(ds.get("SamplesPerPixel", 1))
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise UnsupportedImageError(
            f"unsupported image: colour or non-greyscale ({photometric or 'no photometric'}, {samples} samples)"
        )
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    try:
        pixels = (pydicom.pixels.pixel_array(ds, index=0) if n_frames > 1 else ds.pixel_array)
    except Exception as exc:  # decoder missing / corrupt data: say which, do not crash obscurely
        raise UnsupportedImageError(f"cannot decode pixel data: {exc}") from exc
    pixels = np.asarray(pixels)
    if pixels.ndim != 2:
        raise UnsupportedImageError(f"unsupported image: expected 2-D pixels, got shape {pixels.shape}")

    modality_lut, modality_first = _first_lut(ds, "ModalityLUTSequence")
    voi_lut, voi_first = _first_lut(ds, "VOILUTSequence")

    orientation = ds.get("PatientOrientation")
    patient_orientation: tuple[str, str] | None = None
    if orientation is not None:
        values = orientation.split("\\") if isinstance(orientation, str) else [str(v) for v in orientation]
        if len(values) == 2:
            patient_orientation = (values[0], values[1])
    spacing = ds.get("ImagerPixelSpacing") or ds.get("PixelSpacing")
    width = _first(ds.get("WindowWidth"))
    return SourceImage(
        pixels=pixels,
        photometric=cast(Literal["MONOCHROME1", "MONOCHROME2"], photometric),
        bits_stored=int(ds.get("BitsStored", pixels.dtype.itemsize * 8)),
        pixel_signed=bool(int(ds.get("PixelRepresentation", 0))),
        rescale_slope=float(ds.get("RescaleSlope", 1.0) or 1.0),
        rescale_intercept=float(ds.get("RescaleIntercept", 0.0) or 0.0),
        window_center=_first(ds.get("WindowCenter")) if width else None,
        window_width=width if width else None,
        voi_lut_function=(str(ds.VOILUTFunction).strip().upper() if ds.get("VOILUTFunction") else None),
        voi_lut=voi_lut,
        voi_lut_first_mapped=voi_first,
        modality_lut=modality_lut,
        modality_lut_first_mapped=modality_first,
        patient_orientation=patient_orientation,
        view_position=(str(ds.ViewPosition).strip().upper() or None) if ds.get("ViewPosition") else None,
        imager_pixel_spacing=(float(spacing[0]), float(spacing[1])) if spacing and len(spacing) == 2 else None,
        sop_instance_uid=str(ds.SOPInstanceUID) if ds.get("SOPInstanceUID") else None,
    )


def _identity_window(bits: int) -> tuple[float, float]:
    """Window (center, width) that maps 0 .. 2^bits-1 linearly onto [0, 1] with the LINEAR function."""
    return float(2 ** (bits - 1)), float(2**bits)


def _from_grey_array(pixels: np.ndarray, what: str) -> SourceImage:
    if pixels.ndim != 2:
        raise UnsupportedImageError(f"{what}: expected a 2-D greyscale array, got shape {pixels.shape}")
    if pixels.dtype.kind not in "ui" or pixels.dtype.itemsize > 2:
        raise UnsupportedImageError(f"{what}: expected 8/16-bit integer pixels, got {pixels.dtype}")
    bits = pixels.dtype.itemsize * 8
    # A PNG/JPEG is already a display image: use the identity window, not a contrast stretch.
    center, width = _identity_window(bits) if pixels.dtype.kind == "u" else (None, None)
    return SourceImage(pixels=pixels, photometric="MONOCHROME2", bits_stored=bits,
                       pixel_signed=pixels.dtype.kind == "i", window_center=center, window_width=width,
                       voi_lut_function="LINEAR" if center is not None else None)


def source_from_file(path: str | Path) -> SourceImage:
    """A DICOM file (any extension, by content), or a .png/.jpg/.npy greyscale image (MONOCHROME2)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _from_grey_array(np.load(path, allow_pickle=False), str(path))
    if suffix in (".png", ".jpg", ".jpeg", ".tif", ".tiff"):
        return _from_image_file(path)
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise UnsupportedImageError(f"{path}: neither DICOM nor a known image type ({exc})") from exc
    return source_from_dataset(ds)


def _from_image_file(path: Path) -> SourceImage:
    from PIL import Image

    with Image.open(path) as img:
        if img.mode in ("I;16", "I;16B", "I;16L"):
            return _from_grey_array(np.asarray(img).astype(np.uint16), str(path))
        if img.mode == "I":  # 16-bit PNGs often open as 32-bit "I" holding 16-bit values
            arr = np.asarray(img)
            if arr.min() < 0 or arr.max() > 65535:
                raise UnsupportedImageError(f"{path}: 32-bit integer image out of 16-bit range")
            return _from_grey_array(arr.astype(np.uint16), str(path))
        if img.mode == "L":
            return _from_grey_array(np.asarray(img).copy(), str(path))
        rgb = np.asarray(img.convert("RGB")).astype(np.int16)
    # Grey images saved as RGB (JPEG noise included) are fine; real colour is not a radiograph.
    spread = int((rgb.max(axis=2) - rgb.min(axis=2)).max())
    if spread > 16:
        raise UnsupportedImageError(f"{path}: colour image (channel spread {spread}); expected greyscale")
    return _from_grey_array(np.round(rgb.mean(axis=2)).astype(np.uint8), str(path))

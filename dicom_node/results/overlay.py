"""The source in grey with the guidance map G in red, as an RGB Secondary Capture, for viewers that
show neither SEG nor Parametric Map. Red is blended in with opacity 0.6 x G, so G = 0 leaves grey."""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from dicom_node.results.display import display_image
from dicom_node.results.geometry import metadata_copy, orientation_labels
from dicom_node.results.provenance import PROJECT_NAME, contributing_equipment, mark_synthetic
from editor.types import EditResult

MAX_OPACITY = 0.6


def overlay_rgb(grey01: np.ndarray, guidance: np.ndarray) -> np.ndarray:
    """uint8 (rows, cols, 3): grey image with red proportional to G."""
    grey = np.clip(np.asarray(grey01, dtype=np.float32), 0.0, 1.0) * 255.0
    alpha = MAX_OPACITY * np.clip(np.asarray(guidance, dtype=np.float32), 0.0, 1.0)
    rgb = np.repeat((grey * (1.0 - alpha))[..., None], 3, axis=-1)
    rgb[..., 0] += 255.0 * alpha
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def source_display(source: Dataset, result: EditResult) -> np.ndarray:
    if result.source_display is not None and result.source_display.shape == result.guidance.shape:
        return np.asarray(result.source_display, dtype=np.float32)
    return display_image(source, source.pixel_array)


def overlay_sc(
    source: Dataset,
    result: EditResult,
    *,
    series_uid: str,
    sop_uid: str,
    series_number: int,
    institution_name: str | None = None,
) -> Dataset:
    rgb = overlay_rgb(source_display(source, result), result.guidance)
    instruction = result.instruction.canonical()
    labels = orientation_labels(source)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=metadata_copy(source),
        pixel_array=rgb,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=PROJECT_NAME,
        # highdicom insists on an orientation; an unknown one is emptied below, never guessed
        patient_orientation=labels or ("L", "F"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        contributing_equipment=[contributing_equipment(result, institution_name)],
    )
    sc.PatientOrientation = list(labels) if labels else None  # type: ignore[assignment]  # None = empty
    sc.ConversionType = "SYN"
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.BurnedInAnnotation = "NO"
    sc.LossyImageCompression = "00"
    sc.ImageComments = (
        "SYNTHETIC overlay: the ORIGINAL source image in grey, InstructX2X guidance map G in red "
        f"(opacity {MAX_OPACITY} x G). Not for diagnosis. Instruction: {instruction}"
    )
    mark_synthetic(sc, source, result, series_description=f"X2X overlay: {instruction}")
    return sc

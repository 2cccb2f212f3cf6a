"""Segmentations on the source's pixel grid: BINARY (the edit mask M, one segment per finding) and
FRACTIONAL / PROBABILITY (the continuous guidance map G, quantised to 8 bits: stored = round(255 G)).

Both reference the source instance and carry the job's plane geometry (geometry.py: shared Pixel Measures,
Plane Orientation, per-frame Plane Position and a Frame of Reference, the same as the Parametric Map's),
which viewers need to lay the segment on the source (OHIF 3.x fails on a SEG without them). For a CR
without a Frame of Reference that is a new detector-plane frame; its invalid Pixel Spacing (0\\0) is never
copied, and its Patient Orientation is kept.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from dicom_node.results.codes import FINDING_CATEGORY, GENERIC_FINDING, finding_code
from dicom_node.results.geometry import PlaneGeometry, geometry_reference, orientation_labels
from dicom_node.results.provenance import (
    algorithm_identification,
    contributing_equipment,
    derived_object_identity,
    mark_synthetic,
    truncate,
)
from editor import EditResult

FRACTIONAL_MAX = 255
# Recommended Display CIELab Value per segment: red first, like the overlay SC (viewers otherwise pick
# their own and say so: OHIF warns "RecommendedDisplayCIELabValue not found ... default color was used").
SEGMENT_COLOURS_RGB = ((230, 40, 40), (40, 120, 230), (240, 200, 30), (40, 190, 90), (200, 60, 200), (0, 200, 200))


def _segment(
    number: int, label: str, property_type: hd.sr.CodedConcept, result: EditResult
) -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=truncate(label, 64),
        segmented_property_category=FINDING_CATEGORY,
        segmented_property_type=property_type,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm_identification(result),
        display_color=hd.color.CIELabColor.from_rgb(*SEGMENT_COLOURS_RGB[(number - 1) % len(SEGMENT_COLOURS_RGB)]),
    )


def binary_segments(result: EditResult) -> tuple[list[str], np.ndarray]:
    """Segment labels and a (rows, cols, n) bool stack: one per finding, else the whole mask."""
    names = [n for n in result.finding_masks if n]
    if not names:
        return ["edit region"], np.asarray(result.mask, dtype=bool)[..., None]
    stack = np.stack([np.asarray(result.finding_masks[n], dtype=bool) for n in names], axis=-1)
    return names, stack


def _finish(seg: Dataset, source: Dataset, result: EditResult, geometry: PlaneGeometry, description: str,
            extra: str) -> Dataset:
    orientation = orientation_labels(source)
    if orientation is not None:
        seg.PatientOrientation = list(orientation)
    mark_synthetic(seg, source, result, series_description=description, extra=f"{extra}; {geometry.note}")
    return seg


def _fix_dimension_uids(seg: Dataset, uid: str) -> None:
    # highdicom draws a random Dimension Organization UID; a resend must be byte-for-byte the same.
    for item in seg.get("DimensionOrganizationSequence", []):
        item.DimensionOrganizationUID = uid
    for item in seg.get("DimensionIndexSequence", []):
        item.DimensionOrganizationUID = uid


def binary_seg(
    source: Dataset,
    result: EditResult,
    *,
    series_uid: str,
    sop_uid: str,
    dimension_uid: str,
    series_number: int,
    geometry: PlaneGeometry,
    institution_name: str | None = None,
) -> Dataset:
    names, stack = binary_segments(result)
    descriptions = [
        _segment(i, name, finding_code(name) if name != "edit region" else GENERIC_FINDING, result)
        for i, name in enumerate(names, start=1)
    ]
    seg = hd.seg.Segmentation(
        source_images=[geometry_reference(source, geometry)],
        pixel_array=stack[None].astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        **derived_object_identity(result, series_uid=series_uid, sop_uid=sop_uid, series_number=series_number),
        content_label="X2X_MASK",
        content_description=truncate(f"SYNTHETIC edit mask M: {result.instruction.canonical()}", 64),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        omit_empty_frames=bool(stack.any()),  # an all-empty mask still gets its frames
        contributing_equipment=[contributing_equipment(result, institution_name)],
    )
    _fix_dimension_uids(seg, dimension_uid)
    return _finish(
        seg, source, result, geometry, f"X2X mask: {result.instruction.canonical()}",
        "segments: edit mask M per finding",
    )


def fractional_seg(
    source: Dataset,
    result: EditResult,
    *,
    series_uid: str,
    sop_uid: str,
    dimension_uid: str,
    series_number: int,
    geometry: PlaneGeometry,
    institution_name: str | None = None,
) -> Dataset:
    names = list(result.finding_masks) or []
    property_type = finding_code(names[0]) if len(names) == 1 else GENERIC_FINDING
    label = "guidance G: " + (", ".join(names) if names else "edit")
    guidance = np.clip(np.asarray(result.guidance, dtype=np.float32), 0.0, 1.0)
    seg = hd.seg.Segmentation(
        source_images=[geometry_reference(source, geometry)],
        pixel_array=guidance[None, ..., None],
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
        fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
        max_fractional_value=FRACTIONAL_MAX,
        segment_descriptions=[_segment(1, label, property_type, result)],
        **derived_object_identity(result, series_uid=series_uid, sop_uid=sop_uid, series_number=series_number),
        content_label="X2X_GUIDANCE",
        content_description=truncate(f"SYNTHETIC guidance map G: {result.instruction.canonical()}", 64),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        omit_empty_frames=False,
        contributing_equipment=[contributing_equipment(result, institution_name)],
    )
    _fix_dimension_uids(seg, dimension_uid)
    return _finish(
        seg,
        source,
        result,
        geometry,
        f"X2X guidance map: {result.instruction.canonical()}",
        "fractional PROBABILITY segment: guidance G = prior x relevance, stored round(255 G)",
    )


"""The guidance map G as a Parametric Map (float32, [0, 1], unitless "class activation").

The Parametric Map IOD needs a Frame of Reference and plane geometry: the job's one plane geometry, shared
with its two Segmentations (geometry.py; a new detector-plane frame when the source, a CR/DX, has none).
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from dicom_node.results.codes import GUIDANCE_QUANTITY, UNITLESS
from dicom_node.results.geometry import PlaneGeometry, geometry_reference, orientation_labels
from dicom_node.results.provenance import (
    contributing_equipment,
    derivation_description,
    derived_object_identity,
    mark_synthetic,
    truncate,
)
from editor import EditResult


def parametric_map(
    source: Dataset,
    result: EditResult,
    *,
    series_uid: str,
    sop_uid: str,
    geometry: PlaneGeometry,
    dimension_uid: str,
    series_number: int,
    institution_name: str | None = None,
) -> Dataset:
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="X2X_G",
        lut_explanation="InstructX2X guidance map G = region prior x relevance, 0..1",
        unit=UNITLESS,
        value_range=(0.0, 1.0),
        slope=1.0,
        intercept=0.0,
        quantity_definition=GUIDANCE_QUANTITY,
    )
    guidance = np.clip(np.asarray(result.guidance, dtype=np.float32), 0.0, 1.0)
    pm = hd.pm.ParametricMap(
        source_images=[geometry_reference(source, geometry)],
        pixel_array=guidance[None],
        **derived_object_identity(result, series_uid=series_uid, sop_uid=sop_uid, series_number=series_number),
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.5, window_width=1.0)],
        transfer_syntax_uid=ExplicitVRLittleEndian,
        content_label="X2X_GUIDANCE",
        content_description=truncate(f"SYNTHETIC guidance map G: {result.instruction.canonical()}", 64),
        pixel_measures=geometry.pixel_measures,
        plane_orientation=geometry.plane_orientation,
        plane_positions=[geometry.plane_position],
        contributing_equipment=[contributing_equipment(result, institution_name)],
    )
    for item in pm.get("DimensionOrganizationSequence", []):
        item.DimensionOrganizationUID = dimension_uid
    for item in pm.get("DimensionIndexSequence", []):
        item.DimensionOrganizationUID = dimension_uid
    orientation = orientation_labels(source)
    if orientation is not None and "PatientOrientation" in pm:
        pm.PatientOrientation = list(orientation)
    mark_synthetic(
        pm,
        source,
        result,
        series_description=f"X2X guidance map (PM): {result.instruction.canonical()}",
        general_image=False,
    )
    # The Parametric Map IOD has no General Image module: say the derivation in the Derivation
    # Image functional group the map already carries, and the frame's nature in the image comments.
    description = derivation_description(result, geometry.note)
    for group in (pm.get("SharedFunctionalGroupsSequence", []), pm.get("PerFrameFunctionalGroupsSequence", [])):
        for item in group:
            for derivation in item.get("DerivationImageSequence", []):
                derivation.DerivationDescription = description
    return pm

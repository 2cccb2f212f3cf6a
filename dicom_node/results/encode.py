"""The five DICOM objects of one edit, keyed by kind, with UIDs derived from the edit's job key."""

from __future__ import annotations

import logging
import warnings
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom.dataset import Dataset

from dicom_node.results.geometry import plane_geometry
from dicom_node.results.overlay import overlay_sc
from dicom_node.results.pmap import parametric_map
from dicom_node.results.provenance import carry_lossy_compression, stamp_edit_time
from dicom_node.results.sc import counterfactual_sc
from dicom_node.results.seg import binary_seg, fractional_seg
from dicom_node.results.uids import derive_uid, series_number
from editor import EditResult

if TYPE_CHECKING:
    from dicom_node.config import Settings

# highdicom logs every module it copies at INFO; keep the node's log about the node.
logging.getLogger("highdicom").setLevel(logging.WARNING)

# kind -> file name; the order is the Series Number's last digit (1..5)
KINDS = ("counterfactual", "seg", "fseg", "pmap", "overlay")
FILE_NAMES = {kind: f"{kind}.dcm" for kind in KINDS}


def encode_results(
    source_ds: Dataset,
    result: EditResult,
    *,
    job_key: str,
    settings: Settings | None = None,
    edit_time: datetime | None = None,
    overlay: np.ndarray | None = None,
) -> dict[str, Dataset]:
    """The five objects for `result`, keyed by kind (KINDS order). Deterministic UIDs from job_key; the
    Series / Content Date and Time of all five are `edit_time` (default: now). `overlay`: the overlay_rgb
    image, when the caller has it already."""
    root = settings.results.uid_root if settings is not None else None
    institution = settings.results.institution_name if settings is not None else None

    def uid(purpose: str) -> str:
        return derive_uid(job_key, purpose, root)

    def common(kind: str) -> dict[str, Any]:
        return {
            "series_uid": uid(f"{kind}.series"),
            "sop_uid": uid(f"{kind}.sop"),
            "series_number": series_number(job_key, KINDS.index(kind) + 1),
            "institution_name": institution,
        }

    # One plane geometry (and Frame of Reference) for the SEGs and the Parametric Map of the job. The
    # purpose string predates the SEGs' use of it: kept, so a re-encoded job keeps its frame UID.
    geometry = plane_geometry(source_ds, uid("pmap.frame"))
    with warnings.catch_warnings():
        # highdicom warns about single-component person names copied from the source (e.g. the
        # chest CR's Referring Physician "ward"): source data, reproduced as it is.
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        objects = {
            "counterfactual": counterfactual_sc(source_ds, result, **common("counterfactual")),
            "seg": binary_seg(source_ds, result, geometry=geometry, dimension_uid=uid("seg.dimension"),
                              **common("seg")),
            "fseg": fractional_seg(source_ds, result, geometry=geometry, dimension_uid=uid("fseg.dimension"),
                                   **common("fseg")),
            "pmap": parametric_map(source_ds, result, geometry=geometry, dimension_uid=uid("pmap.dimension"),
                                   **common("pmap")),
            "overlay": overlay_sc(source_ds, result, rgb=overlay, **common("overlay")),
        }
    when = edit_time or datetime.now(timezone.utc)
    for ds in objects.values():
        stamp_edit_time(ds, source_ds, when)
        carry_lossy_compression(ds, source_ds)
    return objects


def output_uids(datasets: dict[str, Dataset]) -> dict[str, dict[str, str]]:
    return {
        kind: {"series": str(ds.SeriesInstanceUID), "sop": str(ds.SOPInstanceUID), "sop_class": str(ds.SOPClassUID)}
        for kind, ds in datasets.items()
    }

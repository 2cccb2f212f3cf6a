"""EditResult -> the five DICOM objects the node returns to the PACS, plus previews.

Objects (file names in a job's results folder): counterfactual.dcm (Secondary Capture of the edited
image), seg.dcm (BINARY SEG of the mask M), fseg.dcm (FRACTIONAL SEG of G), pmap.dcm (Parametric Map
of G), overlay.dcm (RGB SC: source grey + G red). All share the source's study, each in its own new
series, all with UIDs derived from the job's idempotency key.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset

from dicom_node.results import uids

if TYPE_CHECKING:
    from dicom_node.config import Settings
    from editor.types import EditResult

# highdicom logs every module it copies at INFO; keep the node's log about the node.
logging.getLogger("highdicom").setLevel(logging.WARNING)

# kind -> file name; the order is the Series Number's last digit (1..5)
KINDS = ("counterfactual", "seg", "fseg", "pmap", "overlay")
FILE_NAMES = {kind: f"{kind}.dcm" for kind in KINDS}
PREVIEW_NAMES = ("source.png", "counterfactual.png", "overlay.png")


def encode_results(
    source_ds: Dataset, result: EditResult, *, job_key: str, settings: Settings | None = None
) -> dict[str, Dataset]:
    """The five objects for `result`, keyed by kind (KINDS order). Deterministic UIDs from job_key."""
    root = settings.results.uid_root if settings is not None else None
    institution = settings.results.institution_name if settings is not None else None
    with warnings.catch_warnings():
        # highdicom warns about single-component person names copied from the source (e.g. the
        # chest CR's Referring Physician "ward"): source data, reproduced as it is.
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        return _encode(source_ds, result, job_key, root, institution)


def _encode(
    source_ds: Dataset, result: EditResult, job_key: str, root: str | None, institution: str | None
) -> dict[str, Dataset]:
    from dicom_node.results.overlay import overlay_sc
    from dicom_node.results.pmap import parametric_map
    from dicom_node.results.sc import counterfactual_sc
    from dicom_node.results.seg import binary_seg, fractional_seg

    def uid(purpose: str) -> str:
        return uids.derive_uid(job_key, purpose, root)

    def common(kind: str) -> dict[str, Any]:
        return {
            "series_uid": uid(f"{kind}.series"),
            "sop_uid": uid(f"{kind}.sop"),
            "series_number": uids.series_number(job_key, KINDS.index(kind) + 1),
            "institution_name": institution,
        }

    return {
        "counterfactual": counterfactual_sc(source_ds, result, **common("counterfactual")),
        "seg": binary_seg(source_ds, result, dimension_uid=uid("seg.dimension"), **common("seg")),
        "fseg": fractional_seg(source_ds, result, dimension_uid=uid("fseg.dimension"), **common("fseg")),
        "pmap": parametric_map(
            source_ds, result, frame_uid=uid("pmap.frame"), dimension_uid=uid("pmap.dimension"), **common("pmap")
        ),
        "overlay": overlay_sc(source_ds, result, **common("overlay")),
    }


def output_uids(datasets: dict[str, Dataset]) -> dict[str, dict[str, str]]:
    return {
        kind: {"series": str(ds.SeriesInstanceUID), "sop": str(ds.SOPInstanceUID), "sop_class": str(ds.SOPClassUID)}
        for kind, ds in datasets.items()
    }


def _atomic_write(path: Path, write: object) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)  # type: ignore[operator]
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    tmp.replace(path)


def write_results(datasets: dict[str, Dataset], out_dir: Path) -> dict[str, Path]:
    """Write each object as <kind>.dcm (DICOM file with meta header), atomically; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for kind, ds in datasets.items():
        path = out_dir / FILE_NAMES[kind]
        _atomic_write(path, lambda p, ds=ds: ds.save_as(p, enforce_file_format=True))
        paths[kind] = path
    return paths


def result_files(out_dir: Path) -> dict[str, Path] | None:
    """The five files if all of them are already in out_dir (a previous attempt encoded them)."""
    paths = {kind: out_dir / FILE_NAMES[kind] for kind in KINDS}
    return paths if all(p.is_file() and p.stat().st_size > 0 for p in paths.values()) else None


def write_previews(source_ds: Dataset, result: EditResult, out_dir: Path) -> list[Path]:
    """source.png, counterfactual.png (both through the source's own display mapping), overlay.png."""
    from dicom_node.results.display import display_image, save_png
    from dicom_node.results.overlay import overlay_rgb, source_display

    out_dir.mkdir(parents=True, exist_ok=True)
    grey = source_display(source_ds, result)
    images = {
        "source.png": display_image(source_ds, source_ds.pixel_array),
        "counterfactual.png": display_image(source_ds, result.counterfactual),
        "overlay.png": overlay_rgb(grey, result.guidance),
    }
    paths = []
    for name, image in images.items():
        save_png(image, out_dir / name)
        paths.append(out_dir / name)
    return paths


def write_summary(result: EditResult, datasets: dict[str, Dataset], out_dir: Path) -> Path:
    summary = result.summary() | {"objects": output_uids(datasets)}
    path = out_dir / "result.json"
    path.write_text(json.dumps(summary, indent=2, default=str))
    return path


def write_dicom_outputs(
    source_ds: Dataset, result: EditResult, out_dir: Path, settings: Settings | None = None
) -> dict[str, Path]:
    """For `x2x edit SRC.dcm --out DIR`: the five objects into DIR, UIDs keyed like a node job."""
    from dicom_node.jobs.store import idempotency_key

    key = idempotency_key(
        str(source_ds.SOPInstanceUID),
        result.instruction.canonical(),
        result.model_hash,
        result.seed,
        result.params.to_dict(),
    )
    return write_results(encode_results(source_ds, result, job_key=key, settings=settings), Path(out_dir))


def is_dicom_file(path: Path) -> bool:
    """DICOM Part 10 file (preamble + DICM), or a .dcm file without one."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM" or Path(path).suffix.lower() == ".dcm"


def write_dicom_outputs_for_file(
    src: Path, result: EditResult, out_dir: Path, settings: Settings | None = None
) -> dict[str, Path] | None:
    """`x2x edit`'s hook: the five objects when `src` is DICOM, None for PNG / JPEG / .npy sources."""
    if not is_dicom_file(src):
        return None
    from pydicom import dcmread

    return write_dicom_outputs(dcmread(src), result, out_dir, settings)

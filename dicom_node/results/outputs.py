"""Every file one edit leaves in its folder, written by one function for every path that edits
(the node's pipeline, `x2x batch`, `x2x edit`).

    counterfactual.dcm seg.dcm fseg.dcm pmap.dcm overlay.dcm   the five objects (DICOM sources only)
    source.png counterfactual.png overlay.png                   previews, through the editor's own
                                                                display mapping (what the editor saw)
    guidance_overlay.png mask.png relevance.npy guidance.npy    analysis files (`x2x edit`), full size
    result.json                                                 EditResult.summary() + object UIDs

Previews and result.json are written first and the five objects last, each atomically: the five
.dcm files being there is what marks an edit "encoded" (`result_files`), so an attempt interrupted
half way is redone, never half-sent.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset

from dicom_node.results.encode import FILE_NAMES, KINDS, encode_results, output_uids
from dicom_node.results.overlay import overlay_rgb
from editor import DisplayMapping, EditResult, SourceImage, guidance_overlay, to_uint8

if TYPE_CHECKING:
    from dicom_node.config import Settings

PREVIEW_NAMES = ("source.png", "counterfactual.png", "overlay.png")
ANALYSIS_NAMES = ("guidance_overlay.png", "mask.png", "relevance.npy", "guidance.npy")


@dataclass(frozen=True)
class OutputSet:
    """Which files to write. The node and `x2x batch` keep small previews; `x2x edit` keeps everything
    at full size for analysis."""

    previews: bool = True
    analysis: bool = False
    preview_max_side: int | None = 1024  # None = native size


NODE_OUTPUTS = OutputSet()
EDIT_OUTPUTS = OutputSet(analysis=True, preview_max_side=None)


@dataclass
class WrittenOutputs:
    dicom: dict[str, Path] = field(default_factory=dict)  # kind -> path; empty for non-DICOM sources
    files: list[Path] = field(default_factory=list)  # previews, analysis files, result.json
    uids: dict[str, dict[str, str]] = field(default_factory=dict)  # output_uids of the five objects

    @property
    def all_paths(self) -> list[Path]:
        return [*self.dicom.values(), *self.files]


def _atomic(path: Path, write: Callable[[Path], object]) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    tmp.replace(path)
    return path


def _png(image: np.ndarray, path: Path, max_side: int | None) -> Path:
    """Grey [0, 1] (rows, cols) or uint8 RGB (rows, cols, 3) -> PNG, downscaled to max_side if given."""
    from PIL import Image

    arr = image if image.dtype == np.uint8 else to_uint8(image)
    img = Image.fromarray(arr)
    if max_side is not None and max(img.size) > max_side:
        scale = max_side / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.Resampling.BILINEAR)
    return _atomic(path, lambda p: img.save(p, format="PNG"))


def _npy(array: np.ndarray, path: Path) -> Path:
    def write(p: Path) -> None:
        with open(p, "wb") as fh:
            np.save(fh, np.asarray(array, dtype=np.float32))

    return _atomic(path, write)


def write_outputs(
    result: EditResult,
    out_dir: Path,
    *,
    source: SourceImage,
    source_ds: Dataset | None,
    job_key: str,
    settings: Settings | None = None,
    which: OutputSet = NODE_OUTPUTS,
    edit_time: datetime | None = None,
) -> WrittenOutputs:
    """Write the edit's files into `out_dir` (see the module docstring); the five objects only when
    `source_ds` (the source's DICOM data set) is given, with UIDs derived from `job_key` and the
    Series / Content Date and Time `edit_time` (default: now, i.e. as the edit finishes)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = WrittenOutputs()
    edit_time = edit_time or datetime.now(timezone.utc)
    datasets = (encode_results(source_ds, result, job_key=job_key, settings=settings, edit_time=edit_time)
                if source_ds is not None else {})
    written.uids = output_uids(datasets)

    mapping = DisplayMapping.from_source(source)
    source_grey = (result.source_display if result.source_display is not None
                   and result.source_display.shape == result.guidance.shape else mapping.to_display(source.pixels))
    if which.previews:
        size = which.preview_max_side
        written.files += [
            _png(source_grey, out_dir / "source.png", size),
            _png(mapping.to_display(result.counterfactual), out_dir / "counterfactual.png", size),
            _png(overlay_rgb(source_grey, result.guidance), out_dir / "overlay.png", size),
        ]
    if which.analysis:
        written.files += [
            _png(guidance_overlay(source_grey, result.guidance, result.params.tau), out_dir / "guidance_overlay.png",
                 None),
            _png(np.asarray(result.mask, dtype=np.uint8) * 255, out_dir / "mask.png", None),
            _npy(result.relevance, out_dir / "relevance.npy"),
            _npy(result.guidance, out_dir / "guidance.npy"),
        ]
    summary = result.summary() | {"edit_time": edit_time.isoformat(), "objects": written.uids}
    written.files.append(_atomic(out_dir / "result.json",
                                 lambda p: p.write_text(json.dumps(summary, indent=2, default=str))))
    written.dicom = save_objects(datasets, out_dir)  # last: their presence marks the edit as encoded
    return written


def save_objects(datasets: dict[str, Dataset], out_dir: Path) -> dict[str, Path]:
    """Each object as <kind>.dcm (Part 10 file), atomically; returns kind -> path."""
    out_dir.mkdir(parents=True, exist_ok=True)

    def writer(ds: Dataset) -> Callable[[Path], None]:
        return lambda p: ds.save_as(p, enforce_file_format=True)

    return {kind: _atomic(out_dir / FILE_NAMES[kind], writer(ds)) for kind, ds in datasets.items()}


def result_files(out_dir: Path) -> dict[str, Path] | None:
    """The five files if all of them are already in out_dir (a previous attempt encoded them)."""
    paths = {kind: out_dir / FILE_NAMES[kind] for kind in KINDS}
    return paths if all(p.is_file() and p.stat().st_size > 0 for p in paths.values()) else None


def is_dicom_file(path: Path) -> bool:
    """DICOM Part 10 file (preamble + DICM), or a .dcm file without one."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM" or Path(path).suffix.lower() == ".dcm"

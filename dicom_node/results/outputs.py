"""Every file one edit leaves in its folder, written by one function for every path that edits
(the node's pipeline, `x2x batch`, `x2x edit`).

    counterfactual.dcm seg.dcm fseg.dcm pmap.dcm overlay.dcm   the five objects (DICOM sources only)
    source.png counterfactual.png overlay.png                   previews, through the editor's own
                                                                display mapping (what the editor saw)
    guidance_overlay.png mask.png relevance.npy guidance.npy    analysis files (`x2x edit`), full size
    result.json                                                 EditResult.summary() + object UIDs
    edit-result.npz                                             the node's hand-over from its edit stage
                                                                to its encode (removed once encoded)

Every file is written to a temporary name, all of them are made durable together (their fsyncs
run concurrently, so the file system commits them as a group instead of one journal commit per file),
then they are renamed into place: previews and result.json first, the five objects last. The five
.dcm files being there is what marks an edit "encoded" (`result_files`), so an attempt interrupted
half way is redone, never half-sent. `WrittenOutputs.timings` says where the time went.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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
EDIT_RESULT_NAME = "edit-result.npz"


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
    timings: dict[str, float] = field(default_factory=dict)  # seconds: objects, previews, write

    @property
    def all_paths(self) -> list[Path]:
        return [*self.dicom.values(), *self.files]


Writer = Callable[[Path], object]
PREVIEW_PNG_LEVEL = 1  # zlib level of the previews: ~5x faster than PIL's default 6, ~15% larger


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _durable(items: list[tuple[Path, Writer]]) -> list[Path]:
    """Write every (path, writer) to a temp name, fsync them all at once, then rename them in order."""
    if not items:
        return []
    temps = [_tmp_name(path) for path, _ in items]
    for tmp, (_, write) in zip(temps, items, strict=True):
        write(tmp)
    # Concurrent fsyncs (the GIL is released while each waits) share journal commits.
    with ThreadPoolExecutor(max_workers=min(8, len(temps)), thread_name_prefix="x2x-fsync") as pool:
        list(pool.map(_fsync_file, temps))
    for tmp, (path, _) in zip(temps, items, strict=True):
        tmp.replace(path)
    folders = {path.parent for path, _ in items}
    for folder in folders:  # the renames themselves
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return [path for path, _ in items]


def _png(image: np.ndarray, max_side: int | None) -> Writer:
    """Grey [0, 1] (rows, cols) or uint8 RGB (rows, cols, 3) -> a PNG writer, downscaled to max_side."""
    from PIL import Image

    arr = image if image.dtype == np.uint8 else to_uint8(image)
    img = Image.fromarray(arr)
    if max_side is not None and max(img.size) > max_side:
        scale = max_side / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.Resampling.BILINEAR)
    return lambda p: img.save(p, format="PNG", compress_level=PREVIEW_PNG_LEVEL)


def _npy(array: np.ndarray) -> Writer:
    def write(p: Path) -> None:
        with open(p, "wb") as fh:
            np.save(fh, np.asarray(array, dtype=np.float32))

    return write


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
    Series / Content Date and Time `edit_time` (default: now, i.e. as the objects are made)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = WrittenOutputs()
    t0 = time.perf_counter()
    edit_time = edit_time or datetime.now(timezone.utc)
    mapping = DisplayMapping.from_source(source)
    source_grey = (result.source_display if result.source_display is not None
                   and result.source_display.shape == result.guidance.shape else mapping.to_display(source.pixels))
    overlay = overlay_rgb(source_grey, result.guidance)  # one overlay for the SC and its preview
    datasets = (encode_results(source_ds, result, job_key=job_key, settings=settings, edit_time=edit_time,
                               overlay=overlay) if source_ds is not None else {})
    written.uids = output_uids(datasets)
    t1 = time.perf_counter()

    files: list[tuple[Path, Writer]] = []
    if which.previews:
        size = which.preview_max_side
        files += [
            (out_dir / "source.png", _png(source_grey, size)),
            (out_dir / "counterfactual.png", _png(mapping.to_display(result.counterfactual), size)),
            (out_dir / "overlay.png", _png(overlay, size)),
        ]
    if which.analysis:
        files += [
            (out_dir / "guidance_overlay.png", _png(guidance_overlay(source_grey, result.guidance, result.params.tau),
                                                    None)),
            (out_dir / "mask.png", _png(np.asarray(result.mask, dtype=np.uint8) * 255, None)),
            (out_dir / "relevance.npy", _npy(result.relevance)),
            (out_dir / "guidance.npy", _npy(result.guidance)),
        ]
    summary = result.summary() | {"edit_time": edit_time.isoformat(), "objects": written.uids}
    files.append((out_dir / "result.json", lambda p: p.write_text(json.dumps(summary, indent=2, default=str))))
    t2 = time.perf_counter()
    # last: the five objects' presence marks the edit as encoded
    paths = _durable(files + _object_writers(datasets, out_dir))
    written.files = paths[: len(files)]
    written.dicom = dict(zip(datasets, paths[len(files):], strict=True))
    written.timings = {"objects_s": round(t1 - t0, 4), "previews_s": round(t2 - t1, 4),
                       "write_s": round(time.perf_counter() - t2, 4)}
    return written


def _object_writers(datasets: dict[str, Dataset], out_dir: Path) -> list[tuple[Path, Writer]]:
    def writer(ds: Dataset) -> Writer:
        return lambda p: ds.save_as(p, enforce_file_format=True)

    return [(out_dir / FILE_NAMES[kind], writer(ds)) for kind, ds in datasets.items()]


def save_objects(datasets: dict[str, Dataset], out_dir: Path) -> dict[str, Path]:
    """Each object as <kind>.dcm (Part 10 file), atomically; returns kind -> path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return dict(zip(datasets, _durable(_object_writers(datasets, out_dir)), strict=True))


def edit_result_path(out_dir: Path) -> Path:
    """Where the node's edit stage leaves the edit's arrays for the delivery stage to encode."""
    return out_dir / EDIT_RESULT_NAME


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

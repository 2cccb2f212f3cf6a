"""A job's two pieces of work, as functions of plain inputs: the edit (read the source, edit it, leave
the edit's arrays in the job's results folder) and the encode (the five DICOM objects and previews made
from those arrays).

Plain (picklable) inputs and outputs, so the same code runs in the worker (`queue.edit_isolation =
"none"`) and in the worker's memory-limited child processes (jobs/sandbox.py for edits,
jobs/encode_process.py for encodes). They are separate so that the edit stage (GPU) hands over as soon
as the model is done, and the next edit starts while the delivery stage encodes (CPU) and sends.
Several jobs can be edited together (`[worker] batch_size`): one model pass for all of them, each
job's outcome its own.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom import dcmread

from dicom_node.results import edit_result_path, write_outputs
from dicom_node.results.geometry import check_copy_depth
from editor import EditItem, EditParams, load_edit_result, save_edit_result, source_from_dataset

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from dicom_node.config import Settings
    from dicom_node.db.tables import Job
    from editor import Editor, SourceImage


class EditFailed(RuntimeError):
    """The edit failed where it ran (the edit process); the message is already the job's reason."""


@dataclass(frozen=True)
class EditInput:
    job_id: int
    source_path: str
    instruction: str
    seed: int
    params: dict[str, Any]
    idempotency_key: str
    timings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, job: Job) -> EditInput:
        return cls(job.id, job.source_path, job.instruction, job.seed, dict(job.params or {}), job.idempotency_key,
                   dict(job.timings or {}))


@dataclass(frozen=True)
class EditOutput:
    """An edit done: its arrays are in the job's folder (`edit_result_path`), this is what the job records."""

    summary: dict[str, Any]
    timings: dict[str, Any]
    model_id: str
    model_hash: str


@dataclass(frozen=True)
class EncodeOutput:
    dicom: dict[str, Path]
    uids: dict[str, dict[str, str]]
    timings: dict[str, Any]


def read_source(source_path: str) -> tuple[Dataset, SourceImage]:
    source_ds = dcmread(source_path)
    check_copy_depth(source_ds)  # before anything copies it into the outputs (pydicom recurses)
    return source_ds, source_from_dataset(source_ds)


def edit_batch(editor: Editor, jobs: Sequence[tuple[EditInput, Path]]) -> list[EditOutput | Exception]:
    """Several jobs edited together (`Editor.edit_batch`: those that share a model grid and the
    parameters of `EditParams.batch_key()` run one UNet call per step), each job's arrays then saved
    in its folder.

    Per job, in order: its EditOutput, or the exception that stopped it (its source unreadable, its
    edit failed, its arrays not saved). One job's failure never stops the others. `edit_s` is the
    batch's edit time, shared (`edit_batch_size` says by how many)."""
    results: list[EditOutput | Exception | None] = [None] * len(jobs)
    items: list[EditItem] = []
    loaded: list[int] = []
    for index, (job, _out_dir) in enumerate(jobs):
        try:
            _source_ds, source = read_source(job.source_path)
        except Exception as exc:  # noqa: BLE001 - this job's problem only
            results[index] = exc
            continue
        loaded.append(index)
        items.append(EditItem(source, job.instruction, job.seed, EditParams.from_dict(job.params)))
    t0 = time.monotonic()
    edited = editor.edit_batch(items, return_exceptions=True) if items else []
    edit_s = round(time.monotonic() - t0, 3)
    for index, result in zip(loaded, edited, strict=True):
        job, out_dir = jobs[index]
        if isinstance(result, Exception):
            results[index] = result
            continue
        try:
            t1 = time.monotonic()
            out_dir.mkdir(parents=True, exist_ok=True)
            save_edit_result(result, edit_result_path(out_dir))
            save_s = round(time.monotonic() - t1, 3)
        except Exception as exc:  # noqa: BLE001 - a full disk, a removed folder: this job's
            results[index] = exc
            continue
        timings = dict(job.timings) | {"edit_s": edit_s, "edit_detail": {"save_arrays_s": save_s}}
        if len(items) > 1:
            timings["edit_batch_size"] = len(items)
        results[index] = EditOutput(
            summary=result.summary(),
            timings=timings | {f"editor_{k}": v for k, v in result.timings.items()},
            model_id=result.model_id,
            model_hash=result.model_hash,
        )
    done = [r for r in results if r is not None]
    assert len(done) == len(jobs), "every job has its output or its exception"
    return done


def encode_job(job: EditInput, out_dir: Path, settings: Settings) -> EncodeOutput:
    """The five objects and previews of an edited job, made from the arrays its edit left in `out_dir`
    and its source instance, written durably; the arrays file is removed once they are (the objects
    are the record). EditResultFileError when the arrays are gone or torn: the job is edited again."""
    t0 = time.monotonic()
    arrays = edit_result_path(out_dir)
    result = load_edit_result(arrays)
    source_ds, source = read_source(job.source_path)
    t1 = time.monotonic()
    written = write_outputs(result, out_dir, source=source, source_ds=source_ds, job_key=job.idempotency_key,
                            settings=settings)
    arrays.unlink(missing_ok=True)
    detail = {"read_s": round(t1 - t0, 4)} | written.timings  # + objects_s, previews_s, write_s
    return EncodeOutput(dicom=written.dicom, uids=written.uids,
                        timings={"encode_s": round(time.monotonic() - t0, 3), "encode_detail": detail})

"""The edit step of a job, as a function of plain inputs: read the source, edit it, write the outputs.

Plain (picklable) inputs and outputs, so the same code runs in the worker (`queue.edit_isolation =
"none"`) and in the worker's memory-limited child process (jobs/sandbox.py). `on_edited` runs between
the edit and the writing (the pipeline's transition to "encoding": it raises when the job was
cancelled meanwhile, and then nothing is written). Several jobs can be edited together
(`[worker] batch_size`): one model pass for all of them, each job's outcome its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom import dcmread

from dicom_node.results import write_outputs
from dicom_node.results.geometry import check_copy_depth
from editor import EditItem, EditParams, source_from_dataset

if TYPE_CHECKING:
    from dicom_node.config import Settings
    from dicom_node.db.tables import Job
    from editor import Editor


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
    dicom: dict[str, Path]
    summary: dict[str, Any]
    uids: dict[str, dict[str, str]]
    timings: dict[str, Any]
    model_id: str
    model_hash: str


def edit_and_write_batch(editor: Editor, jobs: Sequence[tuple[EditInput, Path]], settings: Settings,
                         on_edited: Callable[[int], None]) -> list[EditOutput | Exception]:
    """Several jobs edited together (`Editor.edit_batch`: those that share a model grid and the
    parameters of `EditParams.batch_key()` run one UNet call per step), each then written to its folder.

    Per job, in order: its EditOutput, or the exception that stopped it -- its source unreadable, its
    edit failed, or `on_edited(job_id)` raised (then nothing of it is written). One job's failure never
    stops the others. `edit_s` is the batch's edit time, shared (`edit_batch_size` says by how many)."""
    results: list[EditOutput | Exception | None] = [None] * len(jobs)
    items: list[EditItem] = []
    loaded: list[tuple[int, Any, Any]] = []  # (index, source data set, SourceImage)
    for index, (job, _out_dir) in enumerate(jobs):
        try:
            source_ds = dcmread(job.source_path)
            check_copy_depth(source_ds)  # before anything copies it into the outputs (pydicom recurses)
            source = source_from_dataset(source_ds)
        except Exception as exc:  # noqa: BLE001 - this job's problem only
            results[index] = exc
            continue
        loaded.append((index, source_ds, source))
        items.append(EditItem(source, job.instruction, job.seed, EditParams.from_dict(job.params)))
    t0 = time.monotonic()
    edited = editor.edit_batch(items, return_exceptions=True) if items else []
    edit_s = round(time.monotonic() - t0, 3)
    for (index, source_ds, source), result in zip(loaded, edited, strict=True):
        job, out_dir = jobs[index]
        if isinstance(result, Exception):
            results[index] = result
            continue
        try:
            on_edited(job.job_id)
            t1 = time.monotonic()
            written = write_outputs(result, out_dir, source=source, source_ds=source_ds,
                                    job_key=job.idempotency_key, settings=settings)
            encode_s = round(time.monotonic() - t1, 3)
        except Exception as exc:  # noqa: BLE001 - a cancel (Stopped) or a write error: this job's
            results[index] = exc
            continue
        timings = dict(job.timings) | {"edit_s": edit_s, "encode_s": encode_s}
        if len(items) > 1:
            timings["edit_batch_size"] = len(items)
        results[index] = EditOutput(
            dicom=written.dicom,
            summary=result.summary(),
            uids=written.uids,
            timings=timings | {f"editor_{k}": v for k, v in result.timings.items()},
            model_id=result.model_id,
            model_hash=result.model_hash,
        )
    done = [r for r in results if r is not None]
    assert len(done) == len(jobs), "every job has its output or its exception"
    return done

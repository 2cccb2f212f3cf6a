"""The edit step of a job, as a function of plain inputs: read the source, edit it, write the outputs.

Plain (picklable) inputs and outputs, so the same code runs in the worker (`queue.edit_isolation =
"none"`) and in the worker's memory-limited child process (jobs/sandbox.py). `on_edited` runs between
the edit and the writing (the pipeline's transition to "encoding": it raises when the job was
cancelled meanwhile, and then nothing is written).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom import dcmread

from dicom_node.results import write_outputs
from dicom_node.results.geometry import check_copy_depth
from editor import EditParams, source_from_dataset

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


def edit_and_write(editor: Editor, job: EditInput, out_dir: Path, settings: Settings,
                   on_edited: Callable[[], None]) -> EditOutput:
    timings = dict(job.timings)
    t0 = time.monotonic()
    source_ds = dcmread(job.source_path)
    check_copy_depth(source_ds)  # before anything copies it into the outputs (pydicom recurses)
    source = source_from_dataset(source_ds)
    result = editor.edit(source, job.instruction, seed=job.seed, params=EditParams.from_dict(job.params))
    timings["edit_s"] = round(time.monotonic() - t0, 3)
    on_edited()
    t0 = time.monotonic()
    written = write_outputs(result, out_dir, source=source, source_ds=source_ds, job_key=job.idempotency_key,
                            settings=settings)
    timings["encode_s"] = round(time.monotonic() - t0, 3)
    return EditOutput(
        dicom=written.dicom,
        summary=result.summary(),
        uids=written.uids,
        timings=timings | {f"editor_{k}": v for k, v in result.timings.items()},
        model_id=result.model_id,
        model_hash=result.model_hash,
    )

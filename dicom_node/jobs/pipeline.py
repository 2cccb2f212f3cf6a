"""One attempt of one job: edit -> encode (five DICOM objects + previews) -> send -> done.

Idempotent by construction: the objects' UIDs come from the job's idempotency key, and when all five
objects are already on disk from an earlier attempt the edit is skipped and only the send is repeated.
A failed send is retried with exponential backoff by the dispatcher (JobOutcome.retry_in); after
settings.send.max_attempts the job is dead-lettered with the last error. Patient name / ID are never
logged (UIDs and job ids only).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicom_node.context import NodeContext
from dicom_node.jobs.store import (
    CANCELLED,
    DEAD_LETTER,
    DONE,
    EDITING,
    ENCODING,
    FAILED,
    SENDING,
    Job,
    utcnow,
)

log = logging.getLogger("x2x.jobs.pipeline")

NO_OP_STATES = (DONE, CANCELLED, DEAD_LETTER)


@dataclass(frozen=True)
class JobOutcome:
    state: str
    retry_in: float | None = None  # seconds until the next attempt, when the dispatcher should retry


def job_results_dir(ctx: NodeContext, job_id: int) -> Path:
    return ctx.settings.results_dir / str(job_id)


def backoff_seconds(ctx: NodeContext, attempts: int) -> float:
    """Delay before attempt `attempts + 1`: backoff x 2^(attempts-1), capped."""
    send = ctx.settings.send
    return float(min(send.backoff_seconds * (2 ** max(attempts - 1, 0)), send.backoff_max_seconds))


def _error_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()[:2000]


def _edit_params(job: Job) -> Any:
    from editor.types import EditParams

    known = {f.name for f in dataclasses.fields(EditParams)}
    params = dict(job.params or {})
    unknown = sorted(set(params) - known)
    if unknown:
        log.warning("job %s: ignoring unknown edit parameters %s", job.id, unknown)
    return EditParams(**{k: v for k, v in params.items() if k in known})


def _cancelled(ctx: NodeContext, job_id: int) -> bool:
    job = ctx.store.get(job_id)
    return job is None or job.state == CANCELLED


def _edit_and_encode(ctx: NodeContext, job: Job, out_dir: Path) -> dict[str, Path] | None:
    """Edit the source and write the five objects + previews; None if the job was cancelled meanwhile."""
    from pydicom import dcmread

    from dicom_node.results import encode_results, output_uids, write_previews, write_results, write_summary
    from editor.source import source_from_dataset

    timings: dict[str, float] = dict(job.timings or {})
    ctx.store.set_state(job.id, EDITING)
    t0 = time.monotonic()
    source_ds = dcmread(job.source_path)
    source = source_from_dataset(source_ds)
    result = ctx.editor().edit(source, job.instruction, seed=job.seed, params=_edit_params(job))
    timings["edit_s"] = round(time.monotonic() - t0, 3)
    if _cancelled(ctx, job.id):
        return None
    ctx.store.set_state(job.id, ENCODING)
    t0 = time.monotonic()
    datasets = encode_results(source_ds, result, job_key=job.idempotency_key, settings=ctx.settings)
    # previews and the summary first: the five .dcm files appearing is what marks "encoded".
    write_previews(source_ds, result, out_dir)
    write_summary(result, datasets, out_dir)
    paths = write_results(datasets, out_dir)
    timings["encode_s"] = round(time.monotonic() - t0, 3)
    ctx.store.update(
        job.id,
        result=result.summary(),
        output_uids=output_uids(datasets),
        timings=timings | {f"editor_{k}": v for k, v in result.timings.items()},
        model_id=result.model_id,
        model_hash=result.model_hash,
    )
    log.info("job %s encoded 5 objects in %s", job.id, out_dir)
    return paths


def _fail_send(ctx: NodeContext, job: Job, error: str) -> JobOutcome:
    from dicom_node.metrics import send_failures_total

    send_failures_total.inc()
    attempts = (job.attempts or 0) + 1
    if attempts >= ctx.settings.send.max_attempts:
        ctx.store.set_state(job.id, DEAD_LETTER, attempts=attempts, last_error=error, next_attempt_at=None)
        log.error("job %s dead-lettered after %d attempts: %s", job.id, attempts, error)
        return JobOutcome(DEAD_LETTER, None)
    delay = backoff_seconds(ctx, attempts)
    ctx.store.set_state(
        job.id,
        FAILED,
        attempts=attempts,
        last_error=error,
        next_attempt_at=utcnow() + dt.timedelta(seconds=delay),
    )
    log.warning("job %s send attempt %d failed (%s); retry in %.1f s", job.id, attempts, error, delay)
    return JobOutcome(FAILED, delay)


def _send(ctx: NodeContext, job: Job, paths: dict[str, Path]) -> JobOutcome:
    from dicom_node.send import SendError, get_sender, resolve_destination

    try:
        chosen = resolve_destination(ctx.settings, job_destination=job.destination, calling_ae=job.calling_ae)
        if chosen is None:
            ctx.store.set_state(job.id, DONE, last_error=None, next_attempt_at=None)
            log.info("job %s done: no destination configured, results kept in %s", job.id, paths["seg"].parent)
            return JobOutcome(DONE)
        name, dest = chosen
        sender = get_sender(dest, name=name, calling_ae=ctx.settings.node.ae_title)
    except SendError as exc:  # a configuration error does not heal by waiting: dead-letter now
        attempts = (job.attempts or 0) + 1
        ctx.store.set_state(job.id, DEAD_LETTER, attempts=attempts, last_error=str(exc), next_attempt_at=None)
        log.error("job %s dead-lettered: %s", job.id, exc)
        return JobOutcome(DEAD_LETTER)
    if _cancelled(ctx, job.id):
        return JobOutcome(CANCELLED)
    ctx.store.set_state(job.id, SENDING)
    t0 = time.monotonic()
    try:
        report = sender.send(list(paths.values()))
    except Exception as exc:  # noqa: BLE001 - any sender failure is a failed attempt, never a lost job
        return _fail_send(ctx, job, f"send to {name} failed: {_error_text(exc)}")
    if not report.ok:
        return _fail_send(ctx, job, report.error_summary())
    fresh = ctx.store.get(job.id)
    timings = dict(fresh.timings or {}) if fresh else {}
    timings["send_s"] = round(time.monotonic() - t0, 3)
    ctx.store.set_state(job.id, DONE, last_error=None, next_attempt_at=None, timings=timings)
    log.info("job %s done: %d objects delivered to %s", job.id, len(report.sent), name)
    return JobOutcome(DONE)


def run_job(ctx: NodeContext, job_id: int) -> JobOutcome:
    """One attempt of job `job_id` (see the module docstring)."""
    from dicom_node.results import result_files

    job = ctx.store.get(job_id)
    if job is None:
        raise KeyError(f"no job {job_id}")
    if job.state in NO_OP_STATES:
        return JobOutcome(job.state)
    out_dir = job_results_dir(ctx, job_id)
    paths = result_files(out_dir)
    if paths is None:
        try:
            paths = _edit_and_encode(ctx, job, out_dir)
        except Exception as exc:  # noqa: BLE001 - recorded on the job; an edit error is not retried
            log.error("job %s edit/encode failed: %s", job_id, type(exc).__name__, exc_info=True)
            ctx.store.set_state(
                job_id, FAILED, attempts=(job.attempts or 0) + 1, last_error=_error_text(exc), next_attempt_at=None
            )
            return JobOutcome(FAILED)
        if paths is None:
            return JobOutcome(CANCELLED)
        job = ctx.store.get(job_id) or job
    else:
        log.info("job %s: objects already encoded in %s, sending only", job_id, out_dir)
    return _send(ctx, job, paths)

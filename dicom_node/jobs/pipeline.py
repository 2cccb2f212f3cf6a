"""One attempt of one job: edit -> encode (five DICOM objects + previews) -> send -> done.

Every step starts with its state transition (jobs/states.py); when the transition does not apply —
an operator cancelled the job meanwhile — the attempt stops there, so a cancel is never overwritten.

Idempotent by construction: the objects' UIDs come from the job's idempotency key, and when all five
objects are already on disk from an earlier attempt the edit is skipped and only the send is repeated.
A failed send is retried with exponential backoff (JobOutcome.retry_in, queued by the task); after
settings.send.max_attempts the job is dead-lettered with the last error. Patient name / ID are never
logged (UIDs and job ids only).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicom_node import metrics
from dicom_node.context import NodeContext
from dicom_node.db.tables import Job, utcnow
from dicom_node.jobs.editing import EditFailed, EditInput, edit_and_write
from dicom_node.jobs.sandbox import sandbox_for
from dicom_node.jobs.states import Action, JobState
from dicom_node.results import result_files
from dicom_node.send import SendError, get_sender, resolve_destination

log = logging.getLogger("x2x.jobs.pipeline")

NO_OP_STATES = (JobState.DONE, JobState.CANCELLED, JobState.DEAD_LETTER)


@dataclass(frozen=True)
class JobOutcome:
    state: str
    retry_in: float | None = None  # seconds until the next attempt, when the task should queue one


class Stopped(Exception):
    """A transition did not apply: someone else (an operator's cancel) changed the job meanwhile."""

    def __init__(self, state: str | None):
        super().__init__(f"job is {state}")
        self.state = state or JobState.CANCELLED.value


def job_results_dir(ctx: NodeContext, job_id: int) -> Path:
    return ctx.settings.results_dir / str(job_id)


def backoff_seconds(ctx: NodeContext, attempts: int) -> float:
    """Delay before attempt `attempts + 1`: backoff x 2^(attempts-1), capped."""
    send = ctx.settings.send
    return float(min(send.backoff_seconds * (2 ** max(attempts - 1, 0)), send.backoff_max_seconds))


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, EditFailed):  # formatted where it happened (the edit process)
        return str(exc)[:2000]
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()[:2000]


def _step(ctx: NodeContext, job_id: int, action: Action, **values: Any) -> None:
    result = ctx.store.transition(job_id, action, **values)
    if not result.changed:
        raise Stopped(result.state)


def _edit_and_encode(ctx: NodeContext, job: Job, out_dir: Path) -> dict[str, Path]:
    """Edit the source and write the five objects + previews: in the worker's memory-limited child
    process (jobs/sandbox.py) unless `queue.edit_isolation = "none"`."""
    job_input = EditInput.of(job)

    def edited() -> None:
        _step(ctx, job.id, Action.ENCODE)

    if ctx.settings.queue.edit_isolation == "process":
        edited_out = sandbox_for(ctx.settings).run(job_input, out_dir, on_edited=edited)
    else:
        edited_out = edit_and_write(ctx.editor(), job_input, out_dir, ctx.settings, on_edited=edited)
    ctx.store.update(
        job.id,
        result=edited_out.summary,
        output_uids=edited_out.uids,
        timings=edited_out.timings,
        model_id=edited_out.model_id,
        model_hash=edited_out.model_hash,
    )
    log.info("job %s encoded 5 objects in %s", job.id, out_dir)
    return edited_out.dicom


def _fail(ctx: NodeContext, job: Job, error: str, *, retry: bool) -> JobOutcome:
    """Record a failed attempt: retried with backoff (send failures) until max_attempts, else dead-letter."""
    attempts = (job.attempts or 0) + 1
    if not retry:
        _step(ctx, job.id, Action.FAIL, attempts=attempts, last_error=error, next_attempt_at=None)
        return JobOutcome(JobState.FAILED.value)
    if attempts >= ctx.settings.send.max_attempts:
        _step(ctx, job.id, Action.DEAD_LETTER, attempts=attempts, last_error=error, next_attempt_at=None)
        log.error("job %s dead-lettered after %d attempts: %s", job.id, attempts, error)
        return JobOutcome(JobState.DEAD_LETTER.value)
    delay = backoff_seconds(ctx, attempts)
    _step(ctx, job.id, Action.FAIL, attempts=attempts, last_error=error,
          next_attempt_at=utcnow() + dt.timedelta(seconds=delay))
    log.warning("job %s send attempt %d failed (%s); retry in %.1f s", job.id, attempts, error, delay)
    return JobOutcome(JobState.FAILED.value, delay)


def _send(ctx: NodeContext, job: Job, paths: dict[str, Path]) -> JobOutcome:
    try:
        chosen = resolve_destination(ctx.settings, job_destination=job.destination, calling_ae=job.calling_ae)
        if chosen is None:
            _step(ctx, job.id, Action.FINISH, last_error=None, next_attempt_at=None)
            log.info("job %s done: no destination configured, results kept in %s", job.id, paths["seg"].parent)
            return JobOutcome(JobState.DONE.value)
        name, dest = chosen
        sender = get_sender(dest, name=name, calling_ae=ctx.settings.node.ae_title)
    except SendError as exc:  # a configuration error does not heal by waiting: dead-letter now
        _step(ctx, job.id, Action.DEAD_LETTER, attempts=(job.attempts or 0) + 1, last_error=str(exc),
              next_attempt_at=None)
        log.error("job %s dead-lettered: %s", job.id, exc)
        return JobOutcome(JobState.DEAD_LETTER.value)
    _step(ctx, job.id, Action.SEND)
    t0 = time.monotonic()
    try:
        report = sender.send(list(paths.values()))
    except Exception as exc:  # noqa: BLE001 - any sender failure is a failed attempt, never a lost job
        metrics.send_failures_total.inc()
        return _fail(ctx, job, f"send to {name} failed: {_error_text(exc)}", retry=True)
    if not report.ok:
        metrics.send_failures_total.inc()
        return _fail(ctx, job, report.error_summary(), retry=True)
    fresh = ctx.store.get(job.id)
    timings = dict(fresh.timings or {}) if fresh else {}
    timings["send_s"] = round(time.monotonic() - t0, 3)
    _step(ctx, job.id, Action.FINISH, last_error=None, next_attempt_at=None, timings=timings)
    log.info("job %s done: %d objects delivered to %s", job.id, len(report.sent), name)
    return JobOutcome(JobState.DONE.value)


def _begin(ctx: NodeContext, job: Job) -> None:
    """A job the Celery task claimed (with its lease) is editing already. Called directly (tests, a
    single-process embedding) on a job not yet claimed, the attempt claims it itself: a failed job's
    retry falls due now, then the claim."""
    if job.state == JobState.FAILED:
        _step(ctx, job.id, Action.QUEUE, next_attempt_at=None)
        job.state = JobState.QUEUED.value
    if job.state in (JobState.RECEIVED, JobState.QUEUED):
        _step(ctx, job.id, Action.CLAIM)


def run_job(ctx: NodeContext, job_id: int) -> JobOutcome:
    """One attempt of job `job_id` (see the module docstring)."""
    job = ctx.store.get(job_id)
    if job is None:
        raise KeyError(f"no job {job_id}")
    if job.state in NO_OP_STATES:
        return JobOutcome(job.state)
    out_dir = job_results_dir(ctx, job_id)
    try:
        _begin(ctx, job)
        paths = result_files(out_dir)
        if paths is None:
            try:
                paths = _edit_and_encode(ctx, job, out_dir)
            except Stopped:
                raise
            except Exception as exc:  # noqa: BLE001 - recorded on the job; an edit error is not retried
                log.error("job %s edit/encode failed: %s", job_id, type(exc).__name__, exc_info=True)
                return _fail(ctx, job, _error_text(exc), retry=False)
            job = ctx.store.get(job_id) or job
        else:
            log.info("job %s: objects already encoded in %s, sending only", job_id, out_dir)
        return _send(ctx, job, paths)
    except Stopped as stop:
        log.info("job %s stopped: it is %s now (cancelled meanwhile?)", job_id, stop.state)
        return JobOutcome(stop.state)

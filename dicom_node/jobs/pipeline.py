"""One job, in two stages: edit (edit -> encode five DICOM objects + previews) and delivery (send them to
every destination that asked). The Celery tasks run the stages on two queues (jobs/tasks.py), so the
next edit starts while the previous job's objects are being encoded out and sent; `run_job` runs both
in this thread (tests, a single-process embedding).

Every step starts with its state transition (jobs/states.py); when the transition does not apply —
an operator cancelled the job meanwhile — the stage stops there, so a cancel is never overwritten.

Idempotent by construction: the objects' UIDs come from the job's key, and when all five objects are
already on disk from an earlier attempt the edit is skipped. A delivery already delivered is never
sent again. A failed delivery is retried with exponential backoff; after settings.send.max_attempts it
is dead-lettered with the last error. Patient name / ID are never logged (UIDs and job ids only).
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
from dicom_node.db.tables import Delivery, Job, utcnow
from dicom_node.jobs.deliveries import due_deliveries, ensure_job_deliveries, settle, transition_delivery
from dicom_node.jobs.editing import EditFailed, EditInput, EditOutput, edit_and_write_batch
from dicom_node.jobs.sandbox import sandbox_for
from dicom_node.jobs.states import Action, DeliveryAction, JobState
from dicom_node.results import result_files
from dicom_node.send import SendError, get_sender, lookup_destination

log = logging.getLogger("x2x.jobs.pipeline")

NO_OP_STATES = (JobState.DONE, JobState.CANCELLED, JobState.DEAD_LETTER)


@dataclass(frozen=True)
class JobOutcome:
    state: str
    retry_in: float | None = None  # seconds until the next delivery attempt, when one is due by itself


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


def error_text(exc: BaseException) -> str:
    if isinstance(exc, EditFailed):  # formatted where it happened (the edit process)
        return str(exc)[:2000]
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()[:2000]


def _step(ctx: NodeContext, job_id: int, action: Action, **values: Any) -> None:
    result = ctx.store.transition(job_id, action, **values)
    if not result.changed:
        raise Stopped(result.state)


# edit stage -------------------------------------------------------------------------------------------
def _edit_and_encode(ctx: NodeContext, jobs: list[Job]) -> dict[int, EditOutput | BaseException]:
    """Edit the sources together (`[worker] batch_size`; one job is a batch of one) and write each job's
    five objects + previews: in the worker's memory-limited child process (jobs/sandbox.py) unless
    `queue.edit_isolation = "none"`. Per job: its output, or what stopped it."""
    batch = [(EditInput.of(job), job_results_dir(ctx, job.id)) for job in jobs]

    def edited(job_id: int) -> None:  # raises Stopped when the job was cancelled meanwhile: not written
        _step(ctx, job_id, Action.ENCODE)

    if ctx.settings.queue.edit_isolation == "process":
        return sandbox_for(ctx.settings).run_batch(batch, on_edited=edited)
    results = edit_and_write_batch(ctx.editor(), batch, ctx.settings, on_edited=edited)
    return {job.id: result for job, result in zip(jobs, results, strict=True)}


def _stopped(job: Job, stop: Stopped) -> JobOutcome:
    log.info("job %s stopped: it is %s now (cancelled meanwhile?)", job.id, stop.state)
    return JobOutcome(stop.state)


def _encoded(ctx: NodeContext, job: Job) -> JobOutcome:
    try:
        ensure_job_deliveries(ctx, job)
        _step(ctx, job.id, Action.ENCODED)
        return JobOutcome(JobState.ENCODED.value)
    except Stopped as stop:
        return _stopped(job, stop)


def _edit_failed(ctx: NodeContext, job: Job, exc: BaseException) -> JobOutcome:
    """Recorded on the job; an edit error is not retried."""
    if isinstance(exc, Stopped):
        return _stopped(job, exc)
    log.error("job %s edit/encode failed: %s", job.id, type(exc).__name__, exc_info=exc)
    result = ctx.store.transition(job.id, Action.FAIL, attempts=(job.attempts or 0) + 1, last_error=error_text(exc),
                                  next_attempt_at=None)
    return JobOutcome(result.state or JobState.FAILED.value)


def run_edit(ctx: NodeContext, job_id: int) -> JobOutcome:
    """The edit stage of a claimed job (state editing): its objects on disk, then state encoded."""
    return run_edits(ctx, [job_id])[job_id]


def run_edits(ctx: NodeContext, job_ids: list[int]) -> dict[int, JobOutcome]:
    """The edit stage of claimed jobs (state editing), edited together: each job's objects on disk, then
    state encoded -- or failed with its own error; one job's failure never fails the others (a failure
    of the edit process itself is every job's)."""
    outcomes: dict[int, JobOutcome] = {}
    todo: list[Job] = []
    for job_id in job_ids:
        job = ctx.store.get(job_id)
        if job is None:
            raise KeyError(f"no job {job_id}")
        if job.state != JobState.EDITING:
            outcomes[job_id] = JobOutcome(job.state)
        elif result_files(job_results_dir(ctx, job_id)) is not None:
            log.info("job %s: objects already encoded in %s", job_id, job_results_dir(ctx, job_id))
            outcomes[job_id] = _encoded(ctx, job)
        else:
            todo.append(job)
    if not todo:
        return outcomes
    try:
        results = _edit_and_encode(ctx, todo)
    except Exception as exc:  # noqa: BLE001 - the edit process died, the model would not load, ...
        results = {job.id: exc for job in todo}
    for job in todo:
        result = results[job.id]
        if isinstance(result, BaseException):
            outcomes[job.id] = _edit_failed(ctx, job, result)
            continue
        ctx.store.update(job.id, result=result.summary, output_uids=result.uids, timings=result.timings,
                         model_id=result.model_id, model_hash=result.model_hash)
        log.info("job %s encoded 5 objects in %s", job.id, job_results_dir(ctx, job.id))
        outcomes[job.id] = _encoded(ctx, job)
    return outcomes


# delivery stage ---------------------------------------------------------------------------------------
def _deliver(ctx: NodeContext, job: Job, delivery: Delivery, paths: list[Path]) -> float | None:
    """One attempt of one delivery: delivered, failed (retry with backoff: returns the delay) or
    dead-lettered."""
    attempts = delivery.attempts + 1
    t0 = time.monotonic()
    try:
        dest = lookup_destination(ctx.settings, delivery.destination)
        sender = get_sender(dest, name=delivery.destination, calling_ae=ctx.settings.node.ae_title)
    except SendError as exc:  # a configuration error does not heal by waiting: dead-letter now
        transition_delivery(ctx, delivery.id, DeliveryAction.DEAD_LETTER, attempts=attempts, last_error=str(exc),
                            next_attempt_at=None)
        log.error("job %s: delivery to %s dead-lettered: %s", job.id, delivery.destination, exc)
        return None
    try:
        report = sender.send(paths)
        error = None if report.ok else report.error_summary()
    except Exception as exc:  # noqa: BLE001 - any sender failure is a failed attempt, never a lost job
        report, error = None, f"send to {delivery.destination} failed: {error_text(exc)}"
    seconds = round(time.monotonic() - t0, 3)
    if error is None:
        assert report is not None
        transition_delivery(ctx, delivery.id, DeliveryAction.DELIVERED, attempts=attempts, last_error=None,
                            next_attempt_at=None, sent=len(report.sent), seconds=seconds)
        log.info("job %s: %d objects delivered to %s", job.id, len(report.sent), delivery.destination)
        return None
    metrics.send_failures_total.inc()
    if attempts >= ctx.settings.send.max_attempts:
        transition_delivery(ctx, delivery.id, DeliveryAction.DEAD_LETTER, attempts=attempts, last_error=error,
                            next_attempt_at=None, seconds=seconds)
        log.error("job %s: delivery to %s dead-lettered after %d attempts: %s", job.id, delivery.destination,
                  attempts, error)
        return None
    delay = backoff_seconds(ctx, attempts)
    transition_delivery(ctx, delivery.id, DeliveryAction.FAIL, attempts=attempts, last_error=error,
                        next_attempt_at=utcnow() + dt.timedelta(seconds=delay), seconds=seconds)
    log.warning("job %s: delivery to %s attempt %d failed (%s); retry in %.1f s", job.id, delivery.destination,
                attempts, error, delay)
    return delay


def run_deliveries(ctx: NodeContext, job_id: int, *, due_only: bool = True) -> JobOutcome:
    """The delivery stage of a job taken for delivery (state sending): attempt every pending delivery
    and every failed one whose retry is due (`due_only=False`: every failed one), then settle."""
    job = ctx.store.get(job_id)
    if job is None:
        raise KeyError(f"no job {job_id}")
    if job.state != JobState.SENDING:
        return JobOutcome(job.state)
    ensure_job_deliveries(ctx, job)  # a job from before deliveries existed
    paths = result_files(job_results_dir(ctx, job_id))
    if paths is None:  # results removed since they were encoded: only a full retry re-makes them
        result = ctx.store.transition(job_id, Action.FAIL, attempts=(job.attempts or 0) + 1, next_attempt_at=None,
                                      last_error="the encoded objects are missing from the results folder; "
                                                 "`x2x jobs retry` re-makes them")
        return JobOutcome(result.state or JobState.FAILED.value)
    t0 = time.monotonic()
    delays = [delay for delivery in due_deliveries(ctx, job_id, now=utcnow() if due_only else None)
              if (delay := _deliver(ctx, job, delivery, list(paths.values()))) is not None]
    settled = settle(ctx, job_id)
    fresh = ctx.store.get(job_id)
    if fresh is not None:
        ctx.store.update(job_id, timings=dict(fresh.timings or {}) | {"send_s": round(time.monotonic() - t0, 3)})
    if settled.state == JobState.DONE:
        log.info("job %s done", job_id)
    retry_in = min(delays) if delays and settled.retry_in is not None else settled.retry_in
    return JobOutcome(settled.state, retry_in)


# both stages here -------------------------------------------------------------------------------------
def run_job(ctx: NodeContext, job_id: int) -> JobOutcome:
    """Both stages of job `job_id` in this thread, whatever stage it is in: a job not yet claimed is
    claimed (without a lease: for tests and single-process embeddings; workers use jobs/tasks.py), a
    failed delivery is retried now (due or not). A job whose edit failed stays failed until an
    operator's retry."""
    job = ctx.store.get(job_id)
    if job is None:
        raise KeyError(f"no job {job_id}")
    if job.state in NO_OP_STATES:
        return JobOutcome(job.state)
    if job.state in (JobState.RECEIVED, JobState.QUEUED):
        claimed = ctx.store.transition(job_id, Action.CLAIM)
        if not claimed.changed:
            return JobOutcome(claimed.state or "missing")
        job.state = JobState.EDITING.value
    if job.state in (JobState.EDITING, JobState.ENCODING):
        if job.state == JobState.ENCODING:  # an interrupted encode: redo the stage from the start
            ctx.store.transition(job_id, Action.REQUEUE)
            ctx.store.transition(job_id, Action.CLAIM)
        outcome = run_edit(ctx, job_id)
        if outcome.state != JobState.ENCODED:
            return outcome
    elif job.state == JobState.FAILED and result_files(job_results_dir(ctx, job_id)) is None:
        return JobOutcome(job.state)  # the edit failed: an operator's retry runs it again
    taken = ctx.store.transition(job_id, Action.SEND)
    if not taken.changed:
        return JobOutcome(taken.state or "missing")
    return run_deliveries(ctx, job_id, due_only=False)

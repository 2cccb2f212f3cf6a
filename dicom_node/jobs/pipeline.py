"""One job, in two stages: edit (the model's work: the edit's arrays into the job's results folder) and
delivery (encode the five DICOM objects + previews from them, then send them to every destination that
asked). The Celery tasks run the stages on two queues (jobs/tasks.py), so the next edit starts while
the previous job is being encoded and sent; `run_job` runs both in this thread (tests, a
single-process embedding).

Every step starts with its state transition (jobs/states.py); when the transition does not apply —
an operator cancelled the job meanwhile — the stage stops there, so a cancel is never overwritten.

Idempotent by construction: the objects' UIDs come from the job's key; when the edit's arrays or all
five objects are already on disk from an earlier attempt the edit is skipped, and when the objects are
the encode is. A delivery already delivered is never sent again. A failed delivery is retried with
exponential backoff; after settings.send.max_attempts it is dead-lettered with the last error. Patient
name / ID are never logged (UIDs and job ids only).
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
from dicom_node.jobs.editing import EditFailed, EditInput, EditOutput, EncodeOutput, edit_batch, encode_job
from dicom_node.jobs.encode_process import encoder_for
from dicom_node.jobs.sandbox import sandbox_for
from dicom_node.jobs.states import Action, DeliveryAction, JobState
from dicom_node.results import edit_result_path, result_files
from dicom_node.send import SendError, get_sender, lookup_destination
from editor import EditResultFileError

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
def _edit(ctx: NodeContext, jobs: list[Job]) -> dict[int, EditOutput | BaseException]:
    """Edit the sources together (`[worker] batch_size`; one job is a batch of one), each job's arrays
    saved in its folder: in the worker's memory-limited child process (jobs/sandbox.py) unless
    `queue.edit_isolation = "none"`. Per job: its output, or what stopped it."""
    batch = [(EditInput.of(job), job_results_dir(ctx, job.id)) for job in jobs]
    if ctx.settings.queue.edit_isolation == "process":
        return sandbox_for(ctx.settings).run_batch(batch)
    results = edit_batch(ctx.editor(), batch)
    return {job.id: result for job, result in zip(jobs, results, strict=True)}


def _stopped(job: Job, stop: Stopped) -> JobOutcome:
    log.info("job %s stopped: it is %s now (cancelled meanwhile?)", job.id, stop.state)
    return JobOutcome(stop.state)


def _edited(ctx: NodeContext, job: Job) -> JobOutcome:
    try:
        ensure_job_deliveries(ctx, job)
        _step(ctx, job.id, Action.EDITED)
        return JobOutcome(JobState.EDITED.value)
    except Stopped as stop:
        return _stopped(job, stop)


def _failed(ctx: NodeContext, job: Job, exc: BaseException, what: str) -> JobOutcome:
    """Recorded on the job; an edit or encode error is not retried (the same input fails the same way)."""
    if isinstance(exc, Stopped):
        return _stopped(job, exc)
    log.error("job %s %s failed: %s", job.id, what, type(exc).__name__, exc_info=exc)
    result = ctx.store.transition(job.id, Action.FAIL, attempts=(job.attempts or 0) + 1, last_error=error_text(exc),
                                  next_attempt_at=None)
    return JobOutcome(result.state or JobState.FAILED.value)


def _already_edited(ctx: NodeContext, job_id: int) -> bool:
    folder = job_results_dir(ctx, job_id)
    return edit_result_path(folder).is_file() or result_files(folder) is not None


def run_edit(ctx: NodeContext, job_id: int) -> JobOutcome:
    """The edit stage of a claimed job (state editing): its arrays on disk, then state edited."""
    return run_edits(ctx, [job_id])[job_id]


def run_edits(ctx: NodeContext, job_ids: list[int]) -> dict[int, JobOutcome]:
    """The edit stage of claimed jobs (state editing), edited together: each job's arrays on disk, then
    state edited -- or failed with its own error; one job's failure never fails the others (a failure
    of the edit process itself is every job's)."""
    outcomes: dict[int, JobOutcome] = {}
    todo: list[Job] = []
    for job_id in job_ids:
        job = ctx.store.get(job_id)
        if job is None:
            raise KeyError(f"no job {job_id}")
        if job.state != JobState.EDITING:
            outcomes[job_id] = JobOutcome(job.state)
        elif _already_edited(ctx, job_id):
            log.info("job %s: already edited in %s", job_id, job_results_dir(ctx, job_id))
            outcomes[job_id] = _edited(ctx, job)
        else:
            todo.append(job)
    if not todo:
        return outcomes
    try:
        results = _edit(ctx, todo)
    except Exception as exc:  # noqa: BLE001 - the edit process died, the model would not load, ...
        results = {job.id: exc for job in todo}
    for job in todo:
        result = results[job.id]
        if isinstance(result, BaseException):
            outcomes[job.id] = _failed(ctx, job, result, "edit")
            continue
        ctx.store.update(job.id, result=result.summary, timings=result.timings, model_id=result.model_id,
                         model_hash=result.model_hash)
        log.info("job %s edited", job.id)
        outcomes[job.id] = _edited(ctx, job)
    return outcomes


# delivery stage ---------------------------------------------------------------------------------------
def _encode(ctx: NodeContext, job: Job, folder: Path) -> EncodeOutput:
    if ctx.settings.queue.edit_isolation == "process":
        return encoder_for(ctx.settings).encode(EditInput.of(job), folder)
    return encode_job(EditInput.of(job), folder, ctx.settings)


def run_encode(ctx: NodeContext, job_id: int) -> JobOutcome:
    """The delivery stage's first step for a job taken to encode (state encoding): its five objects and
    previews on disk, then state encoded. When the edit's arrays are gone (removed, torn by a crash)
    the job goes back to the edit queue (state queued: the caller sends it there)."""
    job = ctx.store.get(job_id)
    if job is None:
        raise KeyError(f"no job {job_id}")
    if job.state != JobState.ENCODING:
        return JobOutcome(job.state)
    folder = job_results_dir(ctx, job_id)
    if result_files(folder) is None:
        try:
            encoded = _encode(ctx, job, folder)
        except EditResultFileError as exc:
            log.warning("job %s: edited again: %s", job_id, exc)
            edit_result_path(folder).unlink(missing_ok=True)  # torn: not "already edited"
            result = ctx.store.transition(job_id, Action.REQUEUE)
            return JobOutcome(result.state or JobState.QUEUED.value)
        except Exception as exc:  # noqa: BLE001 - the encode's own error, recorded on the job
            return _failed(ctx, job, exc, "encode")
        fresh = ctx.store.get(job_id)
        timings = dict(fresh.timings or {}) if fresh is not None else {}
        ctx.store.update(job_id, output_uids=encoded.uids, timings=timings | encoded.timings)
        log.info("job %s encoded 5 objects in %s", job_id, folder)
    try:
        _step(ctx, job_id, Action.ENCODED)
    except Stopped as stop:
        return _stopped(job, stop)
    return JobOutcome(JobState.ENCODED.value)


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


def run_delivery_stage(ctx: NodeContext, job_id: int) -> JobOutcome:
    """The delivery stage of a job taken for it: encode it first when it was taken edited (state
    encoding), then deliver (state sending)."""
    job = ctx.store.get(job_id)
    if job is not None and job.state == JobState.ENCODING:
        encoded = run_encode(ctx, job_id)
        if encoded.state != JobState.ENCODED:
            return encoded
        taken = ctx.store.transition(job_id, Action.SEND)
        if not taken.changed:
            return JobOutcome(taken.state or "missing")
    return run_deliveries(ctx, job_id)


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
    if job.state == JobState.EDITING:
        edited = run_edit(ctx, job_id)
        if edited.state != JobState.EDITED:
            return edited
        job.state = JobState.EDITED.value
    if job.state == JobState.ENCODING:  # an interrupted encode: take it again
        ctx.store.transition(job_id, Action.REQUEUE_ENCODE)
        job.state = JobState.EDITED.value
    if job.state == JobState.EDITED:
        ctx.store.transition(job_id, Action.ENCODE)
        encoded = run_encode(ctx, job_id)
        if encoded.state != JobState.ENCODED:  # queued: the edit's arrays were gone (run it again)
            return encoded
    elif job.state == JobState.FAILED and result_files(job_results_dir(ctx, job_id)) is None:
        return JobOutcome(job.state)  # the edit failed: an operator's retry runs it again
    taken = ctx.store.transition(job_id, Action.SEND)
    if not taken.changed:
        return JobOutcome(taken.state or "missing")
    return run_deliveries(ctx, job_id, due_only=False)

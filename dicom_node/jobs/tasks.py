"""The Celery tasks: one per stage. An edit task runs the edit stage of one job -- or of up to
`[worker] batch_size` queued jobs that can share one model pass, claimed together -- and hands each to
the delivery queue; a delivery task runs the delivery stage (encode, when the job comes edited, then
send; it queues its own retry when one is due)."""

from __future__ import annotations

import contextlib
import logging
import threading
import traceback
from collections.abc import Callable
from typing import Any

from dicom_node.context import NodeContext, build_context
from dicom_node.jobs import leases
from dicom_node.jobs.celery_app import celery_app, delivery_app
from dicom_node.jobs.pipeline import JobOutcome, run_delivery_stage, run_edits
from dicom_node.jobs.queue import DELIVER_TASK, EDIT_TASK, send_delivery, send_task
from dicom_node.jobs.sandbox import SandboxStopping
from dicom_node.jobs.states import Action, JobState

log = logging.getLogger("x2x.jobs.tasks")

_ctx: NodeContext | None = None
_ctx_lock = threading.Lock()


def set_worker_context(ctx: NodeContext) -> None:
    """The context tasks run with (set by `x2x serve` / `x2x worker` before the worker starts)."""
    global _ctx
    with _ctx_lock:
        _ctx = ctx


def worker_context() -> NodeContext:
    global _ctx
    with _ctx_lock:
        if _ctx is None:  # e.g. started by a bare `celery -A dicom_node.jobs.celery_app worker`
            from dicom_node.config import load_settings

            _ctx = build_context(load_settings())
        return _ctx


def _put_back(ctx: NodeContext, job_id: int) -> JobOutcome:
    """The worker stops while the job's edit (or encode) runs: back where that step starts."""
    job = ctx.store.get(job_id)
    encoding = job is not None and job.state == JobState.ENCODING
    if encoding and ctx.store.transition(job_id, Action.REQUEUE_ENCODE).changed:
        log.info("job %s put back on the delivery queue: the worker is stopping", job_id)
        send_delivery(ctx, job_id)
        return JobOutcome(JobState.EDITED.value)
    if not encoding and ctx.store.transition(job_id, Action.REQUEUE).changed:
        log.info("job %s put back on the queue: the worker is stopping", job_id)
        send_task(ctx, job_id)
        return JobOutcome(JobState.QUEUED.value)
    fresh = ctx.store.get(job_id)
    return JobOutcome(fresh.state if fresh is not None else "missing")


StageRun = Callable[[NodeContext, list[int]], dict[int, JobOutcome]]


def _attempt(ctx: NodeContext, job_id: int, stage: Action, run: StageRun, companions: int = 0
             ) -> tuple[bool, dict[int, JobOutcome]]:
    """Take the job for `stage` with a lease -- and, for the edit stage, up to `companions` more queued
    jobs to edit with it (`[worker] batch_size`) -- run them under heartbeats, release.
    (taken, outcome per job id)."""
    me = leases.WorkerIdentity.current()
    if not leases.claim(ctx.store, job_id, me, stage):
        job = ctx.store.get(job_id)
        log.info("job %s not taken for %s (state %s): nothing to do", job_id, stage, job.state if job else "missing")
        return False, {}
    ids = [job_id]
    if companions > 0:
        first = ctx.store.get(job_id)
        if first is not None:
            ids += leases.claim_companions(ctx.store, first, me, companions)
    for taken in ids:
        if stage is Action.CLAIM:  # operators (and the scale-out tests) follow an edit by this line
            log.info("job %s claimed by %s", taken, me.worker_id)
        else:
            log.info("job %s taken for %s by %s", taken, "encoding" if stage is Action.ENCODE else "delivery",
                     me.worker_id)
    if len(ids) > 1:
        log.info("jobs %s edited together (worker.batch_size=%d)", ids, ctx.settings.worker.batch_size)
    interval = max(0.5, ctx.settings.queue.lease_seconds / 3)
    try:
        with contextlib.ExitStack() as beats:
            for taken in ids:
                beats.enter_context(leases.Heartbeat(ctx.store, taken, me, interval))
            return True, run(ctx, ids)
    except SandboxStopping:  # the worker stops mid-stage: back on its queue, not failed, not a death
        return True, {taken: _put_back(ctx, taken) for taken in ids}
    except Exception as exc:  # each stage records its own errors; this is the safety net
        log.error("jobs %s failed unexpectedly: %s", ids, type(exc).__name__, exc_info=True)
        for taken in ids:
            job = ctx.store.get(taken)
            ctx.store.transition(
                taken, Action.FAIL, attempts=(job.attempts if job else 0) + 1, next_attempt_at=None,
                last_error="".join(traceback.format_exception_only(type(exc), exc)).strip()[:2000],
            )
        return True, {taken: JobOutcome(JobState.FAILED.value) for taken in ids}
    finally:
        for taken in ids:
            leases.release(ctx.store, taken, me)


@celery_app.task(name=EDIT_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=False)
def edit_job_task(job_id: int) -> dict[str, Any]:
    ctx = worker_context()
    taken, outcomes = _attempt(ctx, job_id, Action.CLAIM, run_edits, companions=ctx.settings.worker.batch_size - 1)
    for edited_id, outcome in outcomes.items():
        if outcome.state == JobState.EDITED:
            send_delivery(ctx, edited_id)
        log.info("job %s edit stage ended: %s", edited_id, outcome.state)
    own = outcomes.get(job_id)
    return {"job_id": job_id, "claimed": taken, "state": own.state if own else None, "batch": sorted(outcomes)}


def _deliver_one(ctx: NodeContext, ids: list[int]) -> dict[int, JobOutcome]:
    return {ids[0]: run_delivery_stage(ctx, ids[0])}


def deliver_job(job_id: int) -> dict[str, Any]:
    ctx = worker_context()
    job = ctx.store.get(job_id)
    stage = Action.ENCODE if job is not None and job.state == JobState.EDITED else Action.SEND
    taken, outcomes = _attempt(ctx, job_id, stage, _deliver_one)
    outcome = outcomes.get(job_id)
    if outcome is not None and outcome.state == JobState.QUEUED:  # its edit's arrays were gone: edit again
        send_task(ctx, job_id)
    elif outcome is not None and outcome.state == JobState.ENCODED:  # a destination was added meanwhile
        send_delivery(ctx, job_id)
    elif outcome is not None and outcome.retry_in is not None:
        send_delivery(ctx, job_id, countdown=outcome.retry_in)
    state = outcome.state if outcome else None
    log.info("job %s delivery stage ended: %s", job_id, state)
    return {"job_id": job_id, "claimed": taken, "state": state, "retry_in": outcome.retry_in if outcome else None}


# The delivery task on both apps: celery_app's registry (a worker serving both stages from one app, as a
# bare `celery worker` does) and delivery_app's (the delivery stage's own worker thread or process).
_deliver_options: dict[str, Any] = {"name": DELIVER_TASK, "acks_late": True, "reject_on_worker_lost": True,
                                    "ignore_result": False}
deliver_job_task = celery_app.task(**_deliver_options)(deliver_job)
delivery_app.task(**_deliver_options)(deliver_job)

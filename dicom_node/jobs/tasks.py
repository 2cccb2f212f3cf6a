"""The Celery task: one task runs one attempt of one job (claim -> pipeline.run_job -> maybe re-queue)."""

from __future__ import annotations

import logging
import threading
import traceback
from typing import Any

from dicom_node.context import NodeContext, build_context
from dicom_node.jobs import leases
from dicom_node.jobs.celery_app import celery_app
from dicom_node.jobs.pipeline import run_job
from dicom_node.jobs.queue import RUN_JOB_TASK, enqueue
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


@celery_app.task(name=RUN_JOB_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=False)
def run_job_task(job_id: int) -> dict[str, Any]:
    ctx = worker_context()
    me = leases.WorkerIdentity.current()
    if not leases.claim(ctx.store, job_id, me):
        job = ctx.store.get(job_id)
        log.info("job %s not claimable (state %s): nothing to do", job_id, job.state if job else "missing")
        return {"job_id": job_id, "claimed": False}
    log.info("job %s claimed by %s", job_id, me.worker_id)
    retry_in: float | None = None
    state = JobState.FAILED.value
    interval = max(0.5, ctx.settings.queue.lease_seconds / 3)
    try:
        with leases.Heartbeat(ctx.store, job_id, me, interval):
            outcome = run_job(ctx, job_id)
        state, retry_in = outcome.state, outcome.retry_in
    except SandboxStopping:  # the worker stops mid-edit: back on the queue, not failed, not a death
        ctx.store.transition(job_id, Action.REQUEUE)
        log.info("job %s put back on the queue: the worker is stopping", job_id)
        state = JobState.QUEUED.value
    except Exception as exc:  # the pipeline records its own errors; this is the safety net
        log.error("job %s failed unexpectedly: %s", job_id, type(exc).__name__, exc_info=True)
        job = ctx.store.get(job_id)
        ctx.store.transition(
            job_id, Action.FAIL, attempts=(job.attempts if job else 0) + 1, next_attempt_at=None,
            last_error="".join(traceback.format_exception_only(type(exc), exc)).strip()[:2000],
        )
    finally:
        leases.release(ctx.store, job_id, me)
    if retry_in is not None:
        enqueue(ctx, job_id, countdown=retry_in)
    log.info("job %s attempt ended: %s", job_id, state)
    return {"job_id": job_id, "claimed": True, "state": state, "retry_in": retry_in}

"""Celery tasks: one task runs one attempt of one job (claim -> pipeline.run_job -> maybe re-enqueue)."""

from __future__ import annotations

import logging
import threading
import traceback
from typing import Any

from dicom_node.context import NodeContext, build_context
from dicom_node.jobs import leases
from dicom_node.jobs.celery_app import celery_app
from dicom_node.jobs.store import FAILED, utcnow

log = logging.getLogger("x2x.jobs.tasks")

_ctx: NodeContext | None = None
_ctx_lock = threading.Lock()


def set_worker_context(ctx: NodeContext) -> None:
    """The context tasks run with (set by `x2x serve` / `x2x worker` before the worker starts)."""
    global _ctx
    with _ctx_lock:
        _ctx = ctx
    leases.ensure_tables(ctx.store)


def worker_context() -> NodeContext:
    global _ctx
    with _ctx_lock:
        if _ctx is None:  # e.g. started by a bare `celery -A dicom_node.jobs.celery_app worker`
            from dicom_node.config import load_settings

            _ctx = build_context(load_settings())
            leases.ensure_tables(_ctx.store)
        return _ctx


@celery_app.task(name="x2x.run_job", acks_late=True, reject_on_worker_lost=True, ignore_result=False)
def run_job_task(job_id: int) -> dict[str, Any]:
    ctx = worker_context()
    me = leases.WorkerIdentity.current()
    if not leases.claim(ctx.store, job_id, me):
        job = ctx.store.get(job_id)
        log.info("job %s not claimable (state %s): nothing to do", job_id, job.state if job else "missing")
        return {"job_id": job_id, "claimed": False}
    from dicom_node.jobs.dispatch import enqueue
    from dicom_node.jobs.pipeline import run_job

    log.info("job %s claimed by %s", job_id, me.worker_id)
    retry_in: float | None = None
    state = FAILED
    interval = max(0.5, ctx.settings.queue.lease_seconds / 3)
    try:
        with leases.Heartbeat(ctx.store, job_id, me, interval):
            outcome = run_job(ctx, job_id)
        state, retry_in = outcome.state, outcome.retry_in
    except Exception as exc:  # the pipeline records its own errors; this is the safety net
        log.error("job %s failed unexpectedly: %s", job_id, type(exc).__name__, exc_info=True)
        job = ctx.store.get(job_id)
        ctx.store.set_state(
            job_id,
            FAILED,
            attempts=(job.attempts if job else 0) + 1,
            last_error="".join(traceback.format_exception_only(type(exc), exc)).strip()[:2000],
        )
    finally:
        leases.release(ctx.store, job_id, me)
    if retry_in is not None:
        enqueue(ctx, job_id, countdown=retry_in)
    log.info("job %s attempt ended: %s", job_id, state)
    return {"job_id": job_id, "claimed": True, "state": state, "retry_in": retry_in}


def sweep_once(ctx: NodeContext) -> list[int]:
    """Re-enqueue jobs whose worker is gone and queued jobs whose message was lost; returns their ids."""
    from dicom_node.jobs.dispatch import enqueue

    q = ctx.settings.queue
    requeued: list[int] = []
    for job_id in leases.recoverable_jobs(
        ctx.store, lease_seconds=q.lease_seconds, requeue_queued_after=q.requeue_queued_after_seconds
    ):
        job = ctx.store.get(job_id)
        if job is None:
            continue
        if job.state in leases.IN_PROGRESS and not leases.requeue_in_progress(
            ctx.store, job_id, lease_seconds=q.lease_seconds
        ):
            continue
        log.warning("recovering job %s (was %s; its worker is gone or its message was lost)",
                    job_id, job.state)
        enqueue(ctx, job_id)
        requeued.append(job_id)
    return requeued


def resend_queued(ctx: NodeContext) -> int:
    """Send every queued job's task again (with its remaining delay). Used when a worker starts on the
    embedded SQLite broker, whose messages taken by a killed worker are never redelivered; a duplicate
    message is a no-op because the job is claimed atomically."""
    from dicom_node.jobs.queue import send_task
    from dicom_node.jobs.store import QUEUED

    now = utcnow()
    jobs = ctx.store.list(state=QUEUED, limit=100_000)
    for job in jobs:
        delay = (job.next_attempt_at - now).total_seconds() if job.next_attempt_at else 0.0
        send_task(ctx, job.id, max(0.0, delay))
    if jobs:
        log.info("re-sent %d queued job(s) to the embedded broker", len(jobs))
    return len(jobs)


class Sweeper:
    """Runs `sweep_once` at start and every `queue.sweep_interval_seconds` in a daemon thread."""

    def __init__(self, ctx: NodeContext, kind: str = "worker"):
        self._ctx = ctx
        self._kind = kind
        self._me = leases.WorkerIdentity.current()
        self._started = utcnow()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="x2x-sweeper", daemon=True)

    def start(self) -> Sweeper:
        self._thread.start()
        return self

    def _run(self) -> None:
        if self._ctx.settings.broker_url.startswith("sqla+"):
            try:
                resend_queued(self._ctx)
            except Exception:
                log.warning("re-sending queued jobs failed", exc_info=True)
        while True:
            try:
                leases.worker_seen(self._ctx.store, self._me, self._kind, self._started)
                sweep_once(self._ctx)
            except Exception:
                log.warning("job sweep failed", exc_info=True)
            if self._stop.wait(self._ctx.settings.queue.sweep_interval_seconds):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            leases.worker_gone(self._ctx.store, self._me)
        except Exception:
            log.warning("could not deregister worker", exc_info=True)

"""Putting a job on the Celery queue (the body of `dispatch.enqueue`) and reading the queue's state."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from sqlalchemy import update

from dicom_node.context import NodeContext
from dicom_node.jobs.celery_app import celery_app, ensure_configured
from dicom_node.jobs.store import DEAD_LETTER, FAILED, QUEUED, RECEIVED, Job, utcnow

log = logging.getLogger("x2x.jobs.queue")

# States from which a job may be (re)queued. In-progress jobs are left to their worker (or to the
# sweep once that worker is gone); done/cancelled are final.
ENQUEUEABLE = (RECEIVED, QUEUED, FAILED, DEAD_LETTER)


def mark_queued(ctx: NodeContext, job_id: int, countdown: float = 0.0) -> bool:
    now = utcnow()
    due = now + dt.timedelta(seconds=countdown) if countdown > 0 else None
    with ctx.store.session() as s:
        result = s.execute(
            update(Job)
            .where(Job.id == job_id, Job.state.in_(ENQUEUEABLE))
            .values(state=QUEUED, next_attempt_at=due, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def send_task(ctx: NodeContext, job_id: int, countdown: float = 0.0) -> None:
    ensure_configured(ctx.settings)
    from dicom_node.jobs.tasks import run_job_task

    run_job_task.apply_async(
        (job_id,), countdown=countdown if countdown > 0 else None, queue=ctx.settings.queue.queue_name
    )


def enqueue_with_celery(ctx: NodeContext, job_id: int, countdown: float = 0.0) -> None:
    """Mark the job queued (with its due time) and send one Celery task for it."""
    if not mark_queued(ctx, job_id, countdown):
        job = ctx.store.get(job_id)
        log.info("job %s not enqueued: state %s", job_id, job.state if job else "missing")
        return
    send_task(ctx, job_id, countdown)
    log.info("job %s queued%s", job_id, f" (in {countdown:.1f} s)" if countdown > 0 else "")


def broker_reachable(ctx: NodeContext, timeout: float = 3.0) -> tuple[bool, str]:
    ensure_configured(ctx.settings)
    try:
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
        return True, "ok"
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"[:300]


def active_workers(ctx: NodeContext, timeout: float = 1.0) -> list[str] | None:
    """Names of workers answering a ping; None where the broker has no broadcast (embedded SQLite)."""
    if ctx.settings.broker_url.startswith("sqla+"):
        return None
    ensure_configured(ctx.settings)
    try:
        replies: list[dict[str, Any]] = celery_app.control.ping(timeout=timeout) or []
    except Exception:
        return []
    return sorted(name for reply in replies for name in reply)

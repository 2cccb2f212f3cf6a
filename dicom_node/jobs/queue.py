"""Putting a job on the Celery queue, and reading the queue's state.

Tasks are sent by name ("x2x.run_job"), so queueing never imports the task module (and the worker code
behind it): jobs/tasks.py imports this module, not the other way round.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from dicom_node.context import NodeContext
from dicom_node.db.tables import utcnow
from dicom_node.jobs.celery_app import celery_app, ensure_configured
from dicom_node.jobs.states import Action

log = logging.getLogger("x2x.jobs.queue")

RUN_JOB_TASK = "x2x.run_job"


def send_task(ctx: NodeContext, job_id: int, countdown: float = 0.0) -> None:
    """One Celery message "run job N" (a duplicate is harmless: a job is claimed atomically)."""
    ensure_configured(ctx.settings)
    celery_app.send_task(
        RUN_JOB_TASK, args=(job_id,), countdown=countdown if countdown > 0 else None,
        queue=ctx.settings.queue.queue_name,
    )


def enqueue(ctx: NodeContext, job_id: int, countdown: float = 0.0) -> bool:
    """Mark the job queued (due after `countdown` seconds) and send one task for it. False (and nothing
    sent) when the job's state does not allow queueing (running, done, dead-lettered, cancelled)."""
    due = utcnow() + dt.timedelta(seconds=countdown) if countdown > 0 else None
    result = ctx.store.transition(job_id, Action.QUEUE, next_attempt_at=due)
    if not result.changed:
        log.info("job %s not enqueued: state %s", job_id, result.state or "missing")
        return False
    send_task(ctx, job_id, countdown)
    log.info("job %s queued%s", job_id, f" (in {countdown:.1f} s)" if countdown > 0 else "")
    return True


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

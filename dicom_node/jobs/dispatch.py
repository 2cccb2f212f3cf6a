"""Putting jobs to work: `enqueue(ctx, job_id, countdown)` and the embedded worker.

`enqueue` marks the job `queued` (due after `countdown`) and sends one Celery task for it; any worker
on the configured broker runs `dicom_node.jobs.pipeline.run_job` after claiming the job atomically in
the job store (see `dicom_node.jobs.leases`). `start_worker(ctx)` runs one embedded Celery worker
(solo pool) in this process, as `x2x serve` does; `x2x worker` runs more elsewhere.
(H3's first version polled the job table from a thread; the signatures are unchanged.)
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from sqlalchemy import or_, select

from dicom_node.context import NodeContext
from dicom_node.jobs.store import QUEUED, Job, utcnow

if TYPE_CHECKING:
    from dicom_node.jobs.worker import EmbeddedWorker

log = logging.getLogger("x2x.jobs.dispatch")

_worker: EmbeddedWorker | None = None
_worker_lock = threading.Lock()


def enqueue(ctx: NodeContext, job_id: int, countdown: float = 0.0) -> None:
    """Mark the job queued (due after `countdown` seconds) and send it to the Celery queue."""
    from dicom_node.jobs.queue import enqueue_with_celery

    enqueue_with_celery(ctx, job_id, countdown)


def due_jobs(ctx: NodeContext, limit: int = 10) -> list[int]:
    """Queued jobs whose time has come (for inspection; workers take jobs from the broker)."""
    now = utcnow()
    q = (
        select(Job.id)
        .where(Job.state == QUEUED, or_(Job.next_attempt_at.is_(None), Job.next_attempt_at <= now))
        .order_by(Job.next_attempt_at, Job.id)
        .limit(limit)
    )
    with ctx.store.session() as s:
        return list(s.scalars(q))


def start_worker(ctx: NodeContext) -> None:
    """Start the embedded Celery worker (solo pool, daemon thread) and the job sweeper, once."""
    global _worker
    from dicom_node.jobs.worker import EmbeddedWorker

    with _worker_lock:
        if _worker is not None:
            return
        _worker = EmbeddedWorker(ctx).start()


def stop_worker(timeout: float = 30.0) -> None:
    global _worker
    with _worker_lock:
        worker, _worker = _worker, None
    if worker is not None:
        worker.stop(timeout)

"""Every worker's recovery sweep: re-queue jobs whose worker is gone and queued jobs whose message was lost."""

from __future__ import annotations

import logging
import threading
import time

from dicom_node.context import NodeContext
from dicom_node.db.engine import retry_locked
from dicom_node.db.tables import utcnow
from dicom_node.jobs import leases
from dicom_node.jobs.queue import enqueue, send_delivery, send_task
from dicom_node.jobs.states import IN_PROGRESS, JobState

log = logging.getLogger("x2x.jobs.sweeper")


def _resume(ctx: NodeContext, job_id: int, state: str, countdown: float = 0.0) -> None:
    """Send the message the job's state waits for."""
    if state in (JobState.QUEUED, JobState.RECEIVED):
        if state == JobState.RECEIVED:
            enqueue(ctx, job_id, countdown)
        else:
            send_task(ctx, job_id, countdown)
    elif state in (JobState.EDITED, JobState.ENCODED, JobState.FAILED):
        send_delivery(ctx, job_id, countdown)


def sweep_once(ctx: NodeContext) -> list[int]:
    """Re-send work whose worker is gone or whose message was lost; returns the job ids."""
    q = ctx.settings.queue
    recovered: list[int] = []
    for job_id in leases.recoverable_jobs(
        ctx.store, lease_seconds=q.lease_seconds, requeue_queued_after=q.requeue_queued_after_seconds
    ):
        job = ctx.store.get(job_id)
        if job is None:
            continue
        was = job.state
        if was in IN_PROGRESS:
            quarantined = leases.quarantine_orphan(ctx.store, job_id, lease_seconds=q.lease_seconds,
                                                   max_requeues=q.max_requeues)
            if quarantined is not None:
                log.error("job %s dead-lettered: %s", job_id, quarantined)
                continue
            if not leases.requeue_in_progress(ctx.store, job_id, lease_seconds=q.lease_seconds):
                continue
            job = ctx.store.get(job_id)
            if job is None:
                continue
        log.warning("recovering job %s (was %s; its worker is gone or its message was lost)", job_id, was)
        _resume(ctx, job_id, job.state)
        recovered.append(job_id)
    return recovered


def resend_queued(ctx: NodeContext) -> int:
    """Send every waiting job's message again (with its remaining delay). Used when a worker starts on the
    embedded SQLite broker, whose messages taken by a killed worker are never redelivered; a duplicate
    message is a no-op because a job is taken atomically."""
    now = utcnow()
    waiting = ctx.store.list(state=[JobState.QUEUED.value, JobState.EDITED.value, JobState.ENCODED.value,
                                    JobState.FAILED.value],
                             limit=100_000)
    sent = 0
    for job in waiting:
        if job.state == JobState.FAILED and job.next_attempt_at is None:
            continue  # a failed edit waits for an operator
        delay = (job.next_attempt_at - now).total_seconds() if job.next_attempt_at else 0.0
        _resume(ctx, job.id, job.state, max(0.0, delay))
        sent += 1
    if sent:
        log.info("re-sent %d waiting job(s) to the embedded broker", sent)
    return sent


class Sweeper:
    """Runs `sweep_once` at start and every `queue.sweep_interval_seconds` in a daemon thread, and keeps
    this worker's row in the workers table (what `x2x status` lists as live) fresh once `consuming()`
    has been called: a worker whose consumer never reached its broker is not counted as live.

    Only the sweeper's thread writes that row (two writers would both find it missing and both insert)."""

    def __init__(self, ctx: NodeContext, kind: str = "worker"):
        self._ctx = ctx
        self._kind = kind
        self._me = leases.WorkerIdentity.current()
        self._started = utcnow()
        self._stop = threading.Event()
        self._consuming = threading.Event()
        self._wake = threading.Event()  # consuming() or stop(): act now, not at the next sweep
        self._thread = threading.Thread(target=self._run, name="x2x-sweeper", daemon=True)

    def start(self) -> Sweeper:
        self._thread.start()
        return self

    def consuming(self) -> None:
        """The worker's consumer listens on its queue: have it registered now (then at every sweep)."""
        self._consuming.set()
        self._wake.set()

    def _heartbeat(self) -> None:
        if not self._consuming.is_set() or self._stop.is_set():  # stop() deregisters: never after it
            return
        try:
            retry_locked(self._ctx.db, lambda: leases.worker_seen(self._ctx.store, self._me, self._kind,
                                                                  self._started))
        except Exception:
            log.warning("could not register worker", exc_info=True)

    def _run(self) -> None:
        if self._ctx.settings.broker_url.startswith("sqla+"):
            try:
                resend_queued(self._ctx)
            except Exception:
                log.warning("re-sending queued jobs failed", exc_info=True)
        while not self._stop.is_set():
            self._heartbeat()
            try:
                sweep_once(self._ctx)
            except Exception:
                log.warning("job sweep failed", exc_info=True)
            next_sweep = time.monotonic() + self._ctx.settings.queue.sweep_interval_seconds
            while not self._stop.is_set() and self._wake.wait(max(0.0, next_sweep - time.monotonic())):
                self._wake.clear()
                self._heartbeat()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)
        try:
            leases.worker_gone(self._ctx.store, self._me)
        except Exception:
            log.warning("could not deregister worker", exc_info=True)

"""Who is running which job: atomic claims, leases with heartbeats, and the sweep that recovers jobs.

Why a lease table and not only Celery's acks_late: the embedded SQLite broker (kombu's SQLAlchemy
transport) marks a fetched message invisible and never redelivers it after a SIGKILL, and an ETA
message held in a killed worker's memory is gone too. So the job store is the source of truth:

- a worker *claims* a job with one conditional UPDATE (queued/failed/received -> editing); a second
  delivery of the same job finds nothing to claim and is a no-op, so a job never runs twice at once;
- while it runs, the worker renews a lease row (worker id, host, pid, heartbeat time);
- every worker sweeps at start and periodically: a job in editing/encoding/sending whose lease is
  stale (older than `queue.lease_seconds`) or whose worker process on this host no longer exists is
  put back to queued and re-sent. Redis/RabbitMQ redeliver unacked messages too; the claim makes the
  two recovery paths safe to overlap;
- a job whose worker died on it more than `queue.max_requeues` times is quarantined (dead-letter with
  the reason) instead: whatever kills workers stays with that job.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_, delete, exists, or_, select, update
from sqlalchemy.orm import Session

from dicom_node.db.tables import Job, JobLease, WorkerRecord, utcnow
from dicom_node.jobs.states import IN_PROGRESS, Action, JobState
from dicom_node.jobs.store import JobStore

log = logging.getLogger("x2x.jobs.leases")

IN_PROGRESS_STATES = tuple(sorted(s.value for s in IN_PROGRESS))


def worker_seen(store: JobStore, me: WorkerIdentity, kind: str, started_at: dt.datetime) -> None:
    with store.db.session() as s:
        row = s.get(WorkerRecord, me.worker_id)
        if row is None:
            s.add(WorkerRecord(worker_id=me.worker_id, hostname=me.hostname, pid=me.pid, kind=kind,
                               started_at=started_at, seen_at=utcnow()))
        else:
            row.seen_at = utcnow()


def worker_gone(store: JobStore, me: WorkerIdentity) -> None:
    with store.db.session() as s:
        s.execute(delete(WorkerRecord).where(WorkerRecord.worker_id == me.worker_id))


def live_workers(store: JobStore, within_seconds: float) -> list[WorkerRecord]:
    cutoff = utcnow() - dt.timedelta(seconds=within_seconds)
    with store.db.session() as s:
        return list(s.scalars(select(WorkerRecord).where(WorkerRecord.seen_at >= cutoff)))


@dataclass(frozen=True)
class WorkerIdentity:
    hostname: str
    pid: int

    @property
    def worker_id(self) -> str:
        return f"{self.hostname}:{self.pid}"

    @classmethod
    def current(cls) -> WorkerIdentity:
        return cls(socket.gethostname(), os.getpid())


def claim(store: JobStore, job_id: int, me: WorkerIdentity, action: Action = Action.CLAIM) -> bool:
    """Atomically take a job for a stage — `Action.CLAIM` (queued -> editing), `Action.ENCODE` (edited ->
    encoding: the delivery stage, which then sends) or `Action.SEND` (encoded, or failed with its retry
    due -> sending) — and its lease; False if it is not there to take."""
    # an early duplicate of a delayed retry must not start it before its time (1 s clock slack)
    soon = utcnow() + dt.timedelta(seconds=1)
    if action is Action.SEND:  # encoded, or a failed delivery whose retry is due (never a failed edit)
        due = or_(Job.state == JobState.ENCODED.value,
                  and_(Job.next_attempt_at.is_not(None), Job.next_attempt_at <= soon))
    elif action is Action.ENCODE:  # an edited job is always due
        due = Job.state == JobState.EDITED.value
    else:
        due = or_(Job.next_attempt_at.is_(None), Job.next_attempt_at <= soon)

    def take_lease(s: Session) -> None:  # in the claim's transaction: never a running job without a lease
        s.execute(delete(JobLease).where(JobLease.job_id == job_id))
        s.add(JobLease(job_id=job_id, worker_id=me.worker_id, hostname=me.hostname, pid=me.pid,
                       heartbeat_at=utcnow()))

    return store.transition(job_id, action, where=[due], also=take_lease).changed


def claim_companions(store: JobStore, first: Job, me: WorkerIdentity, limit: int) -> list[int]:
    """Claim (each atomically, with its lease) up to `limit` more queued jobs that can be edited in one
    batch with `first` (`[worker] batch_size`): the same model and the same `EditParams.batch_key()`.
    Oldest first; a job another worker takes meanwhile is skipped. Their own queue messages later find
    nothing to claim."""
    from editor import EditParams

    if limit <= 0:
        return []
    key = EditParams.from_dict(first.params or {}).batch_key()
    soon = utcnow() + dt.timedelta(seconds=1)
    with store.db.session() as s:
        candidates = s.execute(
            select(Job.id, Job.params)
            .where(Job.state == JobState.QUEUED.value, Job.id != first.id, Job.model_hash == first.model_hash,
                   or_(Job.next_attempt_at.is_(None), Job.next_attempt_at <= soon))
            .order_by(Job.id)
            .limit(limit * 8)
        ).all()
    taken: list[int] = []
    for job_id, params in candidates:
        if len(taken) >= limit:
            break
        try:
            same = EditParams.from_dict(params or {}).batch_key() == key
        except Exception:  # noqa: BLE001 - a job whose parameters no longer validate runs (and fails) alone
            same = False
        if same and claim(store, int(job_id), me):
            taken.append(int(job_id))
    return taken


def renew(store: JobStore, job_id: int, me: WorkerIdentity) -> None:
    with store.db.session() as s:
        s.execute(
            update(JobLease)
            .where(JobLease.job_id == job_id, JobLease.worker_id == me.worker_id)
            .values(heartbeat_at=utcnow())
        )


def release(store: JobStore, job_id: int, me: WorkerIdentity) -> None:
    with store.db.session() as s:
        s.execute(delete(JobLease).where(JobLease.job_id == job_id, JobLease.worker_id == me.worker_id))


class Heartbeat:
    """Renews one job's lease in a background thread while the job runs (`with Heartbeat(...):`)."""

    def __init__(self, store: JobStore, job_id: int, me: WorkerIdentity, interval: float):
        self._store, self._job_id, self._me, self._interval = store, job_id, me, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"x2x-lease-{job_id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                renew(self._store, self._job_id, self._me)
            except Exception:  # a transient DB error must not kill the job; the next beat retries
                log.warning("lease renewal failed for job %s", self._job_id, exc_info=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def recoverable_jobs(store: JobStore, *, lease_seconds: float, requeue_queued_after: float) -> list[int]:
    """Ids of jobs whose worker is gone (stale/missing lease, or dead pid on this host) and of
    'queued'/'failed' jobs whose message is overdue (lost with a killed worker)."""
    now = utcnow()
    stale_before = now - dt.timedelta(seconds=lease_seconds)
    overdue_before = now - dt.timedelta(seconds=requeue_queued_after)
    me = WorkerIdentity.current()
    out: list[int] = []
    with store.db.session() as s:
        rows = s.execute(
            select(Job.id, JobLease.hostname, JobLease.pid, JobLease.heartbeat_at)
            .outerjoin(JobLease, JobLease.job_id == Job.id)
            .where(Job.state.in_(IN_PROGRESS_STATES))
        ).all()
        for job_id, host, pid, beat in rows:
            stale = beat is None or beat < stale_before
            dead_here = host == me.hostname and pid != me.pid and not _pid_alive(int(pid))
            if stale or dead_here:
                out.append(int(job_id))
        overdue = s.scalars(
            select(Job.id).where(
                or_(
                    and_(Job.state.in_((JobState.QUEUED.value, JobState.RECEIVED.value, JobState.EDITED.value,
                                        JobState.ENCODED.value)),
                         Job.updated_at < overdue_before,
                         or_(Job.next_attempt_at.is_(None), Job.next_attempt_at < overdue_before)),
                    # a failed job waiting for its retry: its ETA message may have died with a worker
                    and_(Job.state == JobState.FAILED.value, Job.next_attempt_at.is_not(None),
                         Job.next_attempt_at < overdue_before),
                )
            )
        ).all()
        out.extend(int(i) for i in overdue)
    return sorted(set(out))


def _orphan_conditions(store: JobStore, job_id: int, lease_seconds: float) -> list[ColumnElement[bool]]:
    """The extra WHERE of taking an orphaned job away from its worker: its lease is stale (unless the
    worker is a dead process on this host), so a live worker that renewed its lease keeps the job."""
    stale_before = utcnow() - dt.timedelta(seconds=lease_seconds)
    me = WorkerIdentity.current()
    with store.db.session() as s:
        lease = s.get(JobLease, job_id)
        dead_local = (
            lease is not None and lease.hostname == me.hostname and lease.pid != me.pid
            and not _pid_alive(lease.pid)
        )
    live_lease = exists().where(JobLease.job_id == job_id, JobLease.heartbeat_at >= stale_before)
    return [] if dead_local else [~live_lease]


def _drop_lease(job_id: int) -> Callable[[Session], None]:
    def drop(s: Session) -> None:
        s.execute(delete(JobLease).where(JobLease.job_id == job_id))

    return drop


def requeue_in_progress(store: JobStore, job_id: int, *, lease_seconds: float) -> bool:
    """Put an orphaned in-progress job back where its step starts — queued (edit), edited (encode) or
    encoded (send) — with one conditional UPDATE, so a live worker that renewed its lease in the
    meantime keeps the job, and count the requeue. Returns True if this call requeued it."""
    job = store.get(job_id)
    back = {JobState.SENDING.value: Action.REQUEUE_DELIVERY, JobState.ENCODING.value: Action.REQUEUE_ENCODE}
    action = back.get(job.state if job is not None else "", Action.REQUEUE)
    return store.transition(
        job_id, action, where=_orphan_conditions(store, job_id, lease_seconds), also=_drop_lease(job_id),
        requeues=Job.requeues + 1,
    ).changed


def quarantine_orphan(store: JobStore, job_id: int, *, lease_seconds: float, max_requeues: int) -> str | None:
    """An orphaned job whose worker already died on it `max_requeues` times is dead-lettered instead of
    requeued: one job that kills its worker (memory, a crash in a library) must not kill the next one,
    and the next. Returns the reason recorded, or None when the job may be requeued."""
    job = store.get(job_id)
    if job is None or (job.requeues or 0) < max_requeues:
        return None
    deaths = (job.requeues or 0) + 1
    reason = (f"quarantined: its worker died {deaths} times while it was {job.state} (queue.max_requeues="
              f"{max_requeues}); find out why (worker logs, memory) before `x2x jobs retry {job_id}`")
    if job.last_error:
        reason += f"; last error: {job.last_error[:500]}"
    changed = store.transition(
        job_id, Action.DEAD_LETTER, where=[Job.requeues == job.requeues, *_orphan_conditions(store, job_id,
                                                                                           lease_seconds)],
        also=_drop_lease(job_id), last_error=reason, next_attempt_at=None, requeues=Job.requeues + 1,
    ).changed
    return reason if changed else None

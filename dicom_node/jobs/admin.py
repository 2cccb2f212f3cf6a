"""Operator actions on jobs (cancel, retry, retry one destination), shared by the REST API and the CLI."""

from __future__ import annotations

from sqlalchemy.orm import Session

from dicom_node.context import NodeContext
from dicom_node.db.tables import Job
from dicom_node.jobs.deliveries import deliveries, reset_deliveries
from dicom_node.jobs.queue import send_delivery, send_task
from dicom_node.jobs.states import TRANSITIONS, Action, JobState

BEFORE_DELIVERY = (JobState.RECEIVED, JobState.QUEUED, JobState.EDITING, JobState.EDITED, JobState.ENCODING,
                   JobState.ENCODED)


class JobActionError(Exception):
    """The action does not apply to the job in its current state (HTTP 409 / CLI exit 1)."""


def cancel_job(ctx: NodeContext, job_id: int) -> Job:
    """Cancel a job that has not finished. A job already being edited finishes its current stage but
    the pipeline will not start the next one (its next transition fails); nothing is sent twice."""
    result = ctx.store.transition(job_id, Action.CANCEL, next_attempt_at=None)
    if result.job is None:
        raise KeyError(job_id)
    if not result.changed:
        raise JobActionError(f"job {job_id} is {result.job.state}; nothing to cancel")
    return result.job


def retry_job(ctx: NodeContext, job_id: int) -> Job:
    """Queue a failed, dead-lettered or cancelled job again (attempt and requeue counters reset, every
    undelivered delivery with them). Objects already on disk are reused, destinations already served are
    not sent to again."""

    def reset(s: Session) -> None:
        reset_deliveries(s, job_id)

    result = ctx.store.transition(job_id, Action.RETRY, attempts=0, requeues=0, next_attempt_at=None,
                                  finished_at=None, also=reset)
    if result.job is None:
        raise KeyError(job_id)
    if not result.changed:
        allowed = ", ".join(sorted(s.value for s in TRANSITIONS[Action.RETRY].allowed))
        raise JobActionError(f"job {job_id} is {result.job.state}; only {allowed} jobs are retried")
    send_task(ctx, job_id)
    return result.job


def retry_delivery(ctx: NodeContext, job_id: int, destination: str) -> Job:
    """Send a job's objects to one destination again (its delivery failed or was dead-lettered): that
    delivery back to pending with zero attempts, the job back to the delivery stage. The edit is not redone."""
    names = [d.destination for d in deliveries(ctx, job_id)]
    job = ctx.store.get(job_id)
    if job is None:
        raise KeyError(job_id)
    if destination not in names:
        known = ", ".join(names) or "none"
        raise JobActionError(f"job {job_id} has no delivery to {destination!r} (its deliveries: {known})")
    delivered = [d for d in deliveries(ctx, job_id) if d.destination == destination and d.state == "delivered"]
    if delivered:
        raise JobActionError(f"job {job_id} was already delivered to {destination!r}")

    def reset(s: Session) -> None:
        reset_deliveries(s, job_id, destination)

    if job.state in BEFORE_DELIVERY:  # its delivery stage is still to come and will take this one too
        with ctx.db.session() as s:
            reset(s)
        fresh = ctx.store.get(job_id)
        assert fresh is not None
        return fresh
    result = ctx.store.transition(job_id, Action.REOPEN, also=reset)
    if not result.changed:
        raise JobActionError(f"job {job_id} is {result.state}; its deliveries are retried once it is encoded "
                             f"(or use a full retry)")
    send_delivery(ctx, job_id)
    assert result.job is not None
    return result.job

"""Operator actions on jobs (cancel, retry), shared by the REST API and the admin CLI."""

from __future__ import annotations

from dicom_node.context import NodeContext
from dicom_node.db.tables import Job
from dicom_node.jobs.queue import send_task
from dicom_node.jobs.states import TRANSITIONS, Action


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
    """Queue a failed, dead-lettered or cancelled job again (attempt counter reset)."""
    result = ctx.store.transition(job_id, Action.RETRY, attempts=0, requeues=0, next_attempt_at=None,
                                  finished_at=None)
    if result.job is None:
        raise KeyError(job_id)
    if not result.changed:
        allowed = ", ".join(sorted(s.value for s in TRANSITIONS[Action.RETRY].allowed))
        raise JobActionError(f"job {job_id} is {result.job.state}; only {allowed} jobs are retried")
    send_task(ctx, job_id)
    return result.job

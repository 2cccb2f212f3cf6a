"""Operator actions on jobs (cancel, retry), shared by the REST API and the admin CLI."""

from __future__ import annotations

from dicom_node.context import NodeContext
from dicom_node.jobs.store import CANCELLED, DEAD_LETTER, DONE, FAILED, QUEUED, STATES, Job, utcnow

CANCELLABLE = tuple(st for st in STATES if st not in (DONE, CANCELLED))  # failed/dead-letter too
RETRYABLE = (FAILED, DEAD_LETTER, CANCELLED)


class JobActionError(Exception):
    """The action does not apply to the job in its current state (HTTP 409 / CLI exit 1)."""


def cancel_job(ctx: NodeContext, job_id: int) -> Job:
    """Cancel a job that has not finished. A job already being edited finishes its current stage but
    the pipeline will not start the next one (it checks the state); its outputs are never sent twice."""
    job, changed = ctx.store.transition_if(
        job_id, CANCELLABLE, state=CANCELLED, finished_at=utcnow(), next_attempt_at=None
    )
    if job is None:
        raise KeyError(job_id)
    if not changed:
        raise JobActionError(f"job {job_id} is {job.state}; nothing to cancel")
    return job


def retry_job(ctx: NodeContext, job_id: int) -> Job:
    """Queue a failed, dead-lettered or cancelled job again (attempt counter reset)."""
    from dicom_node.jobs import queue

    job, changed = ctx.store.transition_if(
        job_id, RETRYABLE, state=QUEUED, attempts=0, next_attempt_at=None, finished_at=None
    )
    if job is None:
        raise KeyError(job_id)
    if not changed:
        raise JobActionError(f"job {job_id} is {job.state}; only failed, dead-letter or cancelled jobs are retried")
    queue.send_task(ctx, job_id)
    return job

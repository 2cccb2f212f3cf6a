"""`x2x jobs retry ID`: queue a failed or dead-lettered job again (its attempt counter reset).

The job keeps its idempotency key, so a retry reuses the objects already encoded on disk (no second
edit) and their UIDs (the PACS de-duplicates anything it already holds).
"""

from __future__ import annotations

import typer

from dicom_node.cli.apps import jobs_app, node_context
from dicom_node.cli.errors import fail


@jobs_app.command("retry")
def jobs_retry(job_id: int = typer.Argument(..., help="Job id (see `x2x jobs list`).")) -> None:
    """Queue a failed, dead-lettered or cancelled job again; a running worker picks it up."""
    from dicom_node.jobs.admin import JobActionError, retry_job

    ctx = node_context()
    job = ctx.store.get(job_id)
    if job is None:
        fail("jobs retry", f"no job {job_id}", "take a job id from `x2x jobs list`")
    previous, last_error = job.state, job.last_error
    try:
        retry_job(ctx, job_id)  # atomic: only failed, dead-letter or cancelled jobs move back to queued
    except JobActionError as exc:
        fail("jobs retry", str(exc), "only failed, dead-letter or cancelled jobs can be retried "
             "(`x2x jobs show ID` shows its state)", cause=exc)
    typer.echo(f"job {job_id} queued again (was {previous}; last error: {last_error or 'none'})")

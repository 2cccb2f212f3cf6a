"""`x2x jobs retry ID`: queue a failed or dead-lettered job again (its attempt counter reset).

The job keeps its idempotency key, so a retry reuses the objects already encoded on disk (no second
edit) and their UIDs (the PACS de-duplicates anything it already holds).
"""

from __future__ import annotations

import typer

from dicom_node.cli_apps import jobs_app, settings

RETRYABLE = ("failed", "dead-letter", "cancelled")


@jobs_app.command("retry")
def jobs_retry(job_id: int = typer.Argument(..., help="Job id (see `x2x jobs list`).")) -> None:
    """Queue a failed, dead-lettered or cancelled job again; a running worker picks it up."""
    from dicom_node.context import build_context
    from dicom_node.jobs import dispatch
    from dicom_node.jobs.store import QUEUED

    ctx = build_context(settings())
    job = ctx.store.get(job_id)
    if job is None:
        typer.echo(f"x2x jobs retry: no job {job_id}", err=True)
        raise typer.Exit(code=1)
    if job.state not in RETRYABLE:
        typer.echo(f"x2x jobs retry: job {job_id} is {job.state}; only {', '.join(RETRYABLE)} jobs are retried",
                   err=True)
        raise typer.Exit(code=1)
    previous = job.state
    ctx.store.set_state(job_id, QUEUED, attempts=0, next_attempt_at=None, finished_at=None)
    dispatch.enqueue(ctx, job_id)
    typer.echo(f"job {job_id} queued again (was {previous}; last error: {job.last_error or 'none'})")

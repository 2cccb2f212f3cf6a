"""`x2x jobs retry ID [--destination NAME]`: queue a failed or dead-lettered job again (its attempt
counters reset), or deliver it again to one destination.

The job keeps its idempotency key, so a retry reuses the objects already encoded on disk (no second
edit) and their UIDs (the PACS de-duplicates anything it already holds); destinations already served
are not sent to again.
"""

from __future__ import annotations

from typing import Optional

import typer

from dicom_node.cli.apps import jobs_app, node_context
from dicom_node.cli.errors import fail


@jobs_app.command("retry")
def jobs_retry(
    job_id: int = typer.Argument(..., help="Job id (see `x2x jobs list`)."),
    destination: Optional[str] = typer.Option(
        None, "--destination", "-d", help="Deliver again to this destination only (a failed or dead-lettered delivery)."
    ),
) -> None:
    """Queue a failed, dead-lettered or cancelled job again; a running worker picks it up."""
    from dicom_node.jobs.admin import JobActionError, retry_delivery, retry_job

    ctx = node_context()
    job = ctx.store.get(job_id)
    if job is None:
        fail("jobs retry", f"no job {job_id}", "take a job id from `x2x jobs list`")
    previous, last_error = job.state, job.last_error
    try:
        if destination is None:
            retry_job(ctx, job_id)  # atomic: only failed, dead-letter or cancelled jobs move back to queued
        else:
            retry_delivery(ctx, job_id, destination)
    except JobActionError as exc:
        hint = ("only failed, dead-letter or cancelled jobs can be retried" if destination is None
                else "`x2x jobs show ID` lists its deliveries and their states")
        fail("jobs retry", str(exc), f"{hint} (`x2x jobs show ID` shows its state)", cause=exc)
    if destination is None:
        typer.echo(f"job {job_id} queued again (was {previous}; last error: {last_error or 'none'})")
    else:
        typer.echo(f"job {job_id}: delivery to {destination} queued again (job was {previous})")

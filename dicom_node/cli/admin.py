"""`x2x status` and `x2x jobs list|show|cancel` (`x2x jobs retry` lives in commands/jobs.py).

Output is JSON with `--json` for scripts, else a short table.
"""

from __future__ import annotations

import json
from typing import Any, Optional

import typer

from dicom_node.cli.apps import app, jobs_app, node_context
from dicom_node.cli.errors import fail


def _context() -> Any:
    return node_context()


def _view(job: Any) -> dict[str, Any]:
    out: dict[str, Any] = job.to_dict()
    return out


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Node, queue depth, live workers and model, as seen from the job database and the broker."""
    from dicom_node.jobs import leases
    from dicom_node.jobs.queue import active_workers, broker_reachable

    ctx = _context()
    s = ctx.settings
    counts = ctx.store.count_by_state()
    live = leases.live_workers(ctx.store, within_seconds=3 * s.queue.sweep_interval_seconds + 5)
    ok, detail = broker_reachable(ctx)
    pinged = active_workers(ctx)
    model = s.model.path
    info = {
        "node": {"ae_title": s.node.ae_title, "port": s.node.port, "api": f"http://{s.api.host}:{s.api.port}"},
        "queue": {
            "broker": _redact(s.broker_url),
            "broker_reachable": ok,
            "broker_detail": None if ok else detail,
            "depth": counts.get("queued", 0) + counts.get("received", 0),
            "awaiting_retry": counts.get("failed", 0),
        },
        "workers": {
            "live": [{"id": w.worker_id, "kind": w.kind, "seen_at": w.seen_at.isoformat() + "Z"} for w in live],
            "celery_ping": pinged,
        },
        "jobs": counts,
        "model": str(model) if model else "default (demo model, else tiny random fixture)",
    }
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    typer.echo(f"node     {s.node.ae_title} on port {s.node.port}; API {info['node']['api']}")
    typer.echo(f"queue    {info['queue']['broker']} ({'reachable' if ok else 'UNREACHABLE: ' + detail})")
    typer.echo(f"depth    {info['queue']['depth']} waiting, {info['queue']['awaiting_retry']} awaiting retry")
    workers = "".join(f"\n         {w['id']} ({w['kind']})" for w in info["workers"]["live"])
    typer.echo(f"workers  {len(live)} live{workers}")
    typer.echo("jobs     " + ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "jobs     none")
    typer.echo(f"model    {info['model']}")


def _redact(url: str) -> str:
    """Hide a password in a broker URL (redis://:secret@host)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":****@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


@jobs_app.command("list")
def jobs_list(
    state: Optional[list[str]] = typer.Option(None, "--state", "-s", help="Filter by state (repeatable)."),
    study: Optional[str] = typer.Option(None, help="Filter by Study Instance UID."),
    limit: int = typer.Option(50, min=1, help="At most this many jobs."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Recent jobs, newest first. Instances that were not edited (and refused requests) are not jobs:
    `x2x studies list` shows them."""
    from dicom_node.jobs.states import STATES

    bad = [x for x in state or [] if x not in STATES]
    if bad:
        fail("jobs list", f"unknown state(s) {', '.join(bad)}", f"use one of: {', '.join(STATES)}", code=2)
    from dicom_node.studies.records import not_edited_counts

    ctx = _context()
    jobs = ctx.store.list(state=state or None, study_instance_uid=study, limit=limit)
    if as_json:
        typer.echo(json.dumps([_view(j) for j in jobs], indent=2, default=str))
        return
    if jobs:
        typer.echo(f"{'id':>6}  {'state':<12} {'att':>3}  {'created (UTC)':<19}  instruction")
    else:
        typer.echo("no jobs" + (" match" if state or study else " yet"))
    for j in jobs:
        typer.echo(f"{j.id:>6}  {j.state:<12} {j.attempts:>3}  {j.created_at:%Y-%m-%d %H:%M:%S}  {j.instruction}")
    # Skipped instances and refused requests never become jobs: say where they are.
    skipped, refused = not_edited_counts(ctx.db)
    if skipped or refused:
        typer.echo(f"not jobs: {skipped} instance(s) not edited, {refused} study request(s) refused; why: "
                   "x2x studies list (or the dashboard's Studies table, GET /studies)")


@jobs_app.command("show")
def jobs_show(job_id: int = typer.Argument(..., help="Job id.")) -> None:
    """Everything recorded about one job (JSON): state, attempts, error, timings, output UIDs, and one
    delivery record per destination."""
    from dicom_node.jobs.deliveries import deliveries

    ctx = _context()
    job = ctx.store.get(job_id)
    if job is None:
        fail("jobs show", f"no job {job_id}", "take a job id from `x2x jobs list`")
    view = _view(job) | {"deliveries": [d.to_dict() for d in deliveries(ctx, job_id)]}
    typer.echo(json.dumps(view, indent=2, default=str))


@jobs_app.command("cancel")
def jobs_cancel(job_id: int = typer.Argument(..., help="Job id.")) -> None:
    """Cancel a job that has not finished (done jobs stay done)."""
    from dicom_node.jobs.admin import JobActionError, cancel_job

    try:
        job = cancel_job(_context(), job_id)
    except KeyError:
        fail("jobs cancel", f"no job {job_id}", "take a job id from `x2x jobs list`")
    except JobActionError as exc:
        fail("jobs cancel", str(exc), "only a job that has not finished can be cancelled (`x2x jobs show ID`)")
    typer.echo(f"job {job.id} cancelled")

"""`x2x studies list|show`: what arrived and what became of it — the edit request that applied (or the
parser's error), and every instance that was not edited with its reason (lateral, CT, no request, ...).

Jobs exist only for edited instances, so `x2x jobs list` cannot show these; it points here. The same
facts: `GET /studies[/{uid}]` and the dashboard's Studies table.
"""

from __future__ import annotations

import json
from typing import Any, Optional

import typer

from dicom_node.cli.apps import node_context, studies_app
from dicom_node.cli.errors import fail


def _short(text: str | None, width: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _note(record: Any, reasons: list[str]) -> str:
    """Why a study needs a look: its request error, else why instances were skipped, else its instruction."""
    if record.request_error:
        return f"REQUEST ERROR: {record.request_error}"
    if reasons:
        return f"{record.skipped_count} not edited: " + "; ".join(reasons)
    return record.instruction or ""


@studies_app.command("list")
def studies_list(
    state: Optional[str] = typer.Option(None, "--state", "-s", help="Only studies in this state: receiving, "
                                        "processed, no-request, invalid-request or error."),
    limit: int = typer.Option(50, min=1, help="At most this many studies, newest first."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Recent studies, newest first: state, AE titles, instances, jobs, and why instances were not edited."""
    from dicom_node.studies.records import list_studies, skip_summary

    ctx = node_context()
    records = list_studies(ctx.db, limit=limit, state=state)
    reasons = skip_summary(ctx.db, [r.study_instance_uid for r in records])
    if as_json:
        rows = [{**r.to_dict(), "not_edited_reasons": reasons.get(r.study_instance_uid, [])} for r in records]
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    if not records:
        typer.echo("no studies received yet")
        return
    typer.echo(f"{'updated (UTC)':<19}  {'state':<15} {'calling -> called':<29} {'inst':>4} {'jobs':>4} "
               f"{'skip':>4}  study / note")
    for r in records:
        aes = _short(f"{r.calling_ae or '?'} -> {r.called_ae or '?'}", 29)
        typer.echo(f"{r.updated_at:%Y-%m-%d %H:%M:%S}  {r.state:<15} {aes:<29} {r.instance_count:>4} "
                   f"{r.jobs_created:>4} {r.skipped_count:>4}  {r.study_instance_uid}")
        note = _note(r, reasons.get(r.study_instance_uid, []))
        if note:
            typer.echo(f"{'':<21}{_short(note, 200)}")
    typer.echo("details of one study (every instance, its job or why not): x2x studies show STUDY_UID")


@studies_app.command("show")
def studies_show(
    study_uid: str = typer.Argument(..., help="Study Instance UID (see `x2x studies list`)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """One study: its state and edit request (or the parser's error), and every instance with its job id or
    the reason it was not edited."""
    from dicom_node.studies.records import study_instances, study_record

    ctx = node_context()
    record = study_record(ctx.db, study_uid)
    if record is None:
        fail("studies show", f"no study {study_uid}", "take a Study Instance UID from `x2x studies list`")
    instances = study_instances(ctx.db, study_uid)
    if as_json:
        typer.echo(json.dumps({**record.to_dict(), "instances": [i.to_dict() for i in instances]},
                              indent=2, default=str))
        return
    typer.echo(f"study        {record.study_instance_uid}")
    typer.echo(f"state        {record.state}")
    typer.echo(f"from         calling AE {record.calling_ae or '?'} -> called AE {record.called_ae or '?'}")
    typer.echo(f"request      {record.request_source or 'none'}: {record.instruction or '-'}")
    if record.request_error:
        typer.echo(f"REQUEST ERROR {record.request_error}")
    typer.echo(f"instances    {record.instance_count} received, {record.jobs_created} job(s), "
               f"{record.skipped_count} not edited")
    for i in sorted(instances, key=lambda x: (x.status != "job", x.sop_instance_uid or "")):
        outcome = f"job {i.job_id}" if i.status == "job" else f"{i.status}: {i.reason or ''}"
        body = f" body part {i.body_part}" if i.body_part else ""
        typer.echo(f"  {i.sop_instance_uid or i.path}  {i.modality or '?'}{body}  {outcome}")

"""`/jobs`: list and show jobs, ask for edits (of a spooled study, or of uploaded files), retry, cancel,
previews. Mutating routes need the bearer token, reads the token or the read token (api/auth.py)."""

from __future__ import annotations

import io
import json
from typing import Annotated, Any

import pydicom
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import ValidationError

from dicom_node.api.auth import require_reader, require_token
from dicom_node.api.deps import get_ctx
from dicom_node.api.views import PREVIEW_KINDS, JobRequest, job_view
from dicom_node.context import NodeContext
from dicom_node.db.tables import Job
from dicom_node.edit_params import InvalidEditParams, resolve_params
from dicom_node.inbound.bounds import Limits
from dicom_node.inbound.events import API
from dicom_node.inbound.http import Refused, identify_part10, new_association_id, spool_instance
from dicom_node.inbound.spool import Spool
from dicom_node.jobs.admin import JobActionError, cancel_job, retry_delivery, retry_job
from dicom_node.jobs.deliveries import deliveries
from dicom_node.jobs.states import STATES
from dicom_node.studies.intake import ExplicitRequest, create_jobs_for_study, refusal
from dicom_node.studies.records import StudyOutcome

router = APIRouter(prefix="/jobs", tags=["jobs"])

# A job id is a 64-bit integer in every database we use: larger is a 422, not a database error.
JobId = Annotated[int, Path(ge=1, le=2**63 - 1, description="job id")]


def _job_or_404(ctx: NodeContext, job_id: int) -> Job:
    job = ctx.store.get(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id}")
    return job


@router.get("", dependencies=[Depends(require_reader)])
def list_jobs(
    state: list[str] | None = Query(None, description="one or more states"),
    study: str | None = Query(None, description="Study Instance UID"),
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0),
    ctx: NodeContext = Depends(get_ctx),
) -> dict[str, Any]:
    bad = [s for s in state or [] if s not in STATES]
    if bad:
        raise HTTPException(422, f"unknown state(s) {bad}; known: {list(STATES)}")
    jobs = ctx.store.list(state=state or None, study_instance_uid=study, limit=limit, offset=offset)
    return {"jobs": [job_view(j) for j in jobs], "counts": ctx.store.count_by_state()}


@router.get("/{job_id}", dependencies=[Depends(require_reader)])
def show_job(job_id: JobId, ctx: NodeContext = Depends(get_ctx)) -> dict[str, Any]:
    """The job, with one delivery record per destination that asked for it."""
    return job_view(_job_or_404(ctx, job_id), deliveries(ctx, job_id))


def _explicit(ctx: NodeContext, req: JobRequest) -> ExplicitRequest:
    longest = ctx.settings.requests.max_instruction_chars
    if len(req.instruction) > longest:
        raise HTTPException(422, f"instruction of {len(req.instruction)} characters; at most {longest} "
                                 "(requests.max_instruction_chars)")
    if req.destination is not None and req.destination not in ctx.settings.destinations:
        raise HTTPException(422, f"destination {req.destination!r} is not defined in [destinations]")
    overrides = req.param_overrides()
    try:
        resolve_params(ctx.settings, overrides)
    except InvalidEditParams as exc:
        raise HTTPException(422, f"invalid edit parameters: {exc}") from exc
    return ExplicitRequest(req.instruction, req.seed, req.destination, overrides)


def _outcome_view(ctx: NodeContext, outcome: StudyOutcome) -> dict[str, Any]:
    if outcome.error and not (outcome.created_jobs or outcome.existing_jobs):
        raise HTTPException(422, outcome.error)
    ids = list(outcome.created_jobs) + list(outcome.existing_jobs)
    if not ids:
        reasons = "; ".join(f"{sop}: {why}" for sop, why in outcome.skipped) or "no instances"
        raise HTTPException(422, f"no eligible instance in study {outcome.study_uid}: {reasons}")
    jobs = [job_view(j) for i in ids if (j := ctx.store.get(i)) is not None]
    return {
        "study_instance_uid": outcome.study_uid,
        "state": outcome.state,
        "created": list(outcome.created_jobs),
        "existing": list(outcome.existing_jobs),
        "skipped": [{"sop_instance_uid": sop, "reason": why} for sop, why in outcome.skipped],
        "jobs": jobs,
    }


def _refuse_if_needed(ctx: NodeContext, explicit: ExplicitRequest, datasets: list[Any]) -> None:
    """A request that would be refused is refused before anything is written (spool, study records)."""
    why = refusal(ctx.settings, explicit, datasets)
    if why is not None:
        raise HTTPException(422, why)


def submit_for_study(ctx: NodeContext, req: JobRequest) -> dict[str, Any]:
    """An edit of a study already in the spool."""
    files = Spool(ctx.settings.spool_dir).instances(req.study_instance_uid)
    if not files:
        raise HTTPException(404, f"study {req.study_instance_uid} is not in the spool")
    explicit = _explicit(ctx, req)
    readable = []
    for path in files:
        try:
            readable.append(pydicom.dcmread(path, defer_size=1024))
        except Exception:  # noqa: BLE001 - recorded as unreadable by the intake, not a reason to refuse
            continue
    _refuse_if_needed(ctx, explicit, readable)
    outcome = create_jobs_for_study(ctx, req.study_instance_uid, origin=API, explicit=explicit)
    return _outcome_view(ctx, outcome)


def submit_upload(ctx: NodeContext, uploads: list[bytes], req: JobRequest) -> dict[str, Any]:
    """DICOM files in the request: checked, spooled, then jobs for their studies with this request."""
    explicit = _explicit(ctx, req)
    # the SCP's checks first (bounds, UIDs), so that only a bounded data set reaches pydicom
    limits, cap = Limits.from_node(ctx.settings.node), ctx.settings.node.max_instance_mb * 1024 * 1024
    parsed = []
    for index, raw in enumerate(uploads):
        try:
            found = identify_part10(raw, limits, cap)
            ds = pydicom.dcmread(io.BytesIO(raw), defer_size=1024)
        except Refused as exc:
            raise HTTPException(413 if exc.failure_reason == 0xA700 else 422,
                                f"file part {index} refused: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - bounded but still unreadable
            raise HTTPException(422, f"file part {index} is not a DICOM Part 10 object ({type(exc).__name__})") from exc
        parsed.append((raw, ds, found.study_uid, found.series_uid, found.sop_uid))
    _refuse_if_needed(ctx, explicit, [item[1] for item in parsed])
    spool = Spool(ctx.settings.spool_dir)
    studies: set[str] = set()
    association = new_association_id()
    for raw, _ds, study, series, sop in parsed:
        try:
            spool_instance(spool, raw, study_uid=study, series_uid=series, sop_uid=sop, association_id=association,
                           called_ae=ctx.settings.node.ae_title, origin=API, sink=None)
        except OSError as exc:
            raise HTTPException(507, f"spool write failed: {exc}") from exc
        studies.add(study)
    results = [_outcome_view(ctx, create_jobs_for_study(ctx, study, origin=API, explicit=explicit))
               for study in sorted(studies)]
    if len(results) == 1:
        return results[0]
    return {"studies": results, "jobs": [j for r in results for j in r["jobs"]]}


@router.post("", status_code=201, dependencies=[Depends(require_token)])
async def submit_job(request: Request, ctx: NodeContext = Depends(get_ctx)) -> dict[str, Any]:
    """JSON `JobRequest` for a study in the spool, or `multipart/form-data` with one or more DICOM
    `file` parts plus `instruction` (and optional `seed`, `steps`, `params` (JSON), `destination`) fields."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        cap = ctx.settings.node.max_instance_mb * 1024 * 1024
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            raise HTTPException(413, f"upload larger than node.max_instance_mb={ctx.settings.node.max_instance_mb}")
        form = await request.form()
        fields: dict[str, Any] = {k: v for k, v in form.items() if isinstance(v, str)}
        files = [f for f in form.getlist("file") if not isinstance(f, str)]
        if sum(f.size or 0 for f in files) > cap:
            raise HTTPException(413, f"upload larger than node.max_instance_mb={ctx.settings.node.max_instance_mb}")
        uploads = [await f.read() for f in files]
        if not uploads:
            raise HTTPException(422, "multipart upload needs at least one 'file' part")
        try:
            if "params" in fields:
                fields["params"] = json.loads(fields["params"])
            req = JobRequest.model_validate({"study_instance_uid": "-", **fields})
        except (ValidationError, ValueError) as exc:
            raise HTTPException(422, f"invalid job request: {exc}") from exc
        return await run_in_threadpool(submit_upload, ctx, uploads, req)
    try:
        req = JobRequest.model_validate(await request.json())
    except (ValidationError, ValueError) as exc:
        raise HTTPException(422, f"invalid job request: {exc}") from exc
    return await run_in_threadpool(submit_for_study, ctx, req)


@router.post("/{job_id}/retry", dependencies=[Depends(require_token)])
def retry(
    job_id: JobId, ctx: NodeContext = Depends(get_ctx),
    destination: str | None = Query(None, description="retry only the delivery to this destination"),
) -> dict[str, Any]:
    _job_or_404(ctx, job_id)
    try:
        job = retry_job(ctx, job_id) if destination is None else retry_delivery(ctx, job_id, destination)
    except JobActionError as exc:
        raise HTTPException(409, str(exc)) from exc
    return job_view(job, deliveries(ctx, job_id))


@router.delete("/{job_id}", dependencies=[Depends(require_token)])
def cancel(job_id: JobId, ctx: NodeContext = Depends(get_ctx)) -> dict[str, Any]:
    _job_or_404(ctx, job_id)
    try:
        return job_view(cancel_job(ctx, job_id))
    except JobActionError as exc:
        raise HTTPException(409, str(exc)) from exc


@router.get("/{job_id}/previews/{kind}.png", response_class=FileResponse, dependencies=[Depends(require_reader)])
def preview(job_id: JobId, kind: str, ctx: NodeContext = Depends(get_ctx)) -> FileResponse:
    """PNG previews written by the pipeline (counterfactual and overlay are SYNTHETIC)."""
    if kind not in PREVIEW_KINDS:
        raise HTTPException(404, f"no preview kind {kind!r}")
    path = ctx.settings.results_dir / str(job_id) / f"{kind}.png"
    if not path.is_file():
        raise HTTPException(404, "preview not written (yet)")
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "no-cache"})

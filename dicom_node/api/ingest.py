"""Instances that arrive over HTTP (STOW-RS, POST /jobs uploads) take the C-STORE path: the durable
spool, then the study logic (`dicom_node.studies`), which checks eligibility, works out the edit request
and creates idempotent jobs.

With a running node (`x2x serve`) the study tracker gets the same events as from the SCP, so STOW
studies complete after the same quiet period; an API without a tracker processes the study as soon as
the request's instances are stored (the request is then the whole "association").
"""

from __future__ import annotations

import io
import logging
import uuid
from typing import Any

import pydicom
from fastapi import HTTPException

from dicom_node.api.views import JobRequest, job_view
from dicom_node.context import NodeContext
from dicom_node.spool import Spool, StoreStatus
from dicom_node.studies import STOW_CALLING_AE

log = logging.getLogger("x2x.api.ingest")


def _spool(ctx: NodeContext) -> Spool:
    return Spool(ctx.settings.spool_dir)


def spool_instance(
    ctx: NodeContext, raw: bytes, *, study_uid: str, series_uid: str, sop_uid: str, association_id: str,
    tracker: Any | None = None,
) -> StoreStatus:
    """Store one Part 10 file durably and tell the tracker (if any); OSError when the spool refuses."""
    from dicom_node import metrics
    from dicom_node.receive import InstanceReceived

    spool = _spool(ctx)
    outcome = spool.store(raw, study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid)
    if not outcome.ok:
        raise OSError(outcome.error or "spool write failed")
    duplicate = outcome.status is StoreStatus.ALREADY_STORED
    event = InstanceReceived(study_uid, series_uid, sop_uid, str(outcome.path), STOW_CALLING_AE,
                             ctx.settings.node.ae_title, association_id, duplicate)
    if tracker is not None:
        tracker.handle(event)  # counts x2x_instances_received_total itself
    else:
        metrics.instances_received_total.labels("duplicate" if duplicate else "stored").inc()
    return outcome.status


def request_finished(ctx: NodeContext, association_id: str, study_uids: set[str], tracker: Any | None) -> list[int]:
    """The HTTP request that brought instances is over: let the study logic run. Returns new job ids
    (empty with a tracker: its quiet period decides when the study is complete)."""
    from dicom_node import metrics
    from dicom_node.receive import AssociationEnded
    from dicom_node.studies import create_jobs_for_study

    if tracker is not None:
        tracker.handle(AssociationEnded(association_id, STOW_CALLING_AE, ctx.settings.node.ae_title, "released"))
        return []
    created: list[int] = []
    for study in sorted(study_uids):
        metrics.studies_completed_total.inc()
        outcome = create_jobs_for_study(ctx, study, calling_ae=STOW_CALLING_AE, origin="stow")
        created += outcome.created_jobs
    return created


def new_association_id() -> str:
    return f"http-{uuid.uuid4().hex[:12]}"


def submit_for_study(ctx: NodeContext, req: JobRequest) -> dict[str, Any]:
    """POST /jobs for a study already in the spool."""
    from dicom_node.studies import create_jobs_for_study

    if not _spool(ctx).instances(req.study_instance_uid):
        raise HTTPException(404, f"study {req.study_instance_uid} is not in the spool")
    if req.destination is not None and req.destination not in ctx.settings.destinations:
        raise HTTPException(422, f"destination {req.destination!r} is not defined in [destinations]")
    outcome = create_jobs_for_study(
        ctx, req.study_instance_uid, origin="api", instruction=req.instruction, seed=req.seed,
        destination=req.destination,
    )
    return _outcome_view(ctx, outcome)


def submit_upload(ctx: NodeContext, uploads: list[bytes], req: JobRequest) -> dict[str, Any]:
    """POST /jobs with DICOM files: spool them, then create jobs for their studies with this instruction."""
    from dicom_node.studies import create_jobs_for_study

    if req.destination is not None and req.destination not in ctx.settings.destinations:
        raise HTTPException(422, f"destination {req.destination!r} is not defined in [destinations]")
    studies: set[str] = set()
    association = new_association_id()
    for index, raw in enumerate(uploads):
        try:
            ds = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True)
            study, series, sop = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
        except Exception as exc:
            raise HTTPException(422, f"file part {index} is not a DICOM Part 10 object ({type(exc).__name__})") from exc
        try:
            spool_instance(ctx, raw, study_uid=study, series_uid=series, sop_uid=sop, association_id=association)
        except OSError as exc:
            raise HTTPException(507, f"spool write failed: {exc}") from exc
        studies.add(study)
    results = [
        _outcome_view(ctx, create_jobs_for_study(ctx, study, origin="api", instruction=req.instruction,
                                                 seed=req.seed, destination=req.destination))
        for study in sorted(studies)
    ]
    if len(results) == 1:
        return results[0]
    return {"studies": results, "jobs": [j for r in results for j in r["jobs"]]}


def _outcome_view(ctx: NodeContext, outcome: Any) -> dict[str, Any]:

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

"""`/studies`: what arrived, which request applied, and why instances were skipped."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request

from dicom_node.api.auth import require_reader
from dicom_node.api.deps import get_ctx
from dicom_node.context import NodeContext
from dicom_node.studies.records import list_studies, study_instances, study_record

router = APIRouter(prefix="/studies", tags=["studies"], dependencies=[Depends(require_reader)])


def _retrying(request: Request) -> dict[str, dict[str, Any]]:
    """Studies the running node's tracker retries (their completion failed), with the reason: shown even
    while the database cannot be written."""
    provider = getattr(request.app.state, "retrying_studies", None)
    return provider() if provider is not None else {}


@router.get("")
def studies(
    request: Request, limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0),
    ctx: NodeContext = Depends(get_ctx),
) -> dict[str, Any]:
    retrying = _retrying(request)
    rows = [r.to_dict() for r in list_studies(ctx.db, limit=limit, offset=offset)]
    for row in rows:
        row.update(retrying.pop(row["study_instance_uid"], {}))
    if offset == 0:  # a failing study the database never recorded still shows
        rows[:0] = [{"study_instance_uid": uid, **info} for uid, info in retrying.items()]
    return {"studies": rows}


@router.get("/{study_uid}")
def show_study(request: Request, study_uid: str, ctx: NodeContext = Depends(get_ctx)) -> dict[str, Any]:
    """The study's state and request (or the parser's error), and every instance: job or skip reason."""
    retrying = _retrying(request).get(study_uid, {})
    record = study_record(ctx.db, study_uid)
    if record is None and not retrying:
        raise HTTPException(404, f"no study {study_uid}")
    row = record.to_dict() if record is not None else {"study_instance_uid": study_uid}
    return {**row, **retrying, "instances": [i.to_dict() for i in study_instances(ctx.db, study_uid)]}

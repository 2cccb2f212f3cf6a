"""`/studies`: what arrived, which request applied, and why instances were skipped."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query

from dicom_node.api.deps import get_ctx
from dicom_node.context import NodeContext
from dicom_node.studies.records import list_studies, study_instances, study_record

router = APIRouter(prefix="/studies", tags=["studies"])


@router.get("")
def studies(
    limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0), ctx: NodeContext = Depends(get_ctx)
) -> dict[str, Any]:
    return {"studies": [r.to_dict() for r in list_studies(ctx.db, limit=limit, offset=offset)]}


@router.get("/{study_uid}")
def show_study(study_uid: str, ctx: NodeContext = Depends(get_ctx)) -> dict[str, Any]:
    """The study's state and request (or the parser's error), and every instance: job or skip reason."""
    record = study_record(ctx.db, study_uid)
    if record is None:
        raise HTTPException(404, f"no study {study_uid}")
    return {**record.to_dict(), "instances": [i.to_dict() for i in study_instances(ctx.db, study_uid)]}

"""DICOMweb in: `POST /dicomweb/studies[/{study}]` (STOW-RS) -> dicom_node.inbound.stow."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from dicom_node.api.auth import require_token
from dicom_node.api.deps import get_ctx, get_sink
from dicom_node.context import NodeContext
from dicom_node.inbound.events import EventSink
from dicom_node.inbound.spool import Spool
from dicom_node.inbound.stow import NotMultipartRelated, parse_multipart_related, store_parts

router = APIRouter(prefix="/dicomweb", tags=["dicomweb"], dependencies=[Depends(require_token)])


async def _stow(request: Request, study: str | None, ctx: NodeContext, sink: EventSink) -> JSONResponse:
    try:
        parts = parse_multipart_related(await request.body(), request.headers.get("content-type", ""))
    except NotMultipartRelated as exc:
        raise HTTPException(415 if exc.wrong_content_type else 400, str(exc)) from exc
    response, status = await run_in_threadpool(
        store_parts, Spool(ctx.settings.spool_dir), parts, url_study=study, base_url=str(request.base_url),
        called_ae=ctx.settings.node.ae_title, sink=sink,
    )
    return JSONResponse(response.to_json_dict(), status_code=status, media_type="application/dicom+json")


@router.post("/studies", summary="STOW-RS: store instances (any study)")
async def stow_studies(
    request: Request, ctx: NodeContext = Depends(get_ctx), sink: EventSink = Depends(get_sink)
) -> JSONResponse:
    return await _stow(request, None, ctx, sink)


@router.post("/studies/{study}", summary="STOW-RS: store instances of one study")
async def stow_study(
    request: Request, study: str, ctx: NodeContext = Depends(get_ctx), sink: EventSink = Depends(get_sink)
) -> JSONResponse:
    return await _stow(request, study, ctx, sink)

"""DICOMweb in: `POST /dicomweb/studies[/{study}]` (STOW-RS) -> dicom_node.inbound.stow.

The body is streamed into a nameless temporary file in the spool (never held in memory), refused with
413 past `node.max_instance_mb`, then parsed in place (mapped): parts are views into the file.
"""

from __future__ import annotations

import contextlib
import mmap
import tempfile
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from dicom_node.api.auth import require_token
from dicom_node.api.deps import get_ctx, get_sink
from dicom_node.context import NodeContext
from dicom_node.inbound.bounds import Limits
from dicom_node.inbound.events import EventSink
from dicom_node.inbound.spool import Spool
from dicom_node.inbound.stow import NotMultipartRelated, boundary_of, parse_multipart_related, store_parts

router = APIRouter(prefix="/dicomweb", tags=["dicomweb"], dependencies=[Depends(require_token)])


async def _body_file(request: Request, ctx: NodeContext) -> Any:
    """The request body in a temporary file (413 past the size cap)."""
    cap = ctx.settings.node.max_instance_mb * 1024 * 1024
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise HTTPException(413, f"body of {int(declared) / 2**20:.0f} MB is larger than node.max_instance_mb="
                                 f"{ctx.settings.node.max_instance_mb}")
    incoming = ctx.settings.spool_dir / ".incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    fh = tempfile.TemporaryFile(dir=incoming)  # noqa: SIM115 - closed by the caller
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                raise HTTPException(413, f"body larger than node.max_instance_mb={ctx.settings.node.max_instance_mb}")
            fh.write(chunk)
        fh.flush()
    except BaseException:
        fh.close()
        raise
    return fh


def _store(ctx: NodeContext, fh: Any, content_type: str, study: str | None, base_url: str,
           sink: EventSink) -> tuple[Any, int]:
    size = fh.seek(0, 2)
    if size == 0:
        raise NotMultipartRelated("empty body")
    with mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_READ) as mapped:
        parts = parse_multipart_related(mapped, content_type)
        try:
            return store_parts(
                Spool(ctx.settings.spool_dir), parts, url_study=study, base_url=base_url,
                called_ae=ctx.settings.node.ae_title, sink=sink, limits=Limits.from_node(ctx.settings.node),
                max_instance_bytes=ctx.settings.node.max_instance_mb * 1024 * 1024,
            )
        finally:
            for part in parts:
                with contextlib.suppress(AttributeError, BufferError):
                    part.body.release()


async def _stow(request: Request, study: str | None, ctx: NodeContext, sink: EventSink) -> JSONResponse:
    content_type = request.headers.get("content-type", "")
    try:
        boundary_of(content_type)
    except NotMultipartRelated as exc:
        raise HTTPException(415 if exc.wrong_content_type else 400, str(exc)) from exc
    fh = await _body_file(request, ctx)
    try:
        response, status = await run_in_threadpool(_store, ctx, fh, content_type, study, str(request.base_url), sink)
    except NotMultipartRelated as exc:
        raise HTTPException(415 if exc.wrong_content_type else 400, str(exc)) from exc
    finally:
        fh.close()
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

"""DICOMweb STOW-RS in: `POST /dicomweb/studies[/{study}]` with multipart/related; type="application/dicom".

Each part goes through the same durable spool and study logic as a C-STORE; the response is a DICOM
JSON dataset with ReferencedSOPSequence (stored) and FailedSOPSequence (rejected, with FailureReason).
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass
from typing import Any

import pydicom
from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence

log = logging.getLogger("x2x.api.stow")

router = APIRouter(prefix="/dicomweb", tags=["dicomweb"])

# PS3.4 Annex GG / PS3.18 failure reasons
CANNOT_UNDERSTAND = 0xC000
OUT_OF_RESOURCES = 0xA700
STUDY_UID_MISMATCH = 0xA900  # "data set does not match SOP class" is the closest standard code
PROCESSING_FAILURE = 0x0110

_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)
_TYPE = re.compile(r'type="?([^";]+)"?', re.IGNORECASE)


@dataclass
class Part:
    headers: dict[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()


def parse_multipart_related(body: bytes, content_type: str) -> list[Part]:
    """Split a multipart/related body into parts (RFC 2046); raises ValueError if it is not one."""
    if not content_type.lower().startswith("multipart/related"):
        raise ValueError("Content-Type must be multipart/related; type=\"application/dicom\"")
    match = _BOUNDARY.search(content_type)
    if not match:
        raise ValueError("multipart/related without a boundary parameter")
    delimiter = b"--" + match.group(1).encode()
    chunks = body.split(delimiter)
    parts: list[Part] = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):  # the close delimiter
            break
        chunk = chunk[2:] if chunk.startswith(b"\r\n") else chunk.lstrip(b"\n")
        head, sep, payload = chunk.partition(b"\r\n\r\n")
        if not sep:
            head, sep, payload = chunk.partition(b"\n\n")
        # the CRLF before the next delimiter belongs to the delimiter, not the body
        if payload.endswith(b"\r\n"):
            payload = payload[:-2]
        elif payload.endswith(b"\n"):
            payload = payload[:-1]
        headers: dict[str, str] = {}
        for line in head.decode("latin-1").splitlines():
            name, colon, value = line.partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        parts.append(Part(headers, payload))
    if not parts:
        raise ValueError("multipart/related body has no parts")
    return parts


def _failed(sop_class: str | None, sop_uid: str | None, reason: int) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class or ""
    item.ReferencedSOPInstanceUID = sop_uid or ""
    item.FailureReason = reason
    return item


def _referenced(sop_class: str, sop_uid: str, base_url: str, study: str, series: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_uid
    item.RetrieveURL = f"{base_url}dicomweb/studies/{study}/series/{series}/instances/{sop_uid}"
    return item


def store_parts(
    ctx: Any, parts: list[Part], url_study: str | None, base_url: str, tracker: Any | None = None
) -> tuple[Dataset, int]:
    """Spool every DICOM part, then hand the studies to the study logic. Returns (response, status)."""
    from dicom_node.api import ingest

    association = ingest.new_association_id()
    response = Dataset()
    referenced: list[Dataset] = []
    failed: list[Dataset] = []
    studies: set[str] = set()
    for index, part in enumerate(parts):
        if part.content_type not in ("application/dicom", ""):
            log.info("STOW part %d rejected: content type %s", index, part.content_type)
            failed.append(_failed(None, None, CANNOT_UNDERSTAND))
            continue
        try:
            ds = pydicom.dcmread(io.BytesIO(part.body), stop_before_pixels=True)
            sop_class, sop_uid = str(ds.SOPClassUID), str(ds.SOPInstanceUID)
            study, series = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
        except (InvalidDicomError, AttributeError, ValueError, EOFError, KeyError, TypeError) as exc:
            log.info("STOW part %d rejected: not a DICOM Part 10 object (%s)", index, type(exc).__name__)
            failed.append(_failed(None, None, CANNOT_UNDERSTAND))
            continue
        if url_study is not None and study != url_study:
            failed.append(_failed(sop_class, sop_uid, STUDY_UID_MISMATCH))
            continue
        try:
            ingest.spool_instance(ctx, part.body, study_uid=study, series_uid=series, sop_uid=sop_uid,
                                  association_id=association, tracker=tracker)
        except OSError as exc:
            log.error("STOW part %d: spool write failed: %s", index, exc.strerror or exc)
            failed.append(_failed(sop_class, sop_uid, OUT_OF_RESOURCES))
            continue
        referenced.append(_referenced(sop_class, sop_uid, base_url, study, series))
        studies.add(study)
    if studies:
        ingest.request_finished(ctx, association, studies, tracker)
    if referenced:
        response.ReferencedSOPSequence = Sequence(referenced)
    if failed:
        response.FailedSOPSequence = Sequence(failed)
    if url_study is not None:
        response.RetrieveURL = f"{base_url}dicomweb/studies/{url_study}"
    status = 200 if not failed else (202 if referenced else 409)
    return response, status


async def _stow(request: Request, study: str | None) -> JSONResponse:
    ctx = request.app.state.ctx
    try:
        parts = parse_multipart_related(await request.body(), request.headers.get("content-type", ""))
    except ValueError as exc:
        raise HTTPException(415 if "Content-Type" in str(exc) else 400, str(exc)) from exc
    tracker = getattr(request.app.state, "tracker", None)
    response, status = await run_in_threadpool(store_parts, ctx, parts, study, str(request.base_url), tracker)
    return JSONResponse(response.to_json_dict(), status_code=status, media_type="application/dicom+json")


@router.post("/studies", summary="STOW-RS: store instances (any study)")
async def stow_studies(request: Request) -> JSONResponse:
    return await _stow(request, None)


@router.post("/studies/{study}", summary="STOW-RS: store instances of one study")
async def stow_study(request: Request, study: str) -> JSONResponse:
    return await _stow(request, study)

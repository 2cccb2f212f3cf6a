"""STOW-RS in (PS3.18 10.5): a multipart/related body of DICOM parts -> the durable spool.

Each part goes through the same spool and study logic as a C-STORE; the response is a DICOM JSON data
set with ReferencedSOPSequence (stored) and FailedSOPSequence (refused, with a FailureReason). The HTTP
route is dicom_node.api.dicomweb; this module knows no web framework.
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence

from dicom_node.inbound.events import STOW, EventSink
from dicom_node.inbound.http import new_association_id, request_finished, spool_instance
from dicom_node.inbound.spool import Spool

log = logging.getLogger("x2x.inbound.stow")

# PS3.4 Annex GG / PS3.18 failure reasons
CANNOT_UNDERSTAND = 0xC000
OUT_OF_RESOURCES = 0xA700
STUDY_UID_MISMATCH = 0xA900  # "data set does not match SOP class" is the closest standard code
PROCESSING_FAILURE = 0x0110

_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)


class NotMultipartRelated(ValueError):
    """The body is not multipart/related (HTTP 415 when the Content-Type is wrong, else 400)."""

    def __init__(self, message: str, *, wrong_content_type: bool = False):
        super().__init__(message)
        self.wrong_content_type = wrong_content_type


@dataclass
class Part:
    headers: dict[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()


def parse_multipart_related(body: bytes, content_type: str) -> list[Part]:
    """Split a multipart/related body into parts (RFC 2046)."""
    if not content_type.lower().startswith("multipart/related"):
        raise NotMultipartRelated('Content-Type must be multipart/related; type="application/dicom"',
                                  wrong_content_type=True)
    match = _BOUNDARY.search(content_type)
    if not match:
        raise NotMultipartRelated("multipart/related without a boundary parameter")
    delimiter = b"--" + match.group(1).encode()
    parts: list[Part] = []
    for chunk in body.split(delimiter)[1:]:
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
        raise NotMultipartRelated("multipart/related body has no parts")
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
    spool: Spool, parts: list[Part], *, url_study: str | None, base_url: str, called_ae: str,
    sink: EventSink | None,
) -> tuple[Dataset, int]:
    """Spool every DICOM part and report them to `sink`. Returns (response data set, HTTP status)."""
    association = new_association_id()
    response = Dataset()
    referenced: list[Dataset] = []
    failed: list[Dataset] = []
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
            spool_instance(spool, part.body, study_uid=study, series_uid=series, sop_uid=sop_uid,
                           association_id=association, called_ae=called_ae, origin=STOW, sink=sink)
        except OSError as exc:
            log.error("STOW part %d: spool write failed: %s", index, exc.strerror or exc)
            failed.append(_failed(sop_class, sop_uid, OUT_OF_RESOURCES))
            continue
        referenced.append(_referenced(sop_class, sop_uid, base_url, study, series))
    if referenced:
        request_finished(association, called_ae, STOW, sink)
        response.ReferencedSOPSequence = Sequence(referenced)
    if failed:
        response.FailedSOPSequence = Sequence(failed)
    if url_study is not None:
        response.RetrieveURL = f"{base_url}dicomweb/studies/{url_study}"
    status = 200 if not failed else (202 if referenced else 409)
    return response, status

"""STOW-RS in (PS3.18 10.5): a multipart/related body of DICOM parts -> the durable spool.

Each part goes through the same checks, spool and study logic as a C-STORE (inbound/http.py:
`identify_part10`: bounds before parsing, UIDs checked); the response is a DICOM JSON data set with
ReferencedSOPSequence (stored) and FailedSOPSequence (refused, with a FailureReason). The body is
parsed where it lies (bytes, or the temporary file the route streamed it into, mapped): parts are
views, never copies. The HTTP route is dicom_node.api.dicomweb; this module knows no web framework.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicom_node.inbound.bounds import Limits
from dicom_node.inbound.events import STOW, EventSink
from dicom_node.inbound.http import (
    CANNOT_UNDERSTAND,
    OUT_OF_RESOURCES,
    Refused,
    identify_part10,
    new_association_id,
    request_finished,
    spool_instance,
)
from dicom_node.inbound.spool import Spool

log = logging.getLogger("x2x.inbound.stow")

# PS3.4 Annex GG / PS3.18 failure reasons
STUDY_UID_MISMATCH = 0xA900  # "data set does not match SOP class" is the closest standard code
PROCESSING_FAILURE = 0x0110
__all__ = ["CANNOT_UNDERSTAND", "OUT_OF_RESOURCES", "PROCESSING_FAILURE", "STUDY_UID_MISMATCH", "Part",
           "NotMultipartRelated", "parse_multipart_related", "store_parts"]

_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)
MAX_PART_HEADER_BYTES = 16 * 1024


class NotMultipartRelated(ValueError):
    """The body is not multipart/related (HTTP 415 when the Content-Type is wrong, else 400)."""

    def __init__(self, message: str, *, wrong_content_type: bool = False):
        super().__init__(message)
        self.wrong_content_type = wrong_content_type


@dataclass
class Part:
    headers: dict[str, str]
    body: Any  # bytes or a memoryview into the request body

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()


def boundary_of(content_type: str) -> bytes:
    if not content_type.lower().startswith("multipart/related"):
        raise NotMultipartRelated('Content-Type must be multipart/related; type="application/dicom"',
                                  wrong_content_type=True)
    match = _BOUNDARY.search(content_type)
    if not match:
        raise NotMultipartRelated("multipart/related without a boundary parameter")
    return match.group(1).encode("latin-1", "replace")


def parse_multipart_related(body: Any, content_type: str) -> list[Part]:
    """Split a multipart/related body (bytes or mmap) into parts (RFC 2046); bodies are views."""
    delimiter = b"--" + boundary_of(content_type)
    view = memoryview(body)
    parts: list[Part] = []
    pos = body.find(delimiter)
    while pos >= 0:
        start = pos + len(delimiter)
        if bytes(view[start:start + 2]) == b"--":  # the close delimiter
            break
        nxt = body.find(delimiter, start)
        end = len(body) if nxt < 0 else nxt
        if bytes(view[start:start + 2]) == b"\r\n":
            start += 2
        elif bytes(view[start:start + 1]) == b"\n":
            start += 1
        sep = body.find(b"\r\n\r\n", start, min(end, start + MAX_PART_HEADER_BYTES))
        skip = 4
        if sep < 0:
            sep = body.find(b"\n\n", start, min(end, start + MAX_PART_HEADER_BYTES))
            skip = 2
        if sep < 0:
            head, payload_start = bytes(view[start:min(end, start + MAX_PART_HEADER_BYTES)]), end
        else:
            head, payload_start = bytes(view[start:sep]), sep + skip
        payload_end = end
        # the CRLF before the next delimiter belongs to the delimiter, not the body
        if bytes(view[max(payload_start, payload_end - 2):payload_end]) == b"\r\n":
            payload_end -= 2
        elif bytes(view[max(payload_start, payload_end - 1):payload_end]) == b"\n":
            payload_end -= 1
        headers: dict[str, str] = {}
        for line in head.decode("latin-1").splitlines():
            name, colon, value = line.partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        parts.append(Part(headers, view[payload_start:max(payload_start, payload_end)]))
        pos = nxt
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
    sink: EventSink | None, limits: Limits | None = None, max_instance_bytes: int = 2 * 1024**3,
) -> tuple[Dataset, int]:
    """Spool every DICOM part and report them to `sink`. Returns (response data set, HTTP status)."""
    limits = limits or Limits()
    association = new_association_id()
    response = Dataset()
    referenced: list[Dataset] = []
    failed: list[Dataset] = []
    for index, part in enumerate(parts):
        if part.content_type not in ("application/dicom", ""):
            log.info("STOW part %d rejected: content type %s", index, part.content_type[:100])
            failed.append(_failed(None, None, CANNOT_UNDERSTAND))
            continue
        try:
            found = identify_part10(part.body, limits, max_instance_bytes)
        except Refused as exc:
            log.info("STOW part %d rejected: %s", index, exc)
            failed.append(_failed(None, None, exc.failure_reason))
            continue
        if url_study is not None and found.study_uid != url_study:
            failed.append(_failed(found.sop_class_uid, found.sop_uid, STUDY_UID_MISMATCH))
            continue
        try:
            spool_instance(spool, part.body, study_uid=found.study_uid, series_uid=found.series_uid,
                           sop_uid=found.sop_uid, association_id=association, called_ae=called_ae, origin=STOW,
                           sink=sink)
        except OSError as exc:
            log.error("STOW part %d: spool write failed: %s", index, exc.strerror or exc)
            failed.append(_failed(found.sop_class_uid, found.sop_uid, OUT_OF_RESOURCES))
            continue
        referenced.append(_referenced(found.sop_class_uid, found.sop_uid, base_url, found.study_uid,
                                      found.series_uid))
    if referenced:
        request_finished(association, called_ae, STOW, sink)
        response.ReferencedSOPSequence = Sequence(referenced)
    if failed:
        response.FailedSOPSequence = Sequence(failed)
    if url_study is not None:
        response.RetrieveURL = f"{base_url}dicomweb/studies/{url_study}"
    status = 200 if not failed else (202 if referenced else 409)
    return response, status

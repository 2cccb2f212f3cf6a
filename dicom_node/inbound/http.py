"""Instances that arrive over HTTP (STOW-RS, `POST /jobs` uploads) take the C-STORE path: the durable
spool first, then the same events to the study tracker, with `origin` "stow" or "api" and no AE titles.
Each HTTP request stands in for an association: its instances are one association's, and the request's
end is the association's release.

`identify_part10` is the C-STORE hot path's checks for a Part 10 object in a buffer: the file meta
read by hand, the data set walked for its bounds (inbound/bounds.py) before pydicom parses anything,
then the UIDs peeked from its head and checked; `Refused` says why not, with the status to answer.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from dicom_node.inbound.bounds import LimitExceeded, Limits, Unfollowable, check_encoded, part10_meta
from dicom_node.inbound.encoding import HEAD_BYTES, UndecodableDataset, peek_identifiers
from dicom_node.inbound.events import AssociationEnded, EventSink, InstanceReceived, count_receive_event
from dicom_node.inbound.spool import Spool, StoreStatus

CANNOT_UNDERSTAND = 0xC000  # PS3.18 FailureReason "Cannot understand"
OUT_OF_RESOURCES = 0xA700


class Refused(ValueError):
    def __init__(self, reason: str, failure_reason: int = CANNOT_UNDERSTAND, *, over_limits: bool = False):
        super().__init__(reason)
        self.failure_reason = failure_reason
        self.over_limits = over_limits


@dataclass(frozen=True)
class Identified:
    sop_class_uid: str
    sop_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax: str


def uid_problem(uid: str) -> str | None:
    """Why `uid` cannot be used as a UID (None when it can): it names files and goes into file meta."""
    if len(uid) > 64:
        return f"UID of {len(uid)} characters (at most 64)"
    if not uid.isascii() or not uid.isprintable():
        return f"UID with non-ASCII or control characters {uid[:64]!r}"
    if " " in uid or "\\" in uid:
        return f"UID with a space or several values {uid[:64]!r}"
    return None


def identify_part10(buf: Any, limits: Limits, max_bytes: int) -> Identified:
    """Check a Part 10 object (bytes / memoryview / mmap) the way the SCP checks a C-STORE."""
    if len(buf) > max_bytes:
        raise Refused(f"{len(buf) / 2**20:.0f} MB is larger than node.max_instance_mb", OUT_OF_RESOURCES)
    try:
        meta = part10_meta(buf)
    except Unfollowable as exc:
        raise Refused(f"not a DICOM Part 10 object ({exc})") from exc
    if meta.dataset_offset == 0:
        raise Refused("not a DICOM Part 10 object (no 'DICM' prefix)")
    body = memoryview(buf)[meta.dataset_offset:]
    try:
        try:
            check_encoded(body, meta.transfer_syntax, limits)
        except LimitExceeded as exc:
            raise Refused(str(exc), over_limits=True) from exc
        try:
            study, series, sop = peek_identifiers(bytes(body[:HEAD_BYTES]), meta.transfer_syntax)
        except UndecodableDataset:
            try:
                study, series, sop = peek_identifiers(bytes(body), meta.transfer_syntax)
            except UndecodableDataset as exc:
                raise Refused(str(exc)) from exc
    finally:
        body.release()
    sop = sop or meta.sop_instance_uid
    for what, uid in (("Study Instance UID", study), ("Series Instance UID", series), ("SOP Instance UID", sop)):
        problem = uid_problem(uid)
        if problem is not None:
            raise Refused(f"{what}: {problem}")
    return Identified(meta.sop_class_uid, sop, study, series, meta.transfer_syntax)


def new_association_id() -> str:
    return f"http-{uuid.uuid4().hex[:12]}"


def spool_instance(
    spool: Spool, raw: bytes | memoryview, *, study_uid: str, series_uid: str, sop_uid: str, association_id: str,
    called_ae: str, origin: str, sink: EventSink | None,
) -> StoreStatus:
    """Store one Part 10 file durably and report it; OSError when the spool refuses it."""
    spool.record_origin(study_uid, called_ae, None, origin)
    outcome = spool.store(raw, study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid)
    if not outcome.ok:
        raise OSError(outcome.error or "spool write failed")
    event = InstanceReceived(study_uid, series_uid, sop_uid, str(outcome.path), None, called_ae,
                             association_id, outcome.status is StoreStatus.ALREADY_STORED, origin)
    if sink is not None:
        sink(event)
    else:
        count_receive_event(event)
    return outcome.status


def request_finished(association_id: str, called_ae: str, origin: str, sink: EventSink | None) -> None:
    """The HTTP request that brought instances is over (the association's release)."""
    if sink is not None:
        sink(AssociationEnded(association_id, None, called_ae, "released", origin))

"""Instances that arrive over HTTP (STOW-RS, `POST /jobs` uploads) take the C-STORE path: the durable
spool first, then the same events to the study tracker, with `origin` "stow" or "api" and no AE titles.
Each HTTP request stands in for an association: its instances are one association's, and the request's
end is the association's release.
"""

from __future__ import annotations

import uuid

from dicom_node.inbound.events import AssociationEnded, EventSink, InstanceReceived, count_receive_event
from dicom_node.inbound.spool import Spool, StoreStatus


def new_association_id() -> str:
    return f"http-{uuid.uuid4().hex[:12]}"


def spool_instance(
    spool: Spool, raw: bytes, *, study_uid: str, series_uid: str, sop_uid: str, association_id: str,
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

"""What the inbound stage reports to the study tracker, from the SCP (in-process or from receiver
processes over a queue) and from the HTTP ingest (STOW-RS, `POST /jobs` uploads).

`origin` says how an instance arrived: "dimse" (C-STORE), "stow" (STOW-RS) or "api" (a `POST /jobs`
upload). HTTP requests have no AE titles: their `calling_ae` is None and `called_ae` is the node's own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Union

from dicom_node import metrics

DIMSE = "dimse"
STOW = "stow"
API = "api"
ORIGINS = (DIMSE, STOW, API)


@dataclass(frozen=True)
class InstanceReceived:
    study_uid: str
    series_uid: str
    sop_uid: str
    path: str
    calling_ae: str | None
    called_ae: str
    association_id: str
    duplicate: bool
    origin: str = DIMSE


@dataclass(frozen=True)
class AssociationEnded:
    """An association (or the HTTP request standing in for one) is over."""

    association_id: str
    calling_ae: str | None
    called_ae: str
    how: str  # released | aborted
    origin: str = DIMSE


@dataclass(frozen=True)
class AssociationRejected:
    calling_ae: str
    reason: str


@dataclass(frozen=True)
class InstanceRefused:
    sop_uid: str
    status: str  # out-of-resources | cannot-understand
    reason: str


ReceiveEvent = Union[InstanceReceived, AssociationEnded, AssociationRejected, InstanceRefused]
EventSink = Callable[[ReceiveEvent], None]


def count_receive_event(event: ReceiveEvent) -> None:
    """Count one event on the inbound counters (dicom_node.metrics), wherever it is handled."""
    if isinstance(event, InstanceReceived):
        metrics.instances_received_total.labels("duplicate" if event.duplicate else "stored").inc()
    elif isinstance(event, AssociationRejected):
        metrics.associations_rejected_total.inc()
    elif isinstance(event, InstanceRefused):
        metrics.instances_refused_total.labels(event.status).inc()

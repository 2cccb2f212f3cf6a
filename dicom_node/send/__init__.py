"""Destinations behind one interface: `get_sender(dest) -> Sender`, `Sender.send(items) -> SendReport`.

Types: "cstore" (DICOM C-STORE SCU), "stow" (DICOMweb STOW-RS), "folder" (file copy).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dicom_node.config import CStoreDestination, Destination, FolderDestination, Settings, StowDestination
from dicom_node.send.base import Sender, SendError, SendItem, SendReport
from dicom_node.send.cstore import CStoreSender
from dicom_node.send.folder import FolderSender
from dicom_node.send.stow import StowSender

__all__ = [
    "SENDERS",
    "SendError",
    "SendItem",
    "SendReport",
    "Sender",
    "destination_name",
    "get_sender",
    "lookup_destination",
    "resolve_destination",
]


# Each type's required keys are checked when the config is loaded (config.Destination is a typed union).
def _cstore(name: str, dest: CStoreDestination, calling_ae: str) -> Sender:
    return CStoreSender(name, host=dest.host, port=dest.port, ae_title=dest.ae_title, calling_ae=calling_ae)


def _stow(name: str, dest: StowDestination, calling_ae: str) -> Sender:
    password = dest.password.get_secret_value() if dest.password else None
    return StowSender(name, url=dest.url, username=dest.username, password=password)


def _folder(name: str, dest: FolderDestination, calling_ae: str) -> Sender:
    return FolderSender(name, path=dest.path)


SENDERS: dict[str, Callable[[str, Any, str], Sender]] = {
    "cstore": _cstore,
    "stow": _stow,
    "folder": _folder,
}


def get_sender(dest: Destination, *, name: str = "destination", calling_ae: str = "X2X") -> Sender:
    try:
        factory = SENDERS[dest.type]
    except KeyError as exc:
        raise SendError(f"destination {name!r}: unknown type {dest.type!r}") from exc
    return factory(name, dest, calling_ae)


def destination_name(settings: Settings, *, requested: str | None, calling_ae: str | None) -> str | None:
    """Which destination an edit goes to: the request's (a called-AE rule, the REST API) ->
    [send.peers][calling AE] -> [send] default_destination -> None (results kept on disk only)."""
    name = requested
    if not name and calling_ae:
        name = settings.send.peers.get(calling_ae.strip())
    return name or settings.send.default_destination or None


def lookup_destination(settings: Settings, name: str) -> Destination:
    """The configured destination `name`; SendError when [destinations] does not define it."""
    dest = settings.destinations.get(name)
    if dest is None:
        raise SendError(f"destination {name!r} is not defined in [destinations]")
    return dest


def resolve_destination(
    settings: Settings, *, job_destination: str | None, calling_ae: str | None
) -> tuple[str, Destination] | None:
    """`destination_name` and its configuration; None = keep on disk. Raises SendError when a name is
    chosen that [destinations] does not define."""
    name = destination_name(settings, requested=job_destination, calling_ae=calling_ae)
    return None if name is None else (name, lookup_destination(settings, name))

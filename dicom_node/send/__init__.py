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

__all__ = ["Sender", "SendError", "SendItem", "SendReport", "get_sender", "resolve_destination", "SENDERS"]


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


def resolve_destination(
    settings: Settings, *, job_destination: str | None, calling_ae: str | None
) -> tuple[str, Destination] | None:
    """job.destination (called-AE rule) -> [send.peers][calling AE] -> default -> None (keep on disk).

    Raises SendError when a name is chosen that [destinations] does not define.
    """
    name = job_destination
    if not name and calling_ae:
        name = settings.send.peers.get(calling_ae.strip())
    if not name:
        name = settings.send.default_destination
    if not name:
        return None
    dest = settings.destinations.get(name)
    if dest is None:
        raise SendError(f"destination {name!r} is not defined in [destinations]")
    return name, dest

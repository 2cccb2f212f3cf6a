"""Is a destination reachable before any job needs it? (`x2x config check --probe`)

cstore: a C-ECHO (Verification) with the node's AE title as calling AE; stow: HTTP OPTIONS on
`<url>/studies`, then a QIDO `GET <url>/studies?limit=1` when OPTIONS is not answered (Orthanc's DICOMweb
plugin answers 404 to OPTIONS); folder: a probe file written, fsynced and removed. Nothing is stored.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from pathlib import Path
from typing import Any

from dicom_node.config import CStoreDestination, FolderDestination, StowDestination


def probe(dest: Any, *, calling_ae: str, timeout: float = 5.0) -> str | None:
    """None when the destination answers, else why not (one line)."""
    if isinstance(dest, CStoreDestination):
        return _echo(dest, calling_ae, timeout)
    if isinstance(dest, StowDestination):
        return _http(dest, timeout)
    if isinstance(dest, FolderDestination):
        return _folder(dest)
    return f"cannot probe a destination of type {getattr(dest, 'type', '?')!r}"


@contextlib.contextmanager
def _quiet_pynetdicom() -> Any:
    # pynetdicom logs a refused connection at ERROR on its own; the probe reports it as one line instead.
    logger = logging.getLogger("pynetdicom")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _echo(dest: CStoreDestination, calling_ae: str, timeout: float) -> str | None:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    where = f"{dest.ae_title}@{dest.host}:{dest.port}"
    with _quiet_pynetdicom():
        try:
            assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
        except OSError as exc:
            return f"C-ECHO to {where} failed: {exc}"
        if assoc.is_rejected:
            rsp = assoc.acceptor.primitive
            why = getattr(rsp, "reason_str", None) or "no reason given"
            return f"{where} rejected the association from calling AE {calling_ae!r}: {why}"
        if not assoc.is_established:
            return f"no DICOM answer from {where} (nothing listening there, or a firewall)"
        try:
            status = assoc.send_c_echo()
        finally:
            assoc.release()
    code = int(status.Status) if status is not None and "Status" in status else None
    if code != 0x0000:
        return f"C-ECHO to {where} answered {'nothing' if code is None else f'status 0x{code:04X}'}"
    return None


def _http(dest: StowDestination, timeout: float) -> str | None:
    import requests

    studies = dest.url.rstrip("/")
    studies = studies if studies.endswith("/studies") else studies + "/studies"
    auth = (dest.username, dest.password.get_secret_value() if dest.password else "") if dest.username else None
    try:
        response = requests.options(studies, auth=auth, timeout=timeout)
        if not response.ok and response.status_code not in (401, 403):
            response = requests.get(studies, params={"limit": 1}, auth=auth, timeout=timeout,
                                    headers={"Accept": "application/dicom+json"})
    except requests.RequestException as exc:
        return f"no HTTP answer from {studies}: {type(exc).__name__}"
    if response.status_code in (401, 403):
        return f"{studies} refused the credentials (HTTP {response.status_code}): check username and password"
    if not response.ok:
        return f"{studies} answered HTTP {response.status_code}: is url the DICOMweb root (e.g. .../dicom-web)?"
    return None


def write_probe(folder: Path, prefix: str = ".x2x-probe") -> None:
    """Create `folder` if needed, then write, fsync and remove a probe file in it (OSError when it cannot).
    Permission bits alone say nothing when running as root, and a read-only mount or a full disk only
    shows when something is written."""
    probe_file = folder / f"{prefix}-{uuid.uuid4().hex}"
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(probe_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, b"probe")
        os.fsync(fd)
    finally:
        os.close(fd)
    probe_file.unlink()


def _folder(dest: FolderDestination) -> str | None:
    try:
        write_probe(dest.path)
    except OSError as exc:
        return f"cannot write into {dest.path}: {exc.strerror or exc}"
    return None

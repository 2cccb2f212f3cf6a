"""STOW-RS (PS3.18 10.5): POST {url}/studies with multipart/related; type="application/dicom"."""

from __future__ import annotations

import io
import logging
import time
import uuid
from collections.abc import Sequence

import requests
from pydicom.dataset import Dataset

from dicom_node.send.base import SendItem, SendReport, load

log = logging.getLogger("x2x.send.stow")


def _part_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def multipart_body(datasets: Sequence[Dataset], boundary: str) -> bytes:
    out = io.BytesIO()
    for ds in datasets:
        out.write(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        out.write(_part_bytes(ds))
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue()


def _failed_uids(response: requests.Response) -> dict[str, str]:
    """SOP UIDs listed in the response's Failed SOP Sequence (00081198), DICOM JSON or XML-less."""
    try:
        body = response.json()
    except ValueError:
        return {}
    if isinstance(body, list):
        body = body[0] if body else {}
    failed: dict[str, str] = {}
    for item in (body.get("00081198") or {}).get("Value", []) or []:
        sop = ((item.get("00081155") or {}).get("Value") or ["?"])[0]
        reason = ((item.get("00081197") or {}).get("Value") or ["?"])[0]
        failed[str(sop)] = f"STOW-RS failure reason {reason}"
    return failed


class StowSender:
    def __init__(
        self,
        name: str,
        *,
        url: str,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 60.0,
    ):
        self.name = name
        base = url.rstrip("/")
        self.url = base if base.endswith("/studies") else base + "/studies"
        self.auth = (username, password or "") if username else None
        self.timeout = timeout

    def send(self, items: Sequence[SendItem]) -> SendReport:
        start = time.monotonic()
        report = SendReport(destination=f"{self.name} ({self.url})")
        datasets = [load(i) for i in items]
        uids = [str(ds.SOPInstanceUID) for ds in datasets]
        boundary = uuid.uuid4().hex
        headers = {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        }
        try:
            response = requests.post(
                self.url,
                data=multipart_body(datasets, boundary),
                headers=headers,
                auth=self.auth,
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            report.failed = {uid: f"STOW-RS request failed: {type(exc).__name__}" for uid in uids}
            report.seconds = time.monotonic() - start
            return report
        if response.status_code in (200, 202):
            failed = _failed_uids(response)
            report.failed = {uid: failed[uid] for uid in uids if uid in failed}
            report.sent = [uid for uid in uids if uid not in failed]
        else:
            report.failed = {uid: f"STOW-RS HTTP {response.status_code}" for uid in uids}
        report.seconds = time.monotonic() - start
        log.info("STOW-RS to %s: %d sent, %d failed", self.url, len(report.sent), len(report.failed))
        return report




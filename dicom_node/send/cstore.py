"""C-STORE SCU (pynetdicom): one association per send, proposing only the SOP classes the objects
need (pynetdicom's StoragePresentationContexts lacks Parametric Map, and proposing all ~130 classes
is slow and hits the 128-context limit)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from dicom_node.send.base import SendItem, SendReport, load

log = logging.getLogger("x2x.send.cstore")

# C-STORE statuses that mean "stored" (success and the warning family PS3.4 B.2.3).
_STORED = {0x0000, 0xB000, 0xB006, 0xB007}


class CStoreSender:
    def __init__(
        self,
        name: str,
        *,
        host: str,
        port: int,
        ae_title: str,
        calling_ae: str = "X2X",
        timeout: float = 30.0,
    ):
        self.name = name
        self.host, self.port, self.ae_title = host, port, ae_title
        self.calling_ae = calling_ae
        self.timeout = timeout

    def send(self, items: Sequence[SendItem]) -> SendReport:
        start = time.monotonic()
        report = SendReport(destination=f"{self.name} ({self.ae_title}@{self.host}:{self.port})")
        datasets = [load(i) for i in items]
        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
            ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        try:
            assoc = ae.associate(self.host, self.port, ae_title=self.ae_title)
        except OSError as exc:  # bad address etc.
            report.failed = {str(ds.SOPInstanceUID): f"association failed: {exc}" for ds in datasets}
            return report
        if not assoc.is_established:
            reason = "association rejected" if assoc.is_rejected else "association failed (peer unreachable?)"
            report.failed = {str(ds.SOPInstanceUID): reason for ds in datasets}
            report.seconds = time.monotonic() - start
            return report
        try:
            for ds in datasets:
                sop = str(ds.SOPInstanceUID)
                try:
                    status = assoc.send_c_store(ds)
                except Exception as exc:  # noqa: BLE001 - a broken association must not lose the report
                    report.failed[sop] = f"C-STORE error: {exc}"
                    continue
                code = int(status.Status) if status and "Status" in status else None
                if code in _STORED:
                    report.sent.append(sop)
                else:
                    report.failed[sop] = (
                        "no C-STORE response (association aborted?)" if code is None else f"C-STORE status 0x{code:04X}"
                    )
        finally:
            if assoc.is_established:
                assoc.release()
        report.seconds = time.monotonic() - start
        log.info("C-STORE to %s: %d sent, %d failed", report.destination, len(report.sent), len(report.failed))
        return report

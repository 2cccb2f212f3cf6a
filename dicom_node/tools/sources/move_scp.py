"""The C-MOVE destination of `x2x batch --from-pacs ... --retrieve move`: a storage SCP that lives for the
batch run only.

A PACS answers C-MOVE by opening its own association to the destination AE *it has configured* (AE
title -> host:port); so the PACS must list `--move-ae` at this machine's address and `--move-port`.
Only instances the batch asked for are kept (in memory, until the fetch that asked takes them);
anything else the PACS sends is acknowledged and dropped.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

log = logging.getLogger("x2x.batch.move")


class MoveDestination:
    def __init__(self, ae_title: str, port: int, *, host: str = "0.0.0.0", timeout: float = 60.0):
        self.ae_title, self.host, self.port = ae_title, host, port
        self.timeout = timeout
        self.unexpected = 0
        self._cond = threading.Condition()
        self._expected: dict[str, Dataset | None] = {}
        self._server: Any = None

    def start(self) -> MoveDestination:
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        ae.maximum_associations = 16
        from dicom_node.studies.eligibility import CR_DX_SOP_CLASSES

        # Every storage class (a PACS may move anything), compressed syntaxes only for the radiographs we
        # edit: pynetdicom matches each proposed context against these, per association, per instance.
        for context in AllStoragePresentationContexts:
            assert context.abstract_syntax is not None
            syntaxes = ALL_TRANSFER_SYNTAXES if context.abstract_syntax in CR_DX_SOP_CLASSES else None
            ae.add_supported_context(context.abstract_syntax, syntaxes or context.transfer_syntax)
        try:
            self._server = ae.start_server((self.host, self.port), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        except OSError as exc:
            raise OSError(f"cannot listen on {self.host}:{self.port} for C-MOVE ({exc.strerror or exc})") from None
        return self

    def expect(self, sop_uid: str) -> None:
        with self._cond:
            self._expected[sop_uid] = None

    def take(self, sop_uid: str, timeout: float = 10.0) -> Dataset | None:
        """The instance once it has arrived (None after `timeout`); forgets it either way."""
        with self._cond:
            self._cond.wait_for(lambda: self._expected.get(sop_uid) is not None, timeout=timeout)
            return self._expected.pop(sop_uid, None)

    def _on_store(self, event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        uid = str(ds.get("SOPInstanceUID", ""))
        with self._cond:
            if uid in self._expected:
                self._expected[uid] = ds
                self._cond.notify_all()
                return 0x0000
            self.unexpected += 1
        log.info("C-MOVE destination: dropped an instance the batch did not ask for")
        return 0x0000

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

"""The running node: every stage of the PACS flow, started and stopped together (what `x2x serve` runs).

    inbound (SCP, or receiver processes)  -> study tracker -> jobs (embedded worker) ; REST API
"""

from __future__ import annotations

import logging
import os
from typing import Any

from dicom_node.config import Settings
from dicom_node.context import NodeContext
from dicom_node.inbound.receivers import ReceiverPool
from dicom_node.inbound.scp import StorageSCP
from dicom_node.inbound.spool import ReceivingClaim, Spool
from dicom_node.jobs.worker import start_embedded_worker, stop_embedded_worker
from dicom_node.studies.tracker import StudyTracker

log = logging.getLogger("x2x.serve")


def receiver_process_count(s: Settings) -> int:
    """`node.receiver_processes`, where 0 = one per CPU (at most 4), in-process on a single CPU."""
    if s.node.receiver_processes > 0:
        return s.node.receiver_processes
    cpus = os.cpu_count() or 1
    return 1 if cpus < 2 else min(4, cpus)


class NodeService:
    """Everything `x2x serve` runs, startable and stoppable from code (tests, other commands)."""

    def __init__(self, ctx: NodeContext, *, start_worker: bool = True, start_api: bool = True):
        self.ctx = ctx
        self.spool = Spool(ctx.settings.spool_dir, fsync=ctx.settings.node.spool_fsync)
        self.tracker = StudyTracker(ctx)
        # [queue] embedded_worker = false: jobs are left to `x2x worker` processes
        self.start_worker = start_worker and ctx.settings.queue.embedded_worker
        self.start_api = start_api and ctx.settings.api.enabled
        self.api: Any = None
        self._scp: StorageSCP | None = None
        self._pool: ReceiverPool | None = None
        self._claim: ReceivingClaim | None = None
        self.address: tuple[str, int] | None = None

    def start(self) -> None:
        self.ctx.model_path  # noqa: B018  (resolves the model now: a missing model warns loudly at start)
        self._claim = self.spool.claim_receiving()  # before rescan deletes unfinished receipts (SpoolInUse)
        try:
            self._start_stages()
        except BaseException:
            self.stop()  # what started stops and the claim is released: this process may start again
            raise

    def _start_stages(self) -> None:
        s = self.ctx.settings
        resumed = self.tracker.rescan()
        if resumed:
            log.info("resuming %d study(ies) received before the last stop", len(resumed))
        if not s.node.spool_fsync:
            log.warning("node.spool_fsync = false: instances are acknowledged before they are on disk; "
                        "a crash can lose them (benchmarks only)")
        n = receiver_process_count(s)
        if n == 1:
            self._scp = StorageSCP(s.node, self.spool, self.tracker.handle, called_aes=s.known_called_aes())
            self.address = self._scp.start()
        else:
            self._pool = ReceiverPool(s.node, str(self.spool.root), self.tracker.handle, n,
                                      s.logging.level, s.logging.json_format, called_aes=s.known_called_aes())
            self._pool.start()
            self.address = (s.node.host, s.node.port)
        self.tracker.start()
        if self.start_worker:
            start_embedded_worker(self.ctx)
        if self.start_api:
            from dicom_node.api.server import ApiServer  # fastapi + uvicorn only when the API runs

            self.api = ApiServer(self.ctx, sink=self.tracker.handle, retrying_studies=self.tracker.retrying).start()
        host, port = self.address
        log.info(
            "DICOM SCP listening on %s:%d as AE %r (%d receiver process%s, TLS %s, calling-AE allow-list "
            "%s, called AE titles %s (others: %s), study quiet period %.1f s, SCP tuning %s); spool %s",
            host, port, s.node.ae_title, n, "" if n == 1 else "es",
            "on" if s.node.tls.enabled else "off",
            ",".join(s.node.allowed_calling_aes) or "off", ",".join(s.known_called_aes()),
            s.node.unknown_called_ae, s.node.study_quiet_seconds,
            "on" if s.node.scp_tuning else "off (stock pynetdicom)", self.spool.root,
        )

    def stop(self) -> None:
        log.info("stopping: no new associations; finishing the current ones")
        if self.api is not None:
            self.api.stop()
        if self._scp is not None:
            self._scp.stop()
        if self._pool is not None:
            self._pool.stop()
        self.tracker.stop()
        if self.start_worker:
            stop_embedded_worker(self.ctx.settings.queue.stop_timeout_seconds)
        if self._claim is not None:
            self._claim.release()
        log.info("stopped")

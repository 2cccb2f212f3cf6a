"""`x2x serve`: the node (DICOM SCP -> spool -> study tracker -> jobs -> in-process worker)."""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

from dicom_node.cli_apps import app, settings
from dicom_node.config import Settings
from dicom_node.context import NodeContext, build_context

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
        from dicom_node.spool import Spool
        from dicom_node.studies import StudyTracker

        self.ctx = ctx
        self.spool = Spool(ctx.settings.spool_dir, fsync=ctx.settings.node.spool_fsync)
        self.tracker = StudyTracker(ctx)
        # [queue] embedded_worker = false: jobs are left to `x2x worker` processes
        self.start_worker = start_worker and ctx.settings.queue.embedded_worker
        self.start_api = start_api and ctx.settings.api.enabled
        self.api: Any = None
        self._scp: Any = None
        self._pool: Any = None
        self.address: tuple[str, int] | None = None

    def start(self) -> None:
        from dicom_node.jobs import dispatch
        from dicom_node.receive import ReceiverPool, StorageSCP

        s = self.ctx.settings
        self.ctx.model_path  # noqa: B018  (resolves the model now: a missing model warns loudly at start)
        resumed = self.tracker.rescan()
        if resumed:
            log.info("resuming %d study(ies) received before the last stop", len(resumed))
        if not s.node.spool_fsync:
            log.warning("node.spool_fsync = false: instances are acknowledged before they are on disk; "
                        "a crash can lose them (benchmarks only)")
        n = receiver_process_count(s)
        if n == 1:
            self._scp = StorageSCP(s.node, self.spool, self.tracker.handle)
            self.address = self._scp.start()
        else:
            self._pool = ReceiverPool(s.node, str(self.spool.root), self.tracker.handle, n,
                                      s.logging.level, s.logging.json_format)
            self._pool.start()
            self.address = (s.node.host, s.node.port)
        self.tracker.start()
        if self.start_worker:
            dispatch.start_worker(self.ctx)
        if self.start_api:
            from dicom_node.api.server import ApiServer

            self.api = ApiServer(self.ctx, tracker=self.tracker).start()
        host, port = self.address
        log.info(
            "DICOM SCP listening on %s:%d as AE %r (%d receiver process%s, TLS %s, calling-AE allow-list "
            "%s, study quiet period %.1f s); spool %s",
            host, port, s.node.ae_title, n, "" if n == 1 else "es",
            "on" if s.node.tls.enabled else "off",
            ",".join(s.node.allowed_calling_aes) or "off", s.node.study_quiet_seconds, self.spool.root,
        )

    def stop(self) -> None:
        from dicom_node.jobs import dispatch

        log.info("stopping: no new associations; finishing the current ones")
        if self.api is not None:
            self.api.stop()
        if self._scp is not None:
            self._scp.stop()
        if self._pool is not None:
            self._pool.stop()
        self.tracker.stop()
        if self.start_worker:
            dispatch.stop_worker()
        log.info("stopped")


@app.command()
def serve() -> None:
    """Run the node: DICOM SCP (C-ECHO, C-STORE), study completion, job creation, the REST API (dashboard,
    STOW-RS, metrics) and one embedded Celery worker."""
    from dicom_node.logs import setup_logging

    s = settings()
    setup_logging(s.logging.level, s.logging.json_format)
    ctx = build_context(s)
    service = NodeService(ctx)
    stop = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    service.start()
    try:
        while not stop.wait(1.0):
            pass
    finally:
        service.stop()

"""Running Celery workers: one embedded in `x2x serve` (solo pool, in a thread) or `x2x worker` (a process)."""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any

from dicom_node.context import NodeContext
from dicom_node.jobs import tasks
from dicom_node.jobs.celery_app import celery_app, configure_celery
from dicom_node.jobs.sandbox import stop_sandboxes
from dicom_node.jobs.sweeper import Sweeper

log = logging.getLogger("x2x.jobs.worker")

_embedded: EmbeddedWorker | None = None
_embedded_lock = threading.Lock()


def _prepare(ctx: NodeContext) -> None:
    configure_celery(ctx.settings)
    tasks.set_worker_context(ctx)
    celery_app.finalize()
    celery_app.set_current()
    celery_app.set_default()


class EmbeddedWorker:
    """A Celery WorkController (solo pool) in a daemon thread, plus the job sweeper."""

    def __init__(self, ctx: NodeContext, hostname: str | None = None):
        from celery.worker import WorkController

        _prepare(ctx)
        self._ready = threading.Event()
        ready = self._ready

        class _Controller(WorkController):  # type: ignore[misc]
            def on_consumer_ready(self, consumer: Any) -> None:
                ready.set()

        self.controller = _Controller(
            app=celery_app,
            pool="solo",
            concurrency=1,
            hostname=hostname or f"x2x-embedded@{socket.gethostname()}",
            queues=[ctx.settings.queue.queue_name],
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
            loglevel=ctx.settings.logging.level,
        )
        self._thread = threading.Thread(target=self.controller.start, name="x2x-celery", daemon=True)
        self._sweeper = Sweeper(ctx, kind="embedded")

    def start(self, timeout: float = 30.0) -> EmbeddedWorker:
        self._thread.start()
        if not self._ready.wait(timeout):
            log.warning("embedded Celery worker not ready after %.0f s (broker reachable?)", timeout)
        self._sweeper.start()
        log.info("embedded Celery worker running (solo pool)")
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._sweeper.stop()
        self.controller.stop(in_sighandler=False)
        self._thread.join(timeout)
        stop_sandboxes()


def start_embedded_worker(ctx: NodeContext) -> None:
    """Start the embedded Celery worker (solo pool, daemon thread) and the job sweeper, once."""
    global _embedded
    with _embedded_lock:
        if _embedded is None:
            _embedded = EmbeddedWorker(ctx).start()


def stop_embedded_worker(timeout: float = 30.0) -> None:
    global _embedded
    with _embedded_lock:
        worker, _embedded = _embedded, None
    if worker is not None:
        worker.stop(timeout)


def run_worker(
    ctx: NodeContext, *, concurrency: int = 1, pool: str = "solo", hostname: str | None = None
) -> None:
    """Run a Celery worker in this process until it is told to stop (SIGTERM/SIGINT: warm shutdown)."""
    _prepare(ctx)
    _route_celery_console_messages()
    sweeper = Sweeper(ctx, kind="worker").start()
    try:
        worker = celery_app.Worker(
            pool=pool,
            concurrency=concurrency,
            hostname=hostname or f"x2x-worker-{socket.gethostname()}-%p@%h".replace("%p", str(_pid())),
            queues=[ctx.settings.queue.queue_name],
            loglevel=ctx.settings.logging.level,
            without_mingle=True,
            without_gossip=True,
            quiet=True,
        )
        worker.start()
    finally:
        sweeper.stop()
        stop_sandboxes()


def _route_celery_console_messages() -> None:
    """Celery's signal handlers print ("worker: Warm shutdown") straight to stderr; log them instead so
    a JSON log stays one JSON object per line. (logging's handler lock is re-entrant: safe here.)"""
    import celery.apps.worker as celery_worker

    def _say(msg: str, f: Any = None) -> None:
        logging.getLogger("celery.worker").warning("%s", msg.strip())

    celery_worker.safe_say = _say  # type: ignore[assignment]


def _pid() -> int:
    import os

    return os.getpid()

"""Running Celery workers: embedded in `x2x serve` (in threads) or `x2x worker` (a process).

Each process serves one or both stages. The edit stage ([queue] queue_name) runs one job at a time
(solo pool: the GPU, or the CPU cores, are one resource); the delivery stage ([queue]
delivery_queue_name) runs in its own thread pool, so encoding out and sending overlap the next edit.
With `queue.edit_isolation = "process"` edits run in the edit child (jobs/sandbox.py) and encodes in
the encode child (jobs/encode_process.py), started with the worker.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

from dicom_node.context import NodeContext
from dicom_node.jobs import tasks
from dicom_node.jobs.celery_app import celery_app, configure_celery, delivery_app
from dicom_node.jobs.encode_process import encoder_for, stop_encoders
from dicom_node.jobs.sandbox import stop_sandboxes
from dicom_node.jobs.sweeper import Sweeper

log = logging.getLogger("x2x.jobs.worker")

STAGES = ("edit", "deliver")
DELIVERY_THREADS = 2  # deliveries at once per process (network and encode-out bound, not GPU)

_embedded: EmbeddedWorker | None = None
_embedded_lock = threading.Lock()


def _prepare(ctx: NodeContext) -> None:
    configure_celery(ctx.settings)
    tasks.set_worker_context(ctx)
    delivery_app.finalize()
    celery_app.finalize()
    celery_app.set_current()
    celery_app.set_default()


def _start_encoder(ctx: NodeContext, stages: tuple[str, ...]) -> None:
    """The encode child, spawned now so that the first job does not wait for its imports."""
    if "deliver" in stages and ctx.settings.queue.edit_isolation == "process":
        encoder_for(ctx.settings).start()


def _app(stage: str) -> Any:
    return celery_app if stage == "edit" else delivery_app


def _queue(ctx: NodeContext, stage: str) -> str:
    return ctx.settings.queue.queue_name if stage == "edit" else ctx.settings.queue.delivery_queue_name


class _ThreadedController:
    """One Celery WorkController consuming one stage's queue, in a daemon thread."""

    def __init__(self, ctx: NodeContext, stage: str, hostname: str):
        from celery.worker import WorkController

        self.stage = stage
        self.ready = threading.Event()
        ready = self.ready

        class _Controller(WorkController):  # type: ignore[misc]
            def on_consumer_ready(self, consumer: Any) -> None:
                ready.set()

            def should_use_eventloop(self) -> bool:
                # kombu keeps ONE event loop per process (kombu.asynchronous.get_event_loop), and Celery
                # gives it to every WorkController on an asynchronous transport (Redis, AMQP). Two
                # controllers in two threads would then drive one loop, and a whole worker process
                # could sit deaf to both queues. A controller in a thread polls its own connection
                # instead (Celery's synchronous loop); the process's main worker keeps the event loop.
                return False

        threaded = stage == "deliver"
        self.controller = _Controller(
            app=_app(stage),
            pool="threads" if threaded else "solo",
            concurrency=DELIVERY_THREADS if threaded else 1,
            hostname=hostname,
            queues=[_queue(ctx, stage)],
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
            loglevel=ctx.settings.logging.level,
        )
        self.thread = threading.Thread(target=self.controller.start, name=f"x2x-celery-{stage}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float) -> None:
        self.controller.stop(in_sighandler=False)
        self.thread.join(timeout)


def _register_when_ready(sweeper: Sweeper, controllers: list[_ThreadedController]) -> None:
    """Have the worker registered as live once every one of `controllers` listens on its queue (at once
    if they all do), from a thread: the caller is on a consumer's start-up path and must not wait."""

    def wait_then_register() -> None:
        for controller in controllers:
            controller.ready.wait()
        sweeper.consuming()

    threading.Thread(target=wait_then_register, name="x2x-worker-ready", daemon=True).start()


class EmbeddedWorker:
    """Both stages of `x2x serve`, each a WorkController in a daemon thread, plus the job sweeper."""

    def __init__(self, ctx: NodeContext, hostname: str | None = None):
        _prepare(ctx)
        host = hostname or socket.gethostname()
        self.controllers = [_ThreadedController(ctx, stage, f"x2x-embedded-{stage}@{host}") for stage in STAGES]
        self._sweeper = Sweeper(ctx, kind="embedded")
        self._ctx = ctx

    def start(self, timeout: float = 30.0) -> EmbeddedWorker:
        _start_encoder(self._ctx, STAGES)
        for controller in self.controllers:
            controller.start()
        for controller in self.controllers:
            if not controller.ready.wait(timeout):
                log.warning("embedded %s worker not ready after %.0f s (broker reachable?)", controller.stage, timeout)
        self._sweeper.start()
        _register_when_ready(self._sweeper, self.controllers)
        log.info("embedded Celery workers running: edit (solo) and delivery (%d threads)", DELIVERY_THREADS)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._sweeper.stop()
        # Both stages stop at once, within one `timeout` in all (a warm shutdown lets a running task
        # finish); an edit still running after it is stopped with its edit process, and its job goes
        # back on the queue.
        stoppers = [threading.Thread(target=c.stop, args=(timeout,), daemon=True) for c in self.controllers]
        for stopper in stoppers:
            stopper.start()
        deadline = time.monotonic() + timeout
        for stopper in stoppers:
            stopper.join(max(0.0, deadline - time.monotonic()))
        stop_sandboxes()
        for stopper in stoppers:  # the edit task returns once its edit process is gone
            stopper.join(10)
        stop_encoders()


def start_embedded_worker(ctx: NodeContext) -> None:
    """Start the embedded workers (both stages) and the job sweeper, once."""
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
    ctx: NodeContext, *, stages: tuple[str, ...] = STAGES, concurrency: int = 1, pool: str = "solo",
    hostname: str | None = None,
) -> None:
    """Run a worker in this process until it is told to stop (SIGTERM/SIGINT: warm shutdown). The first
    stage runs in the main thread with `pool`/`concurrency`; a delivery stage beside an edit stage runs
    in its own thread pool."""
    unknown = set(stages) - set(STAGES)
    if unknown or not stages:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; choose from {', '.join(STAGES)}")
    _prepare(ctx)
    _route_celery_console_messages()
    name = hostname or f"x2x-worker-{socket.gethostname()}-{os.getpid()}@{socket.gethostname()}"
    side = [_ThreadedController(ctx, stage, f"{stage}-{name}") for stage in stages[1:]]
    sweeper = Sweeper(ctx, kind="worker").start()
    _start_encoder(ctx, stages)
    for controller in side:
        controller.start()

    def _on_ready(**_: Any) -> None:  # the main stage's consumer listens (Celery's worker_ready)
        _register_when_ready(sweeper, side)

    from celery.signals import worker_ready

    worker_ready.connect(_on_ready, weak=False)
    try:
        worker = _app(stages[0]).Worker(
            pool=pool,
            concurrency=concurrency,
            hostname=name,
            queues=[_queue(ctx, stages[0])],
            loglevel=ctx.settings.logging.level,
            without_mingle=True,
            without_gossip=True,
            quiet=True,
        )
        worker.start()
    finally:
        worker_ready.disconnect(_on_ready)
        for controller in side:
            controller.stop(30.0)
        sweeper.stop()
        stop_sandboxes()
        stop_encoders()


def _route_celery_console_messages() -> None:
    """Celery's signal handlers print ("worker: Warm shutdown") straight to stderr; log them instead so
    a JSON log stays one JSON object per line. (logging's handler lock is re-entrant: safe here.)"""
    import celery.apps.worker as celery_worker

    def _say(msg: str, f: Any = None) -> None:
        logging.getLogger("celery.worker").warning("%s", msg.strip())

    celery_worker.safe_say = _say  # type: ignore[assignment]

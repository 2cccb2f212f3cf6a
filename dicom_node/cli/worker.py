"""`x2x worker`: a Celery worker process for the node's jobs (scale-out: Redis/RabbitMQ broker URL)."""

from __future__ import annotations

from typing import Optional

import typer

from dicom_node.cli.apps import app, node_context, settings


@app.command()
def worker(
    concurrency: int = typer.Option(1, min=1, help="Jobs at once (one per GPU is usual)."),
    pool: str = typer.Option("solo", help="Celery pool: solo (default: one job at a time) or prefork/threads."),
    hostname: Optional[str] = typer.Option(None, help="Celery node name (default x2x-worker-<host>-<pid>)."),
) -> None:
    """Run a job worker: takes jobs from the configured queue (queue.broker_url), edits, encodes, sends.

    Start as many as you like, on as many machines as share the job database and the broker.
    SIGTERM/Ctrl-C finishes the current job first; a SIGKILLed worker's job is recovered by the others.
    """
    from dicom_node.jobs.worker import run_worker
    from dicom_node.logs import setup_logging
    from dicom_node.threads import prepare_node_process

    prepare_node_process()  # passive OpenMP waits before torch loads (dicom_node/threads.py)
    s = settings()
    setup_logging(s.logging.level, s.logging.json_format)
    run_worker(node_context(s), concurrency=concurrency, pool=pool, hostname=hostname)

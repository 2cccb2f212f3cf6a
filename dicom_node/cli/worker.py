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
    stage: str = typer.Option(
        "all", help="edit (GPU machines), deliver (encode-out and send), or all (both, delivery in its own threads)."
    ),
) -> None:
    """Run a job worker: takes jobs from the configured queues (queue.broker_url): the edit stage (edit and
    encode) and/or the delivery stage (send to every destination).

    Start as many as you like, on as many machines as share the job database, the results folder and the
    broker. SIGTERM/Ctrl-C finishes the current job first; a SIGKILLed worker's job is recovered by the others.
    """
    from dicom_node.jobs.worker import run_worker
    from dicom_node.logs import setup_logging
    from dicom_node.threads import prepare_node_process

    stages = {"all": ("edit", "deliver"), "edit": ("edit",), "deliver": ("deliver",)}.get(stage)
    if stages is None:
        typer.echo(f"x2x worker: --stage must be edit, deliver or all, not {stage!r}", err=True)
        raise typer.Exit(code=2)
    prepare_node_process()  # passive OpenMP waits before torch loads (dicom_node/threads.py)
    s = settings()
    setup_logging(s.logging.level, s.logging.json_format)
    run_worker(node_context(s), stages=stages, concurrency=concurrency, pool=pool, hostname=hostname)

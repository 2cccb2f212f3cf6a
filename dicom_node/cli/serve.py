"""`x2x serve`: the node (DICOM SCP -> spool -> study tracker -> jobs -> in-process worker; REST API)."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

import typer

from dicom_node.cli.apps import app, node_context, settings

log = logging.getLogger("x2x.serve")


@app.command()
def serve() -> None:
    """Run the node: DICOM SCP (C-ECHO, C-STORE), study completion, job creation, the REST API (dashboard,
    STOW-RS, metrics) and one embedded Celery worker.

    Runs the checks of `x2x config check` first (without --probe) and does not start on an error."""
    from dicom_node.cli.core import report_problems
    from dicom_node.logs import setup_logging
    from dicom_node.node import NodeService
    from dicom_node.threads import prepare_node_process

    prepare_node_process()  # before receiver processes spawn and before torch loads (dicom_node/threads.py)
    s = settings()
    if not report_problems("serve", s):
        raise typer.Exit(code=2)
    setup_logging(s.logging.level, s.logging.json_format)
    service = NodeService(node_context(s))
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

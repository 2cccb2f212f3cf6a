"""Serving the API with uvicorn in a background thread (inside `x2x serve`)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn

from dicom_node.api.app import create_app
from dicom_node.context import NodeContext
from dicom_node.inbound.events import EventSink

log = logging.getLogger("x2x.api.server")


class ApiServer:
    def __init__(self, ctx: NodeContext, *, sink: EventSink | None = None,
                 retrying_studies: Callable[[], dict[str, dict[str, Any]]] | None = None):
        s = ctx.settings.api
        self.app = create_app(ctx, sink=sink, retrying_studies=retrying_studies)
        config = uvicorn.Config(
            self.app, host=s.host, port=s.port, log_config=None,  # keep the node's logging (JSON option)
            access_log=False, lifespan="off", timeout_graceful_shutdown=10,
        )
        self.server = uvicorn.Server(config)  # in a non-main thread uvicorn leaves signals to the main one
        self._thread = threading.Thread(target=self.server.run, name="x2x-api", daemon=True)
        self.url = f"http://{s.host}:{s.port}"

    def start(self, timeout: float = 15.0) -> ApiServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not self.server.started:
            raise RuntimeError(f"REST API did not start on {self.url} (port in use?)")
        log.info("REST API on %s (docs %s/docs, dashboard %s/)", self.url, self.url, self.url)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        self.server.should_exit = True
        self._thread.join(timeout)

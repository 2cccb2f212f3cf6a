"""The node's REST API: one router per resource (jobs, studies, health, metrics, dashboard, DICOMweb),
one context dependency (api/deps.py). OpenAPI docs at /docs, served offline."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from dicom_node.api import dashboard, dicomweb, health, jobs, metrics, studies
from dicom_node.api.auth import read_tokens, resolve_token
from dicom_node.api.docs import mount_docs
from dicom_node.api.hosts import HostCheck
from dicom_node.config import Settings
from dicom_node.context import NodeContext
from dicom_node.inbound.events import EventSink
from dicom_node.studies.tracker import ImmediateCompletion

log = logging.getLogger("x2x.api")

_LOCAL_HOSTS = ["localhost", "127.0.0.1", "::1", "[::1]"]


def allowed_hosts(settings: Settings) -> list[str]:
    """Host header values the API answers: `[api] allowed_hosts`, else this machine's loopback names
    and the address it listens on (a DNS-rebinding page cannot reach it under another name)."""
    if settings.api.allowed_hosts:
        return list(settings.api.allowed_hosts)
    hosts = list(_LOCAL_HOSTS)
    if settings.api.host not in ("0.0.0.0", "::", ""):
        hosts.append(settings.api.host)
    else:
        log.warning("the API listens on all interfaces but answers only Host %s: set [api] allowed_hosts "
                    "to the names clients use", ", ".join(hosts))
    return hosts


def create_app(ctx: NodeContext, *, sink: EventSink | None = None,
               retrying_studies: Callable[[], dict[str, dict[str, Any]]] | None = None) -> FastAPI:
    """The API for this node. `sink`: the running node's StudyTracker.handle, so that STOW-RS studies
    complete through the same quiet-period logic as C-STORE ones (without one, at the end of the request);
    `retrying_studies`: its StudyTracker.retrying, shown by GET /studies."""
    app = FastAPI(
        docs_url=None,  # served by mount_docs from local files
        redoc_url=None,
        title="InstructX2X DICOM node",
        description="Region-specific counterfactual chest X-ray editing beside a PACS. "
        "Every output is SYNTHETIC. Every endpoint but /healthz and /readyz needs `Authorization: Bearer "
        "<token>` (reads also accept [api] read_token).",
        version="0.1.0",
    )
    app.state.ctx = ctx
    app.state.sink = sink if sink is not None else ImmediateCompletion(ctx).handle
    app.state.api_token = resolve_token(ctx.settings)
    app.state.read_tokens = read_tokens(ctx.settings, app.state.api_token)
    app.state.public_reads = ctx.settings.api.public_reads
    app.state.retrying_studies = retrying_studies
    hosts = allowed_hosts(ctx.settings)
    if "*" not in hosts:
        app.add_middleware(HostCheck, allowed=hosts)
    for module in (jobs, studies, health, metrics, dashboard, dicomweb):
        app.include_router(module.router)
    mount_docs(app)
    return app

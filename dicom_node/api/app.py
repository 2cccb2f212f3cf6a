"""The node's REST API: one router per resource (jobs, studies, health, metrics, dashboard, DICOMweb),
one context dependency (api/deps.py). OpenAPI docs at /docs, served offline."""

from __future__ import annotations

from fastapi import FastAPI

from dicom_node.api import dashboard, dicomweb, health, jobs, metrics, studies
from dicom_node.api.auth import resolve_token
from dicom_node.api.docs import mount_docs
from dicom_node.context import NodeContext
from dicom_node.inbound.events import EventSink
from dicom_node.studies.tracker import ImmediateCompletion


def create_app(ctx: NodeContext, *, sink: EventSink | None = None) -> FastAPI:
    """The API for this node. `sink`: the running node's StudyTracker.handle, so that STOW-RS studies
    complete through the same quiet-period logic as C-STORE ones (without one, at the end of the request)."""
    app = FastAPI(
        docs_url=None,  # served by mount_docs from local files
        redoc_url=None,
        title="InstructX2X DICOM node",
        description="Region-specific counterfactual chest X-ray editing beside a PACS. "
        "Every output is SYNTHETIC. Mutating endpoints need `Authorization: Bearer <token>`.",
        version="0.1.0",
    )
    app.state.ctx = ctx
    app.state.sink = sink if sink is not None else ImmediateCompletion(ctx).handle
    app.state.api_token = resolve_token(ctx.settings)
    for module in (jobs, studies, health, metrics, dashboard, dicomweb):
        app.include_router(module.router)
    mount_docs(app)
    return app

"""The node's REST API: jobs, health, metrics, dashboard, STOW-RS in. OpenAPI docs at /docs."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError

from dicom_node.api import health
from dicom_node.api.auth import require_token, resolve_token
from dicom_node.api.metrics import render_metrics
from dicom_node.api.views import PREVIEW_KINDS, JobRequest, job_view
from dicom_node.context import NodeContext
from dicom_node.jobs.store import STATES, Job

log = logging.getLogger("x2x.api")

def create_app(ctx: NodeContext, *, tracker: Any | None = None) -> FastAPI:
    """The API for this node. `tracker`: the running node's StudyTracker, so that STOW-RS studies
    complete through the same quiet-period logic as C-STORE (without one, at the end of the request)."""
    app = FastAPI(
        docs_url=None,  # served below from local files: hospital networks are often offline
        redoc_url=None,
        title="InstructX2X DICOM node",
        description="Region-specific counterfactual chest X-ray editing beside a PACS. "
        "Every output is SYNTHETIC. Mutating endpoints need `Authorization: Bearer <token>`.",
        version="0.1.0",
    )
    app.state.ctx = ctx
    app.state.tracker = tracker
    app.state.api_token = resolve_token(ctx.settings)
    auth = [Depends(require_token)]

    def get_job_or_404(job_id: int) -> Job:
        job = ctx.store.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id}")
        return job

    # jobs ------------------------------------------------------------------------------------
    @app.get("/jobs", tags=["jobs"])
    def list_jobs(
        state: list[str] | None = Query(None, description="one or more states"),
        study: str | None = Query(None, description="Study Instance UID"),
        limit: int = Query(100, ge=1, le=1000),
        offset: int = Query(0, ge=0),
    ) -> dict[str, Any]:
        bad = [s for s in state or [] if s not in STATES]
        if bad:
            raise HTTPException(422, f"unknown state(s) {bad}; known: {list(STATES)}")
        jobs = ctx.store.list(state=state or None, study_instance_uid=study, limit=limit, offset=offset)
        return {"jobs": [job_view(j) for j in jobs], "counts": ctx.store.count_by_state()}

    @app.get("/jobs/{job_id}", tags=["jobs"])
    def show_job(job_id: int) -> dict[str, Any]:
        return job_view(get_job_or_404(job_id))

    # studies: what arrived, which request applied, why instances were skipped ---------------------
    @app.get("/studies", tags=["studies"])
    def list_studies(limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0)) -> dict[str, Any]:
        from sqlalchemy import select

        from dicom_node.studies import StudyRecord

        with ctx.store.session() as s:
            rows = s.scalars(
                select(StudyRecord).order_by(StudyRecord.updated_at.desc()).limit(limit).offset(offset)
            )
            return {"studies": [r.to_dict() for r in rows]}

    @app.get("/studies/{study_uid}", tags=["studies"])
    def show_study(study_uid: str) -> dict[str, Any]:
        """The study's state and request (or the parser's error), and every instance: job or skip reason."""
        from sqlalchemy import select

        from dicom_node.studies import StudyInstance, StudyRecord

        with ctx.store.session() as s:
            record = s.get(StudyRecord, study_uid)
            if record is None:
                raise HTTPException(404, f"no study {study_uid}")
            instances = s.scalars(
                select(StudyInstance).where(StudyInstance.study_instance_uid == study_uid)
            )
            return {**record.to_dict(), "instances": [i.to_dict() for i in instances]}

    @app.post("/jobs", tags=["jobs"], status_code=201, dependencies=auth)
    async def submit_job(request: Request) -> dict[str, Any]:
        """JSON `JobRequest` for a study in the spool, or `multipart/form-data` with one or more DICOM
        `file` parts plus `instruction` (and optional `seed`, `steps`, `destination`) fields."""
        from dicom_node.api import ingest

        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            form = await request.form()
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
            uploads = [await f.read() for f in form.getlist("file") if not isinstance(f, str)]
            if not uploads:
                raise HTTPException(422, "multipart upload needs at least one 'file' part")
            try:
                req = JobRequest.model_validate({"study_instance_uid": "-", **fields})
            except ValidationError as exc:
                raise HTTPException(422, f"invalid job request: {exc}") from exc
            return await run_in_threadpool(ingest.submit_upload, ctx, uploads, req)
        try:
            req = JobRequest.model_validate(await request.json())
        except (ValidationError, ValueError) as exc:
            raise HTTPException(422, f"invalid job request: {exc}") from exc
        return await run_in_threadpool(ingest.submit_for_study, ctx, req)

    @app.post("/jobs/{job_id}/retry", tags=["jobs"], dependencies=auth)
    def retry(job_id: int) -> dict[str, Any]:
        from dicom_node.jobs.admin import JobActionError, retry_job

        get_job_or_404(job_id)
        try:
            return job_view(retry_job(ctx, job_id))
        except JobActionError as exc:
            raise HTTPException(409, str(exc)) from exc

    @app.delete("/jobs/{job_id}", tags=["jobs"], dependencies=auth)
    def cancel(job_id: int) -> dict[str, Any]:
        from dicom_node.jobs.admin import JobActionError, cancel_job

        get_job_or_404(job_id)
        try:
            return job_view(cancel_job(ctx, job_id))
        except JobActionError as exc:
            raise HTTPException(409, str(exc)) from exc

    @app.get("/jobs/{job_id}/previews/{kind}.png", tags=["jobs"], response_class=FileResponse)
    def preview(job_id: int, kind: str) -> FileResponse:
        """PNG previews written by the pipeline (counterfactual and overlay are SYNTHETIC)."""
        if kind not in PREVIEW_KINDS:
            raise HTTPException(404, f"no preview kind {kind!r}")
        path = ctx.settings.results_dir / str(job_id) / f"{kind}.png"
        if not path.is_file():
            raise HTTPException(404, "preview not written (yet)")
        return FileResponse(path, media_type="image/png", headers={"Cache-Control": "no-cache"})

    _mount_offline_docs(app)

    # health and metrics -----------------------------------------------------------------------
    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    def readyz(response: Response) -> dict[str, Any]:
        checks = health.readiness(ctx)
        ready = all(c["ok"] for c in checks.values())
        response.status_code = 200 if ready else 503
        return {"ready": ready, "checks": checks}

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse)
    def metrics() -> Response:
        return Response(render_metrics(ctx), media_type=CONTENT_TYPE_LATEST)

    # dashboard --------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    @app.get("/dashboard", response_class=HTMLResponse, tags=["dashboard"])
    def dashboard() -> HTMLResponse:
        from dicom_node.api.dashboard import render_dashboard

        return HTMLResponse(render_dashboard(ctx))

    # DICOMweb in --------------------------------------------------------------------------------
    from dicom_node.api.stow import router as stow_router

    app.include_router(stow_router, dependencies=auth)
    return app


def _mount_offline_docs(app: FastAPI) -> None:
    """Swagger UI at /docs from the swagger-ui-bundle package's files instead of a CDN."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:  # without the bundle: the OpenAPI JSON stays at /openapi.json
        return
    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="InstructX2X DICOM node — API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
        )

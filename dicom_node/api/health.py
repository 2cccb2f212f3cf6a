"""`/healthz` (the process answers) and `/readyz` (spool writable with node.spool_min_free_mb free,
database reachable, broker reachable, model loadable or loaded). Both answer without a token: they say
nothing about patients, and orchestrators probe them."""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter, Depends, Response
from sqlalchemy import text

from dicom_node.api.deps import get_ctx
from dicom_node.context import NodeContext
from dicom_node.jobs.queue import broker_reachable
from dicom_node.send.probe import write_probe

router = APIRouter(tags=["health"])


def _check_spool(ctx: NodeContext) -> dict[str, Any]:
    spool = ctx.settings.spool_dir
    try:
        write_probe(spool, ".x2x-ready")  # a real write: permission bits say nothing for root
        st = os.statvfs(spool)
    except OSError as exc:
        return {"ok": False, "detail": f"spool {spool} not writable: {exc.strerror or exc}"}
    # what the SCP keeps free (it refuses instances below it): below it the node cannot store one
    free_mb = st.f_bavail * st.f_frsize / 2**20
    keep = ctx.settings.node.spool_min_free_mb
    if free_mb < keep:
        return {"ok": False, "detail": f"spool {spool} has {free_mb:.0f} MB free, below node.spool_min_free_mb="
                                       f"{keep}: instances are refused"}
    return {"ok": True, "detail": f"{spool} ({free_mb:.0f} MB free)"}


def _check_db(ctx: NodeContext) -> dict[str, Any]:
    try:
        with ctx.db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return {"ok": True, "detail": ctx.db.engine.url.render_as_string(hide_password=True)}
    except Exception as exc:
        return {"ok": False, "detail": f"database unreachable: {type(exc).__name__}"}


def _check_broker(ctx: NodeContext) -> dict[str, Any]:
    ok, detail = broker_reachable(ctx)
    return {"ok": ok, "detail": "reachable" if ok else f"broker unreachable: {detail}"}


def _check_model(ctx: NodeContext) -> dict[str, Any]:
    if ctx._editor is not None:
        return {"ok": True, "detail": f"loaded: {getattr(ctx._editor, 'model_id', '?')}"}
    path = ctx.settings.model.path
    if path is None:
        return {"ok": True, "detail": "loadable: default model (demo model, else tiny fixture)"}
    if path.is_dir():
        ok = (path / "model_index.json").is_file()
    else:
        ok = path.is_file() and path.suffix in (".ckpt", ".safetensors")
    return {"ok": ok, "detail": f"{'loadable' if ok else 'missing or not a model'}: {path}"}


def readiness(ctx: NodeContext) -> dict[str, dict[str, Any]]:
    return {
        "spool": _check_spool(ctx),
        "database": _check_db(ctx),
        "broker": _check_broker(ctx),
        "model": _check_model(ctx),
    }


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(response: Response, ctx: NodeContext = Depends(get_ctx)) -> dict[str, Any]:
    checks = readiness(ctx)
    ready = all(c["ok"] for c in checks.values())
    response.status_code = 200 if ready else 503
    return {"ready": ready, "checks": checks}

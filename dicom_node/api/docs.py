"""`/docs`: Swagger UI from local files, never a CDN (hospital networks are often offline).

FastAPI writes OpenAPI 3.1 schemas, which Swagger UI renders from version 5 on; the files come from the
`fastapi-swagger` package (Swagger UI 5.x, `fastapi_swagger/resources/`), served as static assets.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs-assets"


def swagger_ui_dir() -> Path:
    return Path(str(resources.files("fastapi_swagger") / "resources"))


def mount_docs(app: FastAPI) -> None:
    app.mount(ASSETS_URL, StaticFiles(directory=swagger_ui_dir()), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} — API",
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon-32x32.png",
        )

"""OHIF Viewer (the prebuilt `@ohif/app` from the npm registry) served for tests, in front of a real Orthanc.

    dist = ohif_dist()                          # fetched once into ~/.cache/x2x-tests/ohif-<version>
    with OhifServer(dist, orthanc.url) as ohif:  # static files + same-origin proxy to Orthanc's /dicom-web
        page.goto(ohif.viewer_url(study_uid))

The package is fetched by the TEST SET-UP with `npm pack` (npm checks the registry's integrity hash) into a
cache outside the repository ($X2X_TEST_CACHE, else ~/.cache/x2x-tests); it is never vendored and the node
never needs it. Without npm the tests that need OHIF fail with a message saying so (CI reaches the npm
registry; `.ci/run` and scripts/test.sh install npm when it is missing).

OHIF talks DICOMweb (QIDO-RS / WADO-RS) to `/dicom-web` on its own origin; the proxy forwards those
requests to Orthanc's DICOMweb plugin, so no CORS set-up is needed and Orthanc stays on 127.0.0.1.
"""

from __future__ import annotations

import json
import mimetypes
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
import requests

OHIF_PACKAGE = "@ohif/app"
OHIF_VERSION = "3.13.2"  # pinned exactly: the viewer behaviour the docs' support table was measured with
CACHE_ENV = "X2X_TEST_CACHE"

mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".js")


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "x2x-tests")


def ohif_dist(version: str = OHIF_VERSION) -> Path:
    """The `dist/` folder of @ohif/app `version`, fetched with npm into the test cache on first use."""
    target = cache_root() / f"ohif-{version}"
    dist = target / "package" / "dist"
    if (dist / "index.html").is_file() and (target / "COMPLETE").is_file():
        return dist
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail(f"npm is needed to fetch {OHIF_PACKAGE}@{version} for the OHIF viewer test "
                    "(apt-get install npm; scripts/test.sh and .ci/run install it when missing)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".ohif-") as tmp:
        done = subprocess.run([npm, "pack", f"{OHIF_PACKAGE}@{version}", "--pack-destination", tmp, "--silent"],
                              capture_output=True, text=True, timeout=600)
        tarballs = list(Path(tmp).glob("*.tgz"))
        if done.returncode != 0 or len(tarballs) != 1:
            pytest.fail(f"npm pack {OHIF_PACKAGE}@{version} failed ({done.returncode}): {done.stderr[-2000:]}")
        unpacked = Path(tmp) / "unpacked"
        with tarfile.open(tarballs[0]) as tar:
            tar.extractall(unpacked, filter="data")
        if not (unpacked / "package" / "dist" / "index.html").is_file():
            pytest.fail(f"{OHIF_PACKAGE}@{version} has no dist/index.html: not the prebuilt viewer")
        (unpacked / "COMPLETE").write_text(f"{OHIF_PACKAGE}@{version}\n")
        if (target / "COMPLETE").is_file():  # a concurrent fetch finished first: use that one
            return dist
        if target.exists():  # a half-written copy from an interrupted run
            shutil.rmtree(target)
        unpacked.rename(target)  # atomic: a concurrent fetch either sees all of it or none
    return dist


def app_config(data_source_name: str = "orthanc") -> str:
    """OHIF's window.config: one DICOMweb data source on this origin's /dicom-web (Orthanc behind the proxy)."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": data_source_name,
        "configuration": {
            "friendlyName": "Orthanc (x2x test PACS)",
            "name": data_source_name,
            "wadoUriRoot": "__ORIGIN__/wado",
            "qidoRoot": "__ORIGIN__/dicom-web",
            "wadoRoot": "__ORIGIN__/dicom-web",
            "qidoSupportsIncludeField": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "omitQuotationForMultipartRequest": True,
            "bulkDataURI": {"enabled": True},
        },
    }
    config: dict[str, Any] = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "investigationalUseDialog": {"option": "never"},
        "showErrorDetails": "always",
        "defaultDataSourceName": data_source_name,
        "dataSources": [source],
    }
    text = json.dumps(config, indent=2).replace('"__ORIGIN__', 'window.location.origin + "')
    return f"window.config = {text};\n"


class _Handler(BaseHTTPRequestHandler):
    server: _OhifHttpServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        self.server.requests_seen.append(self.requestline)

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        path = urlsplit(self.path).path
        if path.startswith(("/dicom-web/", "/wado")):
            self._proxy()
        elif path == "/app-config.js":
            self._send(200, self.server.config_js.encode(), "text/javascript")
        else:
            self._static(path)

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        self._proxy()

    def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _static(self, path: str) -> None:
        root = self.server.dist
        candidate = (root / path.lstrip("/")).resolve()
        if not candidate.is_relative_to(root) or not candidate.is_file():
            candidate = root / "index.html"  # a single-page app: every route is index.html
        content_type = mimetypes.guess_type(candidate.name)[0] or "application/octet-stream"
        self._send(200, candidate.read_bytes(), content_type)

    def _proxy(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "content-type")}
        try:
            upstream = requests.request(self.command, self.server.upstream + self.path, data=body,
                                        headers=headers, timeout=60)
        except requests.RequestException as exc:
            self._send(502, str(exc).encode(), "text/plain")
            return
        self.server.proxied.append((self.command, self.path, upstream.status_code))
        self._send(upstream.status_code, upstream.content,
                   upstream.headers.get("Content-Type", "application/octet-stream"))


class _OhifHttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, dist: Path, upstream: str, config_js: str):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.dist = dist.resolve()
        self.upstream = upstream.rstrip("/")
        self.config_js = config_js
        self.requests_seen: list[str] = []
        self.proxied: list[tuple[str, str, int]] = []


class OhifServer:
    """OHIF's dist/ + a generated app-config.js + /dicom-web proxied to `orthanc_url`, on 127.0.0.1."""

    def __init__(self, dist: Path, orthanc_url: str):
        self.httpd = _OhifHttpServer(dist, orthanc_url, app_config())
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="ohif-http", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def proxied(self) -> list[tuple[str, str, int]]:
        """(method, path, Orthanc's status) of every DICOMweb request the viewer made."""
        return self.httpd.proxied

    def viewer_url(self, study_uid: str, *, series_uid: str | None = None, mode: str = "viewer") -> str:
        url = f"{self.url}/{mode}?StudyInstanceUIDs={quote(study_uid)}"
        if series_uid is not None:
            url += f"&initialSeriesInstanceUID={quote(series_uid)}"
        return url

    def __enter__(self) -> OhifServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# --- driving OHIF in headless Chromium ---------------------------------------------------------------

CHROMIUM_ARGS = (
    "--no-sandbox",
    # software WebGL: cornerstone3D renders with WebGL2, which headless Chromium only has through SwiftShader
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--ignore-gpu-blocklist",
    # this machine's network is closed: no background connections, no first-run / sync look-ups
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-quic",
    "--disable-sync",
    "--no-first-run",
)
# OHIF's console/page errors that mean it could not show an object (the test fails on them, saying which).
VIEWER_FAILURES = (
    "Cannot destructure property",
    "Error loading displaySet",
    "not yet supported",
    "Something went wrong",
    "Cannot read properties",
)
# The first viewport's image placement, in CSS pixels of the page (cornerstone3D, exposed by OHIF as
# window.cornerstone): the canvas position of the centres of the first and the last pixel. null while no
# image is shown, or while the image shown is still `previous` (an image id).
_VIEWPORT_JS = """(previous) => {
  const engine = window.cornerstone && window.cornerstone.getRenderingEngines()[0];
  const vp = engine && engine.getViewports()[0];
  const data = vp && vp.getImageData && vp.getImageData();
  if (!data || !data.imageData) return null;
  const imageId = vp.getCurrentImageId ? vp.getCurrentImageId() : null;
  if (previous && imageId === previous) return null;
  const [cols, rows] = data.dimensions;
  const first = vp.worldToCanvas(data.imageData.indexToWorld([0, 0, 0]));
  const last = vp.worldToCanvas(data.imageData.indexToWorld([cols - 1, rows - 1, 0]));
  const rect = vp.canvas.getBoundingClientRect();
  return {cols, rows, first, last, left: rect.left, top: rect.top, width: rect.width, height: rect.height,
          imageId, dpr: window.devicePixelRatio};
}"""
# OHIF's loaded segmentations with their segment labels; null while there is none.
_SEGMENTATIONS_JS = """() => {
  const service = window.services && window.services.segmentationService;
  const all = service ? service.getSegmentations() : [];
  if (!all.length) return null;
  return all.map(s => ({id: s.segmentationId || s.id, label: s.label,
                        segments: Object.values(s.segments || {}).filter(Boolean).map(x => x.label)}));
}"""
# OHIF 3.13 asks "Do you want to open this Segmentation?" with No / Yes buttons in the viewport.
_PROMPT_JS = """(present) =>
  present === !!Array.from(document.querySelectorAll('button')).find(b => b.textContent.trim() === 'Yes')"""


class OhifPage:
    """One Chromium page on the OHIF viewer, with the console watched for viewer failures."""

    def __init__(self, browser: Any, ohif: OhifServer, *, width: int = 1280, height: int = 900):
        self.ohif = ohif
        self.page = browser.new_page(viewport={"width": width, "height": height}, device_scale_factor=1)
        # OHIF's onboarding tour would cover the viewport: mark it as shown
        self.page.add_init_script("localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']))")
        self.messages: list[str] = []
        self.page.on("console", lambda m: self.messages.append(f"{m.type}: {m.text}"))
        self.page.on("pageerror", lambda e: self.messages.append(f"pageerror: {e}"))

    def failures(self) -> list[str]:
        return [m for m in self.messages
                if (m.startswith(("error", "pageerror")) and any(f in m for f in VIEWER_FAILURES))]

    def assert_no_failure(self, what: str) -> None:
        failures = self.failures()
        assert not failures, f"OHIF failed on {what}:\n" + "\n".join(f[:500] for f in failures[:5])

    def _wait(self, js: str, what: str, timeout_s: float, arg: Any = None) -> Any:
        """Poll `js` until it returns a truthy value; fail early (with OHIF's own message) on a viewer failure."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.assert_no_failure(what)
            value = self.page.evaluate(js, arg)
            if value:
                return value
            self.page.wait_for_timeout(250)
        raise AssertionError(f"OHIF: timed out after {timeout_s:.0f} s waiting for {what}")

    def open_study(self, study_uid: str, timeout_s: float = 90) -> dict[str, Any]:
        self.page.goto(self.ohif.viewer_url(study_uid))
        placement = self._wait(_VIEWPORT_JS, "the study's first image", timeout_s)
        self.settle()
        return dict(placement)

    def open_series(self, description_prefix: str, timeout_s: float = 90) -> dict[str, Any]:
        """Double-click the study browser entry whose description starts with `description_prefix`
        (OHIF loads that series into the active viewport) and wait until its image is shown."""
        before = self.page.evaluate(_VIEWPORT_JS, None)
        self.page.get_by_text(description_prefix, exact=False).first.dblclick()
        placement = self._wait(_VIEWPORT_JS, f"series {description_prefix!r}", timeout_s,
                               (before or {}).get("imageId"))
        self.settle()
        return dict(placement)

    def open_segmentation(self, description_prefix: str, timeout_s: float = 90) -> list[dict[str, Any]]:
        """Double-click a SEG series, answer OHIF's "Do you want to open this Segmentation?" with Yes and
        wait until the prompt is gone and OHIF's segmentation service holds the SEG; returns the service's
        segmentations."""
        self.page.get_by_text(description_prefix, exact=False).first.dblclick()
        self._wait(_PROMPT_JS, f"OHIF to offer the SEG {description_prefix!r}", timeout_s, True)
        self.page.get_by_role("button", name="Yes").first.click()
        self._wait(_PROMPT_JS, f"OHIF to open the SEG {description_prefix!r}", timeout_s, False)
        segmentations = self._wait(_SEGMENTATIONS_JS, f"the SEG {description_prefix!r} to load", timeout_s)
        self.settle()
        self.assert_no_failure(f"the SEG {description_prefix!r}")
        return list(segmentations)

    def settle(self, ms: int = 2500) -> None:
        """Give cornerstone's render loop time to draw (software WebGL is slow)."""
        self.page.wait_for_timeout(ms)

    def screenshot(self, path: Path) -> Path:
        self.page.screenshot(path=str(path))
        return path


def launch_chromium(playwright: Any) -> Any:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is not installed (apt-get install chromium)")
    return playwright.chromium.launch(executable_path=exe, args=list(CHROMIUM_ARGS))

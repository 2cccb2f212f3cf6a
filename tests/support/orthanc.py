"""A real Orthanc PACS for tests: `/usr/sbin/Orthanc config.json` on 127.0.0.1 free ports.

Storage in a temporary folder, remote HTTP access off, DICOM AE title ORTHANC, DICOMweb plugin on
(STOW-RS at http://127.0.0.1:<http_port>/dicom-web/). Ready in about a second; stopped with SIGTERM.
`stop()` then `start()` keeps ports and storage, which is how the tests take the PACS "down".

Use the `orthanc` fixture (import it into a test module), or `Orthanc(tmp_dir)` directly.

As a PACS that answers queries and retrievals: `modalities={"X2X": ("X2X", "127.0.0.1", port)}` is
Orthanc's `DicomModalities` (C-FIND / C-GET / C-MOVE are refused to unknown AEs, and C-MOVE sends only
to a listed AE, at its listed address); `extra={...}` merges any other option; `lua=` installs a Lua
script (e.g. `IncomingHttpRequestFilter`, which sees the HTTP headers: a bearer-token check, a request log).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

ORTHANC_BINARY = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN_CANDIDATES = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so",
)
# Debian's orthanc-webviewer: the Orthanc Web Viewer at /web-viewer/app/viewer.html?series=<Orthanc id>
WEBVIEWER_PLUGIN_CANDIDATES = (
    "/usr/share/orthanc/plugins/libOrthancWebViewer.so",
    "/usr/lib/orthanc/libOrthancWebViewer.so",
)


def _free_port() -> int:
    from tests.conftest import free_port

    return free_port()


class Orthanc:
    def __init__(
        self,
        work_dir: Path,
        *,
        ae_title: str = "ORTHANC",
        dicomweb: bool = True,
        webviewer: bool = False,
        modalities: dict[str, tuple[str, str, int]] | None = None,
        extra: dict[str, Any] | None = None,
        lua: str | None = None,
    ):
        self.work_dir = Path(work_dir)
        self.ae_title = ae_title
        self.http_port = _free_port()
        self.dicom_port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.config_path = self.work_dir / "orthanc.json"
        self.log_path = self.work_dir / "orthanc.log"
        plugins = [p for p in DICOMWEB_PLUGIN_CANDIDATES if Path(p).exists()][:1] if dicomweb else []
        self.dicomweb = bool(plugins)
        if webviewer:
            found = [p for p in WEBVIEWER_PLUGIN_CANDIDATES if Path(p).exists()][:1]
            if not found:
                pytest.fail("the Orthanc Web Viewer plugin is not installed (apt-get install orthanc-webviewer)")
            plugins += found
        config: dict[str, Any] = {
            "Name": "x2x-test-pacs",
            "StorageDirectory": str(self.work_dir / "db"),
            "IndexDirectory": str(self.work_dir / "db"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": ae_title,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "UnknownSopClassAccepted": True,
            "ConcurrentJobs": 1,
            "HttpThreadsCount": 4,
            "Plugins": plugins,
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "WebViewer": {"CachePath": str(self.work_dir / "webviewer-cache"), "Threads": 2},
        }
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if modalities:
            config["DicomModalities"] = {name: list(entry) for name, entry in modalities.items()}
        if lua is not None:
            script = self.work_dir / "scripts.lua"
            script.write_text(lua)
            config["LuaScripts"] = [str(script)]
        config.update(extra or {})
        self.config_path.write_text(json.dumps(config, indent=2))

    # lifecycle ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def start(self, timeout: float = 20.0) -> Orthanc:
        if shutil.which(ORTHANC_BINARY) is None and not Path(ORTHANC_BINARY).exists():
            pytest.fail(f"{ORTHANC_BINARY} is not installed (apt-get install orthanc)")
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child process owns it
        self.process = subprocess.Popen(
            [ORTHANC_BINARY, str(self.config_path)], stdout=log, stderr=subprocess.STDOUT, cwd=self.work_dir
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}: {self.log_tail()}")
            try:
                if requests.get(f"{self.url}/system", timeout=1).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc not ready within {timeout} s: {self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        if self.process is None or self.process.poll() is not None:
            self.process = None
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:  # pragma: no cover - Orthanc ignores SIGTERM only when wedged
            self.process.kill()
            self.process.wait(5)
        self.process = None

    def kill(self) -> None:
        """SIGKILL: the PACS is gone at once (a graceful stop lets it answer for a few more seconds)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # REST queries ------------------------------------------------------------------------
    def get(self, path: str) -> Any:
        response = requests.get(f"{self.url}{path}", timeout=10)
        response.raise_for_status()
        return response.json()

    def statistics(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.get("/statistics")
        return stats

    def instance_count(self) -> int:
        return int(self.statistics()["CountInstances"])

    def find_study(self, study_instance_uid: str) -> str | None:
        """Orthanc's id of the study with this Study Instance UID, or None."""
        response = requests.post(
            f"{self.url}/tools/lookup", data=study_instance_uid, timeout=10
        )
        response.raise_for_status()
        for hit in response.json():
            if hit.get("Type") == "Study":
                return str(hit["ID"])
        return None

    def study_series(self, study_instance_uid: str) -> list[dict[str, Any]]:
        """Every series of the study, each with its MainDicomTags and Instances (Orthanc ids)."""
        study_id = self.find_study(study_instance_uid)
        if study_id is None:
            return []
        series: list[dict[str, Any]] = self.get(f"/studies/{study_id}/series")
        return series

    def instance_tags(self, orthanc_instance_id: str) -> dict[str, Any]:
        tags: dict[str, Any] = self.get(f"/instances/{orthanc_instance_id}/simplified-tags")
        return tags

    def upload(self, path: Path) -> str:
        """POST a DICOM file to Orthanc's REST API; returns Orthanc's instance id."""
        response = requests.post(f"{self.url}/instances", data=Path(path).read_bytes(), timeout=60)
        response.raise_for_status()
        return str(response.json()["ID"])

    def study_instance_uids(self, study_instance_uid: str) -> dict[str, str]:
        """SOP Instance UID -> Series Description of every instance in the study."""
        out: dict[str, str] = {}
        for series in self.study_series(study_instance_uid):
            description = series.get("MainDicomTags", {}).get("SeriesDescription", "")
            for instance_id in series.get("Instances", []):
                out[self.get(f"/instances/{instance_id}")["MainDicomTags"]["SOPInstanceUID"]] = description
        return out

    def instance_file(self, orthanc_instance_id: str) -> bytes:
        response = requests.get(f"{self.url}/instances/{orthanc_instance_id}/file", timeout=30)
        response.raise_for_status()
        return response.content


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    """A running Orthanc with empty storage; stopped at the end of the test."""
    server = Orthanc(tmp_path / "orthanc").start()
    try:
        yield server
    finally:
        server.stop()


def tcp_nodelay_env() -> dict[str, str]:
    """Environment for dcmtk tools: TCP_NODELAY=1 or Nagle costs ~47 ms per C-STORE."""
    return {**os.environ, "TCP_NODELAY": "1"}

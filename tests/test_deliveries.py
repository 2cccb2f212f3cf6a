"""One edit, every destination: a job is edited once per key and delivered once to each destination that
asked for it (C-STORE and STOW-RS to real Orthancs); the delivery stage runs beside the next edit."""

from __future__ import annotations

import http.server
import json
import socketserver
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from tests.conftest import free_port
from tests.support.dicom_files import renumbered_copy, storescu
from tests.support.node import NodeProcess, run_node
from tests.support.orthanc import Orthanc

pytestmark = [pytest.mark.integration, pytest.mark.slow]

INSTRUCTION = "Add the finding of left pleural effusion."


def _config(pacs: Orthanc, web_url: str) -> str:
    return f"""
[edit]
steps = 2
resolution = 256

[destinations.pacs]
type = "cstore"
ae_title = "{pacs.ae_title}"
host = "127.0.0.1"
port = {pacs.dicom_port}

[destinations.web]
type = "stow"
url = "{web_url}"

[[rules]]
called_ae = "X2X_PACS"
instruction = "{INSTRUCTION}"
destination = "pacs"

[[rules]]
called_ae = "X2X_WEB"
instruction = "{INSTRUCTION}"
destination = "web"
"""


def _deliveries(node: NodeProcess, job_id: int) -> dict[str, dict]:
    return {d["destination"]: d for d in node._rows("SELECT * FROM deliveries WHERE job_id = ?", (job_id,))}


def _job(node: NodeProcess, job_id: int) -> dict:
    (job,) = node._rows("SELECT * FROM jobs WHERE id = ?", (job_id,))
    return job


def test_a_second_destination_is_served_without_re_editing_and_none_twice(
    tmp_path: Path, tiny_model_dir: Path, chest_cr_path: Path
) -> None:
    with Orthanc(tmp_path / "pacs") as pacs, Orthanc(tmp_path / "web", ae_title="WEBPACS") as web, \
            run_node(tmp_path, _config(pacs, web.dicomweb_url), model_dir=tiny_model_dir) as node:
        assert storescu(node.port, chest_cr_path, called_ae="X2X_PACS").returncode == 0
        (job,) = node.wait_for_jobs(1, timeout=120)
        node.wait_for(lambda: _job(node, job["id"])["state"] == "done", 300, "job done")
        assert _deliveries(node, job["id"])["pacs"]["state"] == "delivered"
        assert pacs.instance_count() == 5 and web.instance_count() == 0
        encoded = node.var_dir / "results" / str(job["id"]) / "counterfactual.dcm"
        encoded_at = encoded.stat().st_mtime_ns
        edited = json.loads(_job(node, job["id"])["timings"])["edit_s"]

        # the same study to the AE whose rule names the STOW-RS destination: same job, a new delivery
        assert storescu(node.port, chest_cr_path, called_ae="X2X_WEB").returncode == 0
        node.wait_for(lambda: _deliveries(node, job["id"]).get("web", {}).get("state") == "delivered",
                      300, "delivery to web")
        node.wait_for(lambda: _job(node, job["id"])["state"] == "done", 60, "job done again")
        assert len(node.jobs()) == 1, "one edit per key"
        assert encoded.stat().st_mtime_ns == encoded_at, "the objects were not made again"
        assert json.loads(_job(node, job["id"])["timings"])["edit_s"] == edited
        assert web.instance_count() == 5
        assert "delivering without re-editing" in node.log_text()

        # both again: nothing is delivered twice
        for called in ("X2X_PACS", "X2X_WEB"):
            assert storescu(node.port, chest_cr_path, called_ae=called).returncode == 0
        node.wait_for(lambda: len(node.study_instances()) >= 1 and not node._rows(
            "SELECT 1 FROM studies WHERE state = 'receiving'"), 60, "studies processed")
        time.sleep(2.0)
        deliveries = _deliveries(node, job["id"])
        assert {name: (d["state"], d["attempts"]) for name, d in deliveries.items()} == {
            "pacs": ("delivered", 1), "web": ("delivered", 1)}
        assert node.log_text().count("objects delivered to") == 2


@contextmanager
def slow_forwarder(target: str, delay: float) -> Iterator[str]:
    """An HTTP forwarder that holds every STOW-RS request `delay` seconds before passing it on to the
    real archive at `target`: a slow destination."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            time.sleep(delay)
            upstream = requests.post(target + self.path, data=body, timeout=60,
                                     headers={"Content-Type": self.headers["Content-Type"],
                                              "Accept": self.headers.get("Accept", "application/dicom+json")})
            self.send_response(upstream.status_code)
            self.send_header("Content-Type", upstream.headers.get("Content-Type", "application/dicom+json"))
            self.send_header("Content-Length", str(len(upstream.content)))
            self.end_headers()
            self.wfile.write(upstream.content)

        def log_message(self, *args: object) -> None:
            pass

    port = free_port()
    server = socketserver.ThreadingTCPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_next_edit_runs_while_the_previous_job_is_delivered(
    tmp_path: Path, tiny_model_dir: Path, chest_cr_path: Path
) -> None:
    with Orthanc(tmp_path / "web", ae_title="WEBPACS") as web, \
            slow_forwarder(web.url.rstrip("/"), delay=6.0) as slow:
        config = _config(web, slow + "/dicom-web")
        with run_node(tmp_path, config, model_dir=tiny_model_dir) as node:
            first = renumbered_copy(chest_cr_path, tmp_path / "one.dcm")
            second = renumbered_copy(chest_cr_path, tmp_path / "two.dcm")
            assert storescu(node.port, [first], called_ae="X2X_WEB").returncode == 0
            (job1,) = node.wait_for_jobs(1, timeout=120)
            node.wait_for(lambda: _job(node, job1["id"])["state"] == "sending", 300, "first job sending")
            assert storescu(node.port, [second], called_ae="X2X_WEB").returncode == 0
            jobs = node.wait_for_jobs(2, timeout=120)
            job2 = next(j for j in jobs if j["id"] != job1["id"])
            node.wait_for(lambda: all(_job(node, j["id"])["state"] == "done" for j in (job1, job2)), 300, "both done")
            delivered_1 = _deliveries(node, job1["id"])["web"]["delivered_at"]
            started_2 = _job(node, job2["id"])["started_at"]
            assert started_2 < delivered_1, "the second edit started while the first job was still being delivered"
            assert web.instance_count() == 10

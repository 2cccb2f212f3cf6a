"""REST API in-process (FastAPI TestClient, no worker): auth, job lifecycle, readiness, STOW-RS in.

Jobs are created through the real spool + study logic and put on the real (embedded SQLite) Celery
broker; no worker consumes them here, so their states only change through the API. Running jobs end
to end is tests/test_node_ops.py.
"""

from __future__ import annotations

import logging
import re
import stat
import uuid
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient

from dicom_node.api.app import create_app
from dicom_node.config import load_settings
from dicom_node.context import build_context
from tests.support.chest_copies import chest_copy

INSTRUCTION = "Add the finding of pleural effusion."


@pytest.fixture
def ctx(tmp_path: Path, tiny_model_dir: Path):
    settings = load_settings(
        paths={"var_dir": tmp_path / "var"},
        model={"path": tiny_model_dir},
        requests={"default_instruction": INSTRUCTION},
        edit={"steps": 1},
    )
    return build_context(settings)


BASE_URL = "http://localhost"  # a Host the API answers (api.allowed_hosts' default: this machine's names)


def _token(ctx) -> str:
    return (ctx.settings.var_dir / "api-token").read_text().strip()


@pytest.fixture
def app(ctx):
    return create_app(ctx)


@pytest.fixture
def client(ctx, app):
    """A client that reads with the API token (every request carries it unless it passes its own)."""
    return TestClient(app, base_url=BASE_URL, headers={"Authorization": f"Bearer {_token(ctx)}"})


@pytest.fixture
def anon(app):
    """A client without any token."""
    return TestClient(app, base_url=BASE_URL)


def _part10(ds: pydicom.Dataset) -> bytes:
    import io

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _multipart_related(parts: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = f"x2x-{uuid.uuid4().hex}"
    body = b""
    for content_type, payload in parts:
        body += f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode() + payload + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def test_generated_token_file_is_private_and_never_logged(ctx, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        TestClient(create_app(ctx))
    token_file = ctx.settings.var_dir / "api-token"
    token = token_file.read_text().strip()
    assert len(token) >= 32
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert str(token_file) in caplog.text and token not in caplog.text
    # a restart keeps the same token (clients keep working)
    TestClient(create_app(ctx))
    assert token_file.read_text().strip() == token


def test_mutating_endpoints_need_the_token_and_change_nothing_without_it(
    ctx, client: TestClient, anon: TestClient, chest_cr_path: Path
) -> None:
    raw = _part10(chest_copy(chest_cr_path))
    files = {"file": ("cr.dcm", raw, "application/dicom")}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {_token(ctx)}"}):
        r = anon.post("/jobs", files=files, data={"instruction": INSTRUCTION}, headers=headers)
        assert r.status_code == 401, r.text
        assert r.headers["www-authenticate"] == "Bearer"
    body, content_type = _multipart_related([("application/dicom", raw)])
    assert anon.post("/dicomweb/studies", content=body, headers={"Content-Type": content_type}).status_code == 401
    assert client.get("/jobs").json()["jobs"] == []
    assert not list(ctx.settings.spool_dir.rglob("*.dcm")), "a refused request must not store anything"
    # only the health probes stay open (reads: tests/test_hostile_api.py)
    assert anon.get("/healthz").json() == {"status": "ok"}
    assert anon.delete("/jobs/1").status_code == 401
    assert anon.post("/jobs/1/retry").status_code == 401


def test_job_lifecycle_upload_show_cancel_retry(ctx, client: TestClient, chest_cr_path: Path) -> None:
    auth = {"Authorization": f"Bearer {_token(ctx)}"}
    ds = chest_copy(chest_cr_path)
    r = client.post(
        "/jobs", files={"file": ("cr.dcm", _part10(ds), "application/dicom")},
        data={"instruction": INSTRUCTION, "seed": "7"}, headers=auth,
    )
    assert r.status_code == 201, r.text
    out = r.json()
    assert len(out["created"]) == 1 and out["skipped"] == []
    job_id = out["created"][0]
    job = client.get(f"/jobs/{job_id}").json()
    assert job["state"] == "queued"
    assert job["instruction"] == INSTRUCTION
    assert job["seed"] == 7 and job["origin"] == "api"
    assert job["sop_instance_uid"] == ds.SOPInstanceUID and job["study_instance_uid"] == ds.StudyInstanceUID
    assert "source_path" not in job
    # same upload again: idempotent, no second job
    again = client.post(
        "/jobs", files={"file": ("cr.dcm", _part10(ds), "application/dicom")},
        data={"instruction": INSTRUCTION, "seed": "7"}, headers=auth,
    ).json()
    assert again["created"] == [] and again["existing"] == [job_id]
    # a study already in the spool, by reference, other instruction -> another job
    r = client.post("/jobs", json={"study_instance_uid": ds.StudyInstanceUID,
                                   "instruction": "Remove the finding of cardiomegaly."}, headers=auth)
    assert r.status_code == 201, r.text
    assert len(r.json()["created"]) == 1
    second_job_id = r.json()["created"][0]
    assert client.post("/jobs", json={"study_instance_uid": "1.2.3.999", "instruction": INSTRUCTION},
                       headers=auth).status_code == 404
    bad = client.post("/jobs", json={"study_instance_uid": ds.StudyInstanceUID, "instruction": "make it pretty"},
                      headers=auth)
    assert bad.status_code == 422
    lateral = chest_copy(chest_cr_path, ViewPosition="LL")
    r = client.post("/jobs", files={"file": ("lat.dcm", _part10(lateral), "application/dicom")},
                    data={"instruction": INSTRUCTION}, headers=auth)
    assert r.status_code == 422 and "view position LL is not frontal" in r.json()["detail"]

    study = client.get(f"/studies/{ds.StudyInstanceUID}").json()
    # the instance row points at the latest job made from it
    assert {i["sop_instance_uid"]: i["job_id"] for i in study["instances"]}[ds.SOPInstanceUID] == second_job_id
    assert ds.StudyInstanceUID in {st["study_instance_uid"] for st in client.get("/studies").json()["studies"]}
    assert client.get("/studies/1.2.3.999").status_code == 404

    listed = client.get("/jobs", params={"state": "queued", "study": ds.StudyInstanceUID}).json()
    assert {j["id"] for j in listed["jobs"]} >= {job_id} and listed["counts"]["queued"] == 2
    assert client.get("/jobs", params={"state": "bogus"}).status_code == 422

    assert client.post(f"/jobs/{job_id}/retry", headers=auth).status_code == 409  # queued: nothing to retry
    r = client.delete(f"/jobs/{job_id}", headers=auth)
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    assert client.delete(f"/jobs/{job_id}", headers=auth).status_code == 409
    r = client.post(f"/jobs/{job_id}/retry", headers=auth)
    assert r.status_code == 200 and r.json()["state"] == "queued" and r.json()["attempts"] == 0
    assert client.get("/jobs/99999").status_code == 404
    # previews are 404 until the pipeline writes them
    assert client.get(f"/jobs/{job_id}/previews/overlay.png").status_code == 404
    assert client.get("/openapi.json").json()["info"]["title"] == "InstructX2X DICOM node"
    docs = client.get("/docs").text
    assert "/docs-assets/swagger-ui-bundle.js" in docs and "cdn" not in docs.lower(), "docs work offline"
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200


def test_a_rejected_job_request_changes_nothing(ctx, client: TestClient, chest_cr_path: Path) -> None:
    """A misspelt instruction (422) used to rewrite the study to invalid-request with the bad instruction."""
    auth = {"Authorization": f"Bearer {_token(ctx)}"}
    ds = chest_copy(chest_cr_path)
    r = client.post("/jobs", files={"file": ("cr.dcm", _part10(ds), "application/dicom")},
                    data={"instruction": INSTRUCTION}, headers=auth)
    assert r.status_code == 201, r.text
    before = client.get(f"/studies/{ds.StudyInstanceUID}").json()
    spool_before = sorted(ctx.settings.spool_dir.rglob("*.dcm"))

    r = client.post("/jobs", json={"study_instance_uid": ds.StudyInstanceUID,
                                   "instruction": "Add the finding of pleural efusion."}, headers=auth)
    assert r.status_code == 422
    assert r.json()["detail"].count("did you mean") == 1 and "pleural effusion" in r.json()["detail"]
    r = client.post("/jobs", json={"study_instance_uid": ds.StudyInstanceUID, "instruction": INSTRUCTION,
                                   "params": {"tau": 7}}, headers=auth)
    assert r.status_code == 422
    assert client.get(f"/studies/{ds.StudyInstanceUID}").json() == before
    assert len(client.get("/jobs").json()["jobs"]) == 1

    # refused uploads store nothing and record nothing: a bad instruction, an ineligible (lateral) image
    for instruction, image in (("Add the finding of pleural efusion.", chest_copy(chest_cr_path)),
                               (INSTRUCTION, chest_copy(chest_cr_path, ViewPosition="LL"))):
        r = client.post("/jobs", files={"file": ("x.dcm", _part10(image), "application/dicom")},
                        data={"instruction": instruction}, headers=auth)
        assert r.status_code == 422, r.text
        assert client.get(f"/studies/{image.StudyInstanceUID}").status_code == 404
    assert sorted(ctx.settings.spool_dir.rglob("*.dcm")) == spool_before


def test_dashboard_shows_skips_and_request_errors(ctx, client: TestClient, chest_cr_path: Path) -> None:
    """Skipped instances and refused requests are not jobs: the dashboard's Studies table shows them."""
    from dicom_node.inbound.spool import Spool
    from dicom_node.studies.intake import create_jobs_for_study
    from dicom_node.studies.requests import write_private_block

    spool = Spool(ctx.settings.spool_dir)
    lateral = chest_copy(chest_cr_path, ViewPosition="LL")
    bad = chest_copy(chest_cr_path)
    write_private_block(bad, "Add the finding of pleural efusion.")
    for image in (lateral, bad):
        spool.store(_part10(image), study_uid=image.StudyInstanceUID, series_uid=image.SeriesInstanceUID,
                    sop_uid=image.SOPInstanceUID)
        create_jobs_for_study(ctx, image.StudyInstanceUID, called_ae="X2X", calling_ae="MOD1")
    for page in (client.get("/").text, client.get("/dashboard/studies").text):
        assert lateral.StudyInstanceUID in page and bad.StudyInstanceUID in page
        assert "not edited: view position LL is not frontal" in page
        assert "request error: " in page and "pleural efusion" in page


def test_readyz_reports_each_dependency_and_fails_on_unwritable_spool(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    ok = build_context(load_settings(paths={"var_dir": tmp_path / "ok"}, model={"path": tiny_model_dir}))
    r = TestClient(create_app(ok), base_url=BASE_URL).get("/readyz")
    assert r.status_code == 200, r.text
    assert set(r.json()["checks"]) == {"spool", "database", "broker", "model"}
    # Tests run as root, for whom permission bits do not stop writes: make the spool path a regular
    # FILE, so that nothing can be created under it whoever we are (same failure as a read-only mount).
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("x")
    bad = build_context(load_settings(paths={"var_dir": tmp_path / "bad", "spool_dir": blocked},
                                      model={"path": tmp_path / "no-such-model"}))
    r = TestClient(create_app(bad), base_url=BASE_URL).get("/readyz")
    assert r.status_code == 503
    checks = r.json()["checks"]
    assert checks["spool"]["ok"] is False and "not writable" in checks["spool"]["detail"]
    assert checks["model"]["ok"] is False
    assert checks["database"]["ok"] is True and checks["broker"]["ok"] is True


def test_stow_rs_stores_dicom_parts_and_reports_failures(ctx, client: TestClient, chest_cr_path: Path) -> None:
    auth = {"Authorization": f"Bearer {_token(ctx)}"}
    ds = chest_copy(chest_cr_path)
    body, content_type = _multipart_related([
        ("application/dicom", _part10(ds)),
        ("text/plain", b"hello, not DICOM"),
        ("application/dicom", b"\x00" * 300 + b"garbage that claims to be DICOM"),
    ])
    r = client.post("/dicomweb/studies", content=body, headers={"Content-Type": content_type, **auth})
    assert r.status_code == 202, r.text  # some stored, some failed
    assert r.headers["content-type"].startswith("application/dicom+json")
    resp = pydicom.Dataset.from_json(r.json())
    assert [str(i.ReferencedSOPInstanceUID) for i in resp.ReferencedSOPSequence] == [ds.SOPInstanceUID]
    assert str(resp.ReferencedSOPSequence[0].RetrieveURL).endswith(f"/instances/{ds.SOPInstanceUID}")
    assert [int(i.FailureReason) for i in resp.FailedSOPSequence] == [0xC000, 0xC000]
    spooled = list(ctx.settings.spool_dir.rglob("*.dcm"))
    assert [p.name for p in spooled] == [f"{ds.SOPInstanceUID}.dcm"], "only the DICOM part is stored"
    assert spooled[0].read_bytes() == _part10(ds), "the spool keeps the bytes exactly as received"
    jobs = client.get("/jobs", params={"study": ds.StudyInstanceUID}).json()["jobs"]
    assert len(jobs) == 1
    assert jobs[0]["origin"] == "stow" and jobs[0]["state"] == "queued"
    assert jobs[0]["instruction"] == INSTRUCTION and jobs[0]["sop_instance_uid"] == ds.SOPInstanceUID

    # only non-DICOM: nothing stored, 409, failure entry
    body, content_type = _multipart_related([("application/octet-stream", b"\x89PNG....")])
    r = client.post("/dicomweb/studies", content=body, headers={"Content-Type": content_type, **auth})
    assert r.status_code == 409
    assert int(pydicom.Dataset.from_json(r.json()).FailedSOPSequence[0].FailureReason) == 0xC000
    # study in the URL that does not match the instance
    body, content_type = _multipart_related([("application/dicom", _part10(chest_copy(chest_cr_path)))])
    r = client.post(f"/dicomweb/studies/{ds.StudyInstanceUID}", content=body,
                    headers={"Content-Type": content_type, **auth})
    assert r.status_code == 409
    assert len(list(ctx.settings.spool_dir.rglob("*.dcm"))) == 1
    # not multipart/related at all
    r = client.post("/dicomweb/studies", content=b"x", headers={"Content-Type": "application/json", **auth})
    assert r.status_code == 415


def test_metrics_exposes_job_store_and_process_counters(ctx, client: TestClient, chest_cr_path: Path) -> None:
    auth = {"Authorization": f"Bearer {_token(ctx)}"}
    before = client.get("/metrics").text
    assert 'x2x_jobs{state="queued"} 0.0' in before
    assert "x2x_queue_depth 0.0" in before and "x2x_edit_seconds_count 0.0" in before
    body, content_type = _multipart_related([("application/dicom", _part10(chest_copy(chest_cr_path)))])
    assert client.post("/dicomweb/studies", content=body,
                       headers={"Content-Type": content_type, **auth}).status_code == 200
    after = client.get("/metrics").text
    assert 'x2x_jobs{state="queued"} 1.0' in after and "x2x_queue_depth 1.0" in after
    assert "x2x_instances_received_total" in after and "x2x_send_failures_total" in after


@pytest.mark.integration
def test_docs_render_offline_in_a_browser(tmp_path: Path) -> None:
    """/docs is Swagger UI from local files: in headless Chromium it renders the API's operations (it once
    showed only "does not specify a valid version field": its Swagger UI predated OpenAPI 3.1)."""
    from dicom_node.api.server import ApiServer
    from dicom_node.config import load_settings
    from dicom_node.context import build_context
    from tests.conftest import free_port
    from tests.support.browser import chromium

    ctx = build_context(load_settings(paths={"var_dir": str(tmp_path / "var")},
                                      api={"host": "127.0.0.1", "port": free_port()}))
    server = ApiServer(ctx).start()
    try:
        dom = chromium(tmp_path, f"{server.url}/docs", "--dump-dom", budget_ms=15000).stdout.decode()
    finally:
        server.stop()
    assert "valid version field" not in dom
    paths = set(re.findall(r'data-path="([^"]+)"', dom))
    assert {"/jobs", "/jobs/{job_id}", "/studies", "/readyz", "/dicomweb/studies"} <= paths, sorted(paths)

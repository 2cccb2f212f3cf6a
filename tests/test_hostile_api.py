"""The REST API against hostile clients, through a real `x2x serve` (issue 16 #8, #9): reads need a
token, the Host is checked, and malformed input is a 4xx (main answered 200 to everyone, and 500 to a
non-ASCII token, a 23-digit job id and a 100,000-deep STOW part)."""

from __future__ import annotations

import struct
import subprocess
import uuid
from pathlib import Path

import httpx
import pydicom
import pytest

from tests.support.chest_copies import chest_copy
from tests.support.hostile import part10_bytes
from tests.support.node import NodeProcess, run_node

pytestmark = pytest.mark.integration

INSTRUCTION = "Add the finding of pleural effusion."
NODE_TOML = f"""
[requests]
default_instruction = "{INSTRUCTION}"
[queue]
embedded_worker = false
"""


def _token(node: NodeProcess) -> str:
    return (node.var_dir / "api-token").read_text().strip()


def _url(node: NodeProcess) -> str:
    return f"http://127.0.0.1:{node.api_port}"


def _stow_body(parts: list[bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n" for p in parts)
    return body + f"--{boundary}--\r\n".encode(), f'multipart/related; type="application/dicom"; boundary={boundary}'


def _deep_part10(depth: int) -> bytes:
    """A Part 10 object whose data set is one sequence nested `depth` levels (undefined lengths)."""
    item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    seq_end, item_end = b"\xfe\xff\xdd\xe0\0\0\0\0", b"\xfe\xff\x0d\xe0\0\0\0\0"
    opening = struct.pack("<HH", 0x0008, 0x1110) + b"SQ\0\0\xff\xff\xff\xff" + item
    meta = pydicom.Dataset()
    meta.file_meta = pydicom.dataset.FileMetaDataset()
    meta.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    meta.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    return part10_bytes(meta) + opening * depth + (item_end + seq_end) * depth


def test_reads_need_a_token_and_the_dashboard_signs_in(tmp_path, tiny_model_dir, chest_cr_path):
    with run_node(tmp_path, NODE_TOML, model_dir=tiny_model_dir) as node:
        token = _token(node)
        bearer = {"Authorization": f"Bearer {token}"}
        body, content_type = _stow_body([part10_bytes(chest_copy(chest_cr_path, factor=8))])
        with httpx.Client(base_url=_url(node), timeout=30) as c:
            r = c.post("/dicomweb/studies", content=body, headers={"Content-Type": content_type, **bearer})
            assert r.status_code == 200, r.text
            job_id = node.wait_for_jobs(1)[0]["id"]
            reads = ["/jobs", f"/jobs/{job_id}", "/studies", "/metrics", f"/jobs/{job_id}/previews/source.png"]
            for path in reads:
                assert c.get(path).status_code == 401, path  # main: 200 (images, UIDs, instructions)
                assert c.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401, path
                assert c.get(path, headers=bearer).status_code in (200, 404), path  # 404: preview not written
            assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
            page = c.get("/")
            assert page.status_code == 401 and 'action="/login"' in page.text and "pleural" not in page.text
            assert c.post("/login", data={"token": "wrong"}).status_code == 401
            signed_in = c.post("/login", data={"token": token})
            assert signed_in.status_code == 303 and "x2x_read" in signed_in.headers["set-cookie"]
            assert "HttpOnly" in signed_in.headers["set-cookie"] and token not in signed_in.headers["set-cookie"]
            # the client now holds the read-only cookie
            assert c.get("/").status_code == 200 and f'data-job-id="{job_id}"' in c.get("/").text
            assert c.get("/jobs").status_code == 200
            assert c.delete(f"/jobs/{job_id}").status_code == 401, "the cookie only reads"
        with httpx.Client(base_url=_url(node), timeout=30, follow_redirects=True) as link:
            r = link.get(f"/?token={token}")  # a link with the token: cookie, then the page without it
            assert r.status_code == 200 and str(r.url).endswith("/") and "token" not in str(r.url)
            assert link.get("/jobs").status_code == 200


def test_read_token_and_public_reads(tmp_path, tiny_model_dir):
    cfg = '[api]\nread_token = "dashboards-only-token-0123456789"\n[queue]\nembedded_worker = false\n'
    with run_node(tmp_path, cfg, model_dir=tiny_model_dir) as node, \
            httpx.Client(base_url=_url(node), timeout=30) as c:
        reader = {"Authorization": "Bearer dashboards-only-token-0123456789"}
        assert c.get("/jobs", headers=reader).status_code == 200
        assert c.get("/metrics", headers=reader).status_code == 200
        assert c.delete("/jobs/1", headers=reader).status_code == 401
        assert c.get("/jobs").status_code == 401
    with run_node(tmp_path, "[api]\npublic_reads = true\n[queue]\nembedded_worker = false\n",
                  model_dir=tiny_model_dir) as node, httpx.Client(base_url=_url(node), timeout=30) as c:
        assert c.get("/jobs").status_code == 200
        assert c.delete("/jobs/1").status_code == 401


def test_host_header_is_checked(tmp_path, tiny_model_dir):
    with run_node(tmp_path, "[queue]\nembedded_worker = false\n", model_dir=tiny_model_dir) as node, \
            httpx.Client(base_url=_url(node), timeout=30) as c:
        bearer = {"Authorization": f"Bearer {_token(node)}"}
        evil = c.get("/jobs", headers={**bearer, "Host": "rebind.attacker.example"})
        assert evil.status_code == 400 and "allowed_hosts" in evil.text  # main: 200
        assert c.get("/jobs", headers={**bearer, "Host": f"localhost:{node.api_port}"}).status_code == 200
        assert c.get("/healthz", headers={"Host": "10.1.2.3:8000"}).status_code == 200  # probes by IP
    cfg = '[api]\nallowed_hosts = ["x2x.hospital.example"]\n[queue]\nembedded_worker = false\n'
    with run_node(tmp_path, cfg, model_dir=tiny_model_dir) as node, \
            httpx.Client(base_url=_url(node), timeout=30) as c:
        bearer = {"Authorization": f"Bearer {_token(node)}"}
        assert c.get("/jobs", headers={**bearer, "Host": "x2x.hospital.example"}).status_code == 200
        assert c.get("/jobs", headers=bearer).status_code == 400  # 127.0.0.1 is not in the list now


def test_malformed_input_is_a_4xx_never_a_500(tmp_path, tiny_model_dir, chest_cr_path):
    with run_node(tmp_path, NODE_TOML, model_dir=tiny_model_dir) as node, \
            httpx.Client(base_url=_url(node), timeout=60) as c:
        bearer = {"Authorization": f"Bearer {_token(node)}"}
        statuses = {
            "non-ASCII bearer token": c.get("/jobs", headers={"Authorization": "Bearer t\u00f6k\u00e9n".encode()}),
            "non-ASCII bearer token on a mutation": c.delete(
                "/jobs/1", headers={"Authorization": "Bearer \u00fc\u00fc".encode("latin-1")}),
            "23-digit job id": c.get("/jobs/12345678901234567890123", headers=bearer),
            "23-digit job id on a mutation": c.post("/jobs/12345678901234567890123/retry", headers=bearer),
            "negative job id": c.get("/jobs/-4", headers=bearer),
        }
        body, content_type = _stow_body([_deep_part10(100_000)])
        statuses["100,000-deep STOW part"] = c.post("/dicomweb/studies", content=body,
                                                     headers={"Content-Type": content_type, **bearer})
        for what, r in statuses.items():
            assert 400 <= r.status_code < 500, (what, r.status_code, r.text[:300])
        deep = pydicom.Dataset.from_json(statuses["100,000-deep STOW part"].json())
        assert int(deep.FailedSOPSequence[0].FailureReason) == 0xC000
        # a 100 kB instruction (main accepted it)
        ds = chest_copy(chest_cr_path, factor=8)
        body, content_type = _stow_body([part10_bytes(ds)])
        assert c.post("/dicomweb/studies", content=body, headers={"Content-Type": content_type, **bearer}).is_success
        long_instruction = "Add the finding of " + "pleural effusion and " * 5000 + "edema."
        r = c.post("/jobs", json={"study_instance_uid": ds.StudyInstanceUID, "instruction": long_instruction},
                   headers=bearer)
        assert r.status_code == 422 and "max_instruction_chars" in r.text, r.text[:300]
        assert node.proc.poll() is None
        assert "Traceback" not in node.log_text()


def test_readyz_is_not_ready_when_an_instance_cannot_be_stored(tmp_path, tiny_model_dir, chest_cr_path):
    """A 1 MB spool: main's /readyz wrote its few-byte probe and said ready while every radiograph was
    answered 0xA700. Now it reports the free space below node.spool_min_free_mb."""
    mnt = tmp_path / "tiny-spool"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        env = {"X2X_PATHS__SPOOL_DIR": str(mnt), "X2X_QUEUE__EMBEDDED_WORKER": "false"}
        with run_node(tmp_path, "", env, model_dir=tiny_model_dir) as node, \
                httpx.Client(base_url=_url(node), timeout=30) as c:
            r = c.get("/readyz")
            assert r.status_code == 503, r.text
            assert "below node.spool_min_free_mb" in r.json()["checks"]["spool"]["detail"]
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_stored_paths_are_absolute_whatever_the_working_directory(tmp_path, monkeypatch, tiny_model_dir,
                                                                   chest_cr_path):
    """A relative var_dir (the default `var`): what is stored about files names them absolutely, so a
    node, worker or `x2x` command started from another directory finds them."""
    from dicom_node.config import load_settings
    from dicom_node.context import build_context
    from dicom_node.inbound.spool import Spool
    from dicom_node.studies.intake import create_jobs_for_study
    from dicom_node.studies.records import study_instances

    monkeypatch.chdir(tmp_path)
    settings = load_settings(paths={"var_dir": "var"}, model={"path": tiny_model_dir},
                             requests={"default_instruction": INSTRUCTION}, queue={"embedded_worker": False})
    ctx = build_context(settings)
    ds = chest_copy(chest_cr_path, factor=8)
    Spool(settings.spool_dir).store(part10_bytes(ds), study_uid=ds.StudyInstanceUID,
                                    series_uid=ds.SeriesInstanceUID, sop_uid=ds.SOPInstanceUID)
    out = create_jobs_for_study(ctx, ds.StudyInstanceUID, called_ae=settings.node.ae_title)
    job = ctx.store.get(out.created_jobs[0])
    assert job is not None and Path(job.source_path).is_absolute()
    assert all(Path(i.path).is_absolute() for i in study_instances(ctx.db, ds.StudyInstanceUID))

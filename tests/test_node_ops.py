"""Operations end to end with real processes: `x2x serve` (SCP + API + embedded Celery worker on the
SQLite broker), `x2x worker` processes on a real redis-server, SIGKILL recovery, /metrics, the dashboard
in headless Chromium, STOW-RS beside C-STORE.

Jobs use the tiny random model with 1 step on 4x-downscaled copies of the real chest CR.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pydicom
import pytest

from tests.conftest import require_tool
from tests.support.browser import chromium
from tests.support.chest_copies import chest_copy, low_resolution_model, write_chest_copies
from tests.support.node import NodeProcess, run_node
from tests.support.redis import redis_server

X2X = str(Path(sys.executable).with_name("x2x"))
INSTRUCTION = "Add the finding of pleural effusion."
NODE_TOML = f"""
[requests]
default_instruction = "{INSTRUCTION}"
[edit]
steps = 1
"""
PATIENT_NAME, PATIENT_ID = "Zyxwvut^Henrietta", "PID-H5-0042"
RESULT_FILES = ["counterfactual.dcm", "fseg.dcm", "overlay.dcm", "pmap.dcm", "seg.dcm"]

pytestmark = [pytest.mark.integration, pytest.mark.slow]

@pytest.fixture(scope="module")
def fast_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return low_resolution_model(tiny_model_dir, tmp_path_factory.mktemp("models") / "tiny128")



def storescu(port: int, files: list[Path], called_ae: str = "X2X") -> None:
    require_tool("storescu")
    r = subprocess.run(["storescu", "-aec", called_ae, "127.0.0.1", str(port), *map(str, files)],
                       capture_output=True, env=dict(os.environ, TCP_NODELAY="1"), timeout=120)
    assert r.returncode == 0, r.stderr.decode()[-2000:]


def token(node: NodeProcess) -> str:
    return (node.var_dir / "api-token").read_text().strip()


def api(node: NodeProcess) -> httpx.Client:
    """A client of the node's API that reads with its token (every read needs one)."""
    return httpx.Client(base_url=f"http://127.0.0.1:{node.api_port}", timeout=30,
                        headers={"Authorization": f"Bearer {token(node)}"})


def wait_all_done(node: NodeProcess, n: int, timeout: float) -> list[dict]:
    def done() -> list[dict] | None:
        jobs = node.jobs()
        bad = [j for j in jobs if j["state"] in ("failed", "dead-letter")]
        assert not bad, f"failed jobs: {[(j['id'], j['last_error']) for j in bad]}"
        return jobs if len(jobs) >= n and all(j["state"] == "done" for j in jobs) else None

    return node.wait_for(done, timeout, f"{n} job(s) done")


def metric(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name + (f"{{{labels}}}" if labels else "")) + r" ([0-9.e+-]+)"
    found = re.findall(r"^" + pattern + r"$", text, re.MULTILINE)
    return sum(float(v) for v in found)


def metric_sum(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(r"^" + re.escape(name) + r"(?:\{[^}]*\})? ([0-9.e+-]+)$", text,
                                            re.MULTILINE))


def stow(node: NodeProcess, ds: pydicom.Dataset) -> httpx.Response:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + buf.getvalue()
            + f"\r\n--{boundary}--\r\n".encode())
    with api(node) as c:
        return c.post("/dicomweb/studies", content=body, headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Authorization": f"Bearer {token(node)}"})


# --- embedded: x2x serve alone ---------------------------------------------------------------------------
def test_serve_embedded_queue_10_jobs_api_metrics_dashboard_and_stow(
    tmp_path: Path, chest_cr_path: Path, fast_model_dir: Path
) -> None:
    files = write_chest_copies(chest_cr_path, tmp_path / "in", 10)
    with run_node(tmp_path, NODE_TOML, model_dir=fast_model_dir) as node:
        with api(node) as c:
            assert c.get("/readyz").status_code == 200, c.get("/readyz").text
            before = c.get("/metrics").text
        storescu(node.port, files)
        stow_ds = chest_copy(chest_cr_path)
        r = stow(node, stow_ds)
        assert r.status_code == 200, r.text
        jobs = wait_all_done(node, 11, timeout=300)
        assert len(jobs) == 11

        with api(node) as c:
            listed = c.get("/jobs", params={"state": "done", "limit": 50}).json()
            assert len(listed["jobs"]) == 11 and listed["counts"]["done"] == 11
            after = c.get("/metrics").text
            one = c.get(f"/jobs/{listed['jobs'][0]['id']}").json()
        assert set(one["output_uids"]) == {"counterfactual", "seg", "fseg", "pmap", "overlay"}
        assert one["timings"]["edit_s"] > 0
        for job in jobs:
            folder = node.var_dir / "results" / str(job["id"])
            assert sorted(p.name for p in folder.glob("*.dcm")) == RESULT_FILES
            assert (folder / "overlay.png").is_file()

        # STOW-RS instance: a job exactly like the C-STORE ones, but from the web
        # (through the running node's study tracker: same quiet period, same request rules).
        # HTTP has no AE titles: the STOW job's calling AE is empty and its origin says "stow".
        by_sender = {j["calling_ae"]: j for j in jobs}
        assert set(by_sender) == {"STORESCU", None}
        stow_job, dimse_job = by_sender[None], by_sender["STORESCU"]
        assert stow_job["sop_instance_uid"] == stow_ds.SOPInstanceUID
        assert stow_job["study_instance_uid"] == stow_ds.StudyInstanceUID
        for field in ("instruction", "seed", "params", "model_hash", "state", "called_ae"):
            assert stow_job[field] == dimse_job[field], field
        assert (stow_job["origin"], dimse_job["origin"]) == ("stow", "dimse")
        assert [j["calling_ae"] for j in jobs].count("STORESCU") == 10

        # metrics moved with the work
        assert metric(before, "x2x_jobs", 'state="done"') == 0
        assert metric(after, "x2x_jobs", 'state="done"') == 11
        assert metric(after, "x2x_edit_seconds_count") == 11 and metric(after, "x2x_edit_seconds_sum") > 0
        assert metric_sum(after, "x2x_instances_received_total") - metric_sum(
            before, "x2x_instances_received_total") == 11
        assert metric(after, "x2x_studies_completed_total") - metric(before, "x2x_studies_completed_total") >= 11
        assert metric(after, "x2x_queue_depth") == 0

        # dashboard in headless Chromium: rows in the DOM, a screenshot (the token link sets the read-only
        # cookie and redirects to the page; its script and previews then read with that cookie)
        url = f"http://127.0.0.1:{node.api_port}/?token={token(node)}"
        dom = chromium(tmp_path, url, "--dump-dom").stdout.decode()
        rows = re.findall(r'<tr class="job" data-job-id="(\d+)" data-state="(\w[\w-]*)"', dom)
        assert len(rows) == 11 and {state for _, state in rows} == {"done"}
        assert dom.count("SYNTHETIC") >= 22
        assert dom.count('/previews/counterfactual.png') == 11
        shot = tmp_path / "dashboard.png"
        chromium(tmp_path, url, f"--screenshot={shot}")
        from PIL import Image

        with Image.open(shot) as im:
            assert im.size == (1280, 900)
            assert len(set(im.convert("L").resize((64, 64)).getdata())) > 20, "screenshot is blank"


# --- scale-out: redis + two x2x worker processes ----------------------------------------------------------
def start_worker(
    node: NodeProcess, tmp_path: Path, name: str, **env: str
) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / f"{name}.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([X2X, "-c", str(node.config_path), "worker", "--hostname", f"{name}@test"],
                                stdout=fh, stderr=subprocess.STDOUT, env=node.env | env, start_new_session=True)
    return proc, log


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def wait_workers(node: NodeProcess, n: int, logs: list[Path], timeout: float = 90) -> None:
    try:
        node.wait_for(lambda: len(node._rows("SELECT * FROM workers")) >= n, timeout, f"{n} worker(s) registered")
        # a worker registers once its consumers listen (jobs/sweeper.py); Celery's "<hostname> ready." line
        # says the same from the worker's side
        node.wait_for(lambda: all(re.search(r"@test ready\.", log.read_text(errors="replace")) for log in logs),
                      timeout, "every worker's edit stage consuming")
    except AssertionError as e:  # the node's log says nothing about workers: show theirs
        tails = "".join(f"\n--- {log.name}:\n" + log.read_text(errors="replace")[-3000:] for log in logs)
        raise AssertionError(f"{e}{tails}") from None


def claims(logs: list[Path]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for log in logs:
        out[log.stem] = [int(m) for m in re.findall(r"job (\d+) claimed by", log.read_text(errors="replace"))]
    return out


def test_redis_scale_out_two_workers_20_jobs_each_done_exactly_once(
    tmp_path: Path, chest_cr_path: Path, fast_model_dir: Path
) -> None:
    files = write_chest_copies(chest_cr_path, tmp_path / "in", 20, PatientName=PATIENT_NAME, PatientID=PATIENT_ID)
    with redis_server(tmp_path) as url:
        toml = NODE_TOML + f'[queue]\nbroker_url = "{url}/0"\nresult_backend = "{url}/1"\nembedded_worker = false\n'
        with run_node(tmp_path, toml, model_dir=fast_model_dir) as node:
            workers = [start_worker(node, tmp_path, f"worker{i}", X2X_LOGGING__JSON_FORMAT="true") for i in (1, 2)]
            try:
                wait_workers(node, 2, [log for _, log in workers])
                status = subprocess.run([X2X, "-c", str(node.config_path), "status", "--json"], env=node.env,
                                        capture_output=True, timeout=60)
                assert status.returncode == 0, status.stderr.decode()
                info = json.loads(status.stdout)
                assert info["queue"]["broker_reachable"] is True and len(info["workers"]["live"]) == 2
                storescu(node.port, files)
                jobs = wait_all_done(node, 20, timeout=400)
            finally:
                for proc, _ in workers:
                    stop_process(proc)
            per_worker = claims([log for _, log in workers])
            all_claims = sorted(per_worker["worker1"] + per_worker["worker2"])
            assert all_claims == sorted(j["id"] for j in jobs), f"each job claimed exactly once: {per_worker}"
            assert per_worker["worker1"] and per_worker["worker2"], f"both workers worked: {per_worker}"
            assert "claimed by" not in node.log_text(), "serve ran no worker (embedded_worker = false)"
            for job in jobs:
                assert sorted(p.name for p in (node.var_dir / "results" / str(job["id"])).glob("*.dcm")) \
                    == RESULT_FILES
            # structured logs: every worker line is one JSON object; no patient name or ID anywhere
            for _, log in workers:
                lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
                assert lines
                not_json = [ln for ln in lines if not ln.startswith("{")]
                assert not not_json, not_json[:5]
                assert all(json.loads(ln)["level"] for ln in lines)
            for text in [log.read_text() for _, log in workers] + [node.log_text()]:
                assert PATIENT_NAME.split("^")[0] not in text and PATIENT_ID not in text


# --- restart safety ------------------------------------------------------------------------------------
def test_sigkill_worker_mid_edit_then_new_worker_completes_job_once(
    tmp_path: Path, chest_cr_path: Path, fast_model_dir: Path
) -> None:
    # Many steps so that the edit lasts long enough (seconds) to be killed in the middle.
    src = write_chest_copies(chest_cr_path, tmp_path / "in", 1)[0]
    toml = NODE_TOML.replace("steps = 1", "steps = 40") + "[queue]\nembedded_worker = false\n"
    with run_node(tmp_path, toml, model_dir=fast_model_dir) as node:
        first, first_log = start_worker(node, tmp_path, "victim")
        wait_workers(node, 1, [first_log])
        storescu(node.port, [src])
        node.wait_for(lambda: [j for j in node.jobs() if j["state"] == "editing"], 120, "the job to be editing")
        time.sleep(0.5)
        assert node.jobs()[0]["state"] == "editing", "edit finished too fast to test a kill mid-edit"
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
        job_id = node.jobs()[0]["id"]
        assert node.jobs()[0]["state"] == "editing"  # orphaned: nobody will finish it by itself
        second, second_log = start_worker(node, tmp_path, "rescuer")
        try:
            jobs = wait_all_done(node, 1, timeout=300)
        finally:
            stop_process(second)
        assert len(jobs) == 1 and jobs[0]["id"] == job_id
        text = second_log.read_text()
        assert f"recovering job {job_id}" in text and f"job {job_id} claimed by" in text
        assert sorted(p.name for p in (node.var_dir / "results" / str(job_id)).glob("*.dcm")) == RESULT_FILES
        assert not list((node.var_dir / "results" / str(job_id)).glob("*.tmp")), "no half-written outputs left"


def test_sigkill_whole_node_mid_edit_restart_completes_job_once(
    tmp_path: Path, chest_cr_path: Path, fast_model_dir: Path
) -> None:
    files = write_chest_copies(chest_cr_path, tmp_path / "in", 2)
    toml = NODE_TOML.replace("steps = 1", "steps = 40")
    var_dir = tmp_path / "node-var"
    with run_node(tmp_path, toml, model_dir=fast_model_dir, var_dir=var_dir) as node:
        storescu(node.port, files)
        node.wait_for(lambda: [j for j in node.jobs() if j["state"] == "editing"], 120, "a job to be editing")
        node.kill()  # SIGKILL: SCP, API and embedded worker die together
    states = {j["id"]: j["state"] for j in node.jobs()}
    assert "editing" in states.values() and "done" not in states.values(), states
    with run_node(tmp_path, toml, model_dir=fast_model_dir, var_dir=var_dir) as restarted:
        jobs = wait_all_done(restarted, 2, timeout=300)
        assert "recovering job" in restarted.log_text()
    assert len(jobs) == 2
    for job in jobs:
        assert sorted(p.name for p in (var_dir / "results" / str(job["id"])).glob("*.dcm")) == RESULT_FILES

"""Hostile data and failing parts after receipt, through a real `x2x serve` and `x2x worker` (issue 16):
paths from UIDs, one bad instance in a study, a locked database at completion, a job that kills its
worker, an edit that needs too much memory, nesting that reached the spool another way."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pydicom
import pytest
from pynetdicom import AE

from tests.support.chest_copies import chest_copy, low_resolution_model
from tests.support.hostile import node_rss_mb, part10_bytes, replace_bytes, with_nested_sequence
from tests.support.node import NodeProcess, run_node

pytestmark = pytest.mark.integration

X2X = str(Path(sys.executable).with_name("x2x"))
INSTRUCTION = "Add the finding of pleural effusion."


@pytest.fixture(scope="module")
def fast_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return low_resolution_model(tiny_model_dir, tmp_path_factory.mktemp("models") / "tiny128")


def _send(port: int, paths: list[Path], called_ae: str = "X2X") -> list[int]:
    """C-STORE each file's data set byte for byte (pynetdicom's chunked send: no decode, no re-encode)."""
    from pynetdicom import _config

    metas = [pydicom.filereader.read_file_meta_info(p) for p in paths]
    ae = AE(ae_title="PYSCU")
    for cx in {(str(m.MediaStorageSOPClassUID), str(m.TransferSyntaxUID)) for m in metas}:
        ae.add_requested_context(*cx)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    assert assoc.is_established
    chunked, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
    try:
        statuses = []
        for p in paths:
            rsp = assoc.send_c_store(p)
            # an empty response: no answer within the DIMSE timeout, or the association ended; say which
            state = "aborted" if assoc.is_aborted else "established" if assoc.is_established else "ended"
            assert "Status" in rsp, f"no C-STORE response for {p.name} (after {statuses}; association {state})"
            statuses.append(int(rsp.Status))
        return statuses
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
        assoc.release()


def _write(ds: pydicom.Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _wait_final(node: NodeProcess, n: int, timeout: float) -> list[dict]:
    final = ("done", "failed", "dead-letter")
    return node.wait_for(lambda: (j := node.jobs()) and len(j) >= n and all(x["state"] in final for x in j) and j,
                         timeout, f"{n} job(s) finished")


def test_folder_destination_stays_inside_for_hostile_study_uids(tmp_path, fast_model_dir, chest_cr_path):
    """main built the folder path from the source's Study Instance UID: `../../X` or an absolute path
    wrote the five objects outside the destination folder, and the job ended done."""
    share = tmp_path / "share"
    cfg = f"""
[requests]
default_instruction = "{INSTRUCTION}"
[edit]
steps = 1
[destinations.share]
type = "folder"
path = "{share}"
[send]
default_destination = "share"
"""
    absolute = Path(f"/tmp/x2x-escape-{os.getpid()}")  # a UID is at most 64 characters
    hostile = ["../../escaped-study", str(absolute)]
    files = [_write(chest_copy(chest_cr_path, factor=8, study_uid=uid), tmp_path / "in" / f"{i}.dcm")
             for i, uid in enumerate(hostile)]
    before = {p for p in tmp_path.parent.rglob("*.dcm")}
    try:
        with run_node(tmp_path, cfg, model_dir=fast_model_dir) as node:
            assert _send(node.port, files) == [0, 0]
            jobs = _wait_final(node, 2, 240)
            assert [j["state"] for j in jobs] == ["done", "done"], [(j["state"], j["last_error"]) for j in jobs]
        assert not absolute.exists(), "wrote under the absolute path a UID named"
    finally:
        shutil.rmtree(absolute, ignore_errors=True)
    written = {p for p in tmp_path.parent.rglob("*.dcm")} - before
    outside = [p for p in written if not any(p.is_relative_to(d) for d in (share, node.var_dir, tmp_path / "in"))]
    assert outside == [], outside
    delivered = list(share.rglob("*.dcm"))
    assert len(delivered) == 10
    assert all(p.resolve().is_relative_to(share.resolve()) for p in delivered)
    from dicom_node.inbound.spool import safe_name

    assert {p.relative_to(share).parts[0] for p in delivered} == {safe_name(uid) for uid in hostile}


def _unknown_vr_view_position(src: Path, dst: Path, study: str) -> Path:
    ds = chest_copy(src, factor=8, study_uid=study)
    ds.ViewPosition = "PA"
    _write(ds, dst)
    replace_bytes(dst, b"\x18\x00\x01\x51CS\x02\x00PA", b"\x18\x00\x01\x51ZZ\x02\x00PA")
    return dst


def _bad_samples_per_pixel(src: Path, dst: Path, study: str) -> Path:
    ds = chest_copy(src, factor=8, study_uid=study)
    _write(ds, dst)
    replace_bytes(dst, b"\x28\x00\x02\x00US\x02\x00\x01\x00", b"\x28\x00\x02\x00IS\x02\x00x!")
    return dst


def test_one_bad_instance_does_not_block_its_study(tmp_path, tiny_model_dir, chest_cr_path):
    """An unknown VR at View Position or a Samples per Pixel that is no number raised outside the
    per-instance handling on main: the study went to "error" and no other instance became a job."""
    study = pydicom.uid.generate_uid()
    good = [_write(chest_copy(chest_cr_path, factor=8, study_uid=study), tmp_path / "in" / f"good{i}.dcm")
            for i in range(6)]
    bad = [_unknown_vr_view_position(chest_cr_path, tmp_path / "in" / "vr.dcm", study),
           _bad_samples_per_pixel(chest_cr_path, tmp_path / "in" / "spp.dcm", study)]
    cfg = f'[requests]\ndefault_instruction = "{INSTRUCTION}"\n[queue]\nembedded_worker = false\n'
    with run_node(tmp_path, cfg, model_dir=tiny_model_dir) as node:
        assert _send(node.port, [good[0], bad[0], *good[1:3], bad[1], *good[3:]]) == [0] * 8
        node.wait_for(lambda: len(node.study_instances()) >= 8, 60, "every instance recorded")
        jobs = node.wait_for(lambda: len(j := node.jobs()) >= 6 and j, 30, "a job per good instance")
        assert len(jobs) == 6
        reasons = {r["reason"] for r in node.study_instances() if r["status"] != "job"}
        assert any("ViewPosition cannot be read" in r for r in reasons), reasons
        assert any("SamplesPerPixel" in r for r in reasons), reasons
        (row,) = [s for s in node.studies() if s["study_instance_uid"] == study]
        assert row["state"] == "processed" and row["jobs_created"] == 6 and row["skipped_count"] == 2


def _hold_write_lock(db: Path, seconds: float) -> threading.Thread:
    ready = threading.Event()

    def hold() -> None:
        con = sqlite3.connect(db, isolation_level=None, timeout=30)
        con.execute("BEGIN IMMEDIATE")  # the write lock; WAL readers (the API) still read
        ready.set()
        time.sleep(seconds)
        con.execute("COMMIT")
        con.close()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert ready.wait(30)
    return thread


@pytest.mark.slow
def test_a_locked_database_at_completion_delays_the_study_never_drops_it(tmp_path, tiny_model_dir, chest_cr_path):
    """main, default settings: a write lock held for 70 s (past SQLite's 30 s busy timeout, twice) during
    completion took the study off the pending list; its writes failed on the lock and it was never
    processed, not even once the lock was gone (the instance had been answered Success). Now the writes
    retry and the job appears once the database is free."""
    cfg = f'[requests]\ndefault_instruction = "{INSTRUCTION}"\n[queue]\nembedded_worker = false\n'
    src = _write(chest_copy(chest_cr_path, factor=8), tmp_path / "in" / "cr.dcm")
    with run_node(tmp_path, cfg, model_dir=tiny_model_dir) as node:
        holder = _hold_write_lock(node.db_path, 70)
        assert _send(node.port, [src]) == [0]
        holder.join()
        jobs = node.wait_for(lambda: node.jobs(), 120, "the study's job after the lock is gone")
        assert len(jobs) == 1
        assert node.proc.poll() is None


def test_a_failing_completion_is_retried_and_shown_in_studies(tmp_path, tiny_model_dir, chest_cr_path):
    cfg = f"""
[requests]
default_instruction = "{INSTRUCTION}"
[queue]
embedded_worker = false
[database]
busy_timeout_seconds = 0.3
lock_retry_seconds = 0.5
"""
    ds = chest_copy(chest_cr_path, factor=8)
    src = _write(ds, tmp_path / "in" / "cr.dcm")
    with run_node(tmp_path, cfg, model_dir=tiny_model_dir) as node, \
            httpx.Client(base_url=f"http://127.0.0.1:{node.api_port}", timeout=30,
                         headers={"Authorization": f"Bearer {(node.var_dir / 'api-token').read_text().strip()}"}) as c:
        holder = _hold_write_lock(node.db_path, 8)
        assert _send(node.port, [src]) == [0]

        def shown() -> dict | None:
            rows = [s for s in c.get("/studies").json()["studies"] if s["study_instance_uid"] == ds.StudyInstanceUID]
            return rows[0] if rows and rows[0].get("state") == "retrying" else None

        row = node.wait_for(shown, 20, "the study shown as retrying")
        assert "locked" in row["completion_error"] and row["completion_attempts"] >= 1
        assert c.get(f"/studies/{ds.StudyInstanceUID}").json()["state"] == "retrying"
        holder.join()
        node.wait_for(lambda: node.jobs(), 60, "the job once the database is free")
        node.wait_for(lambda: c.get(f"/studies/{ds.StudyInstanceUID}").json()["state"] == "processed", 20,
                      "the study processed")
        assert "completion failed (attempt 1), retrying" in node.log_text()


def _start_worker(node: NodeProcess, tmp_path: Path, name: str, **env: str) -> subprocess.Popen[bytes]:
    log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - handed to the child
    return subprocess.Popen([X2X, "-c", str(node.config_path), "worker", "--hostname", f"{name}@test"],
                            stdout=log, stderr=subprocess.STDOUT, env=node.env | env, start_new_session=True)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


@pytest.mark.slow
def test_a_job_whose_worker_dies_twice_is_quarantined(tmp_path, fast_model_dir, chest_cr_path):
    """main requeued an orphaned job every time its worker died, so a job that kills workers killed the
    next one, and the next (with the embedded worker: the node). Now the second death dead-letters it."""
    cfg = f"""
[requests]
default_instruction = "{INSTRUCTION}"
[edit]
steps = 30
[queue]
embedded_worker = false
lease_seconds = 3
sweep_interval_seconds = 1
"""
    src = _write(chest_copy(chest_cr_path, factor=8), tmp_path / "in" / "cr.dcm")
    with run_node(tmp_path, cfg, model_dir=fast_model_dir) as node:
        assert _send(node.port, [src]) == [0]
        node.wait_for_jobs(1)
        for death in (1, 2):
            worker = _start_worker(node, tmp_path, f"victim{death}")
            log = tmp_path / f"victim{death}.log"
            node.wait_for(lambda: "claimed by" in log.read_text(errors="replace"), 120,  # noqa: B023
                          f"worker {death} to claim the job")
            time.sleep(1.0)
            assert node.jobs()[0]["state"] == "editing"
            _kill(worker)  # the worker dies with the job (as an OOM kill or a crash in a library would)
        rescuer = _start_worker(node, tmp_path, "third")
        try:
            job = node.wait_for(lambda: (j := node.jobs()[0])["state"] == "dead-letter" and j, 90, "quarantine")
        finally:
            os.killpg(rescuer.pid, signal.SIGTERM)
            rescuer.wait(30)
        assert "quarantined: its worker died 2 times while it was editing" in job["last_error"]
        assert job["requeues"] == 2


@pytest.mark.slow
def test_an_edit_over_the_memory_limit_fails_its_job_not_the_worker(tmp_path, fast_model_dir, chest_cr_path):
    """main ran every edit inside the worker with no bound (with the embedded worker, inside the node).
    Now the edit runs in a child under RLIMIT_DATA: a 6000 x 6000 radiograph that needs more than the
    limit fails its job with the reason, the next job is edited, and the node never grows past it."""
    import numpy as np

    limit_mb = 1100
    cfg = f"""
[requests]
default_instruction = "{INSTRUCTION}"
[edit]
steps = 1
[queue]
edit_memory_limit_mb = {limit_mb}
"""
    big = chest_copy(chest_cr_path, factor=1)
    tile = big.pixel_array
    pixels = np.ascontiguousarray(np.tile(tile, (4, 4))[:6000, :6000])
    big.Rows, big.Columns = pixels.shape
    big.PixelData = pixels.tobytes()
    files = [_write(big, tmp_path / "in" / "big.dcm"), _write(chest_copy(chest_cr_path, factor=8),
                                                              tmp_path / "in" / "small.dcm")]
    with run_node(tmp_path, cfg, model_dir=fast_model_dir, address_space_mb=6000) as node:
        time.sleep(2)
        peak, stop = [node_rss_mb(node.proc.pid)], threading.Event()

        def watch() -> None:
            while not stop.wait(0.05):
                peak.append(node_rss_mb(node.proc.pid))

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        assert _send(node.port, files[:1]) == [0]
        failed = node.wait_for(lambda: (j := node.jobs()) and j[0]["state"] in ("failed", "done") and j[0], 300,
                               "the big job")
        assert _send(node.port, files[1:]) == [0]
        jobs = _wait_final(node, 2, 300)
        stop.set()
        watcher.join()
    assert failed["state"] == "failed", failed
    assert "queue.edit_memory_limit_mb" in failed["last_error"], failed["last_error"]
    assert jobs[1]["state"] == "done", jobs[1]
    print(f"node + edit process peak RSS {max(peak):.0f} MB (edit limit {limit_mb} MB)")
    assert max(peak) < limit_mb + 600, max(peak)


def test_nesting_that_reached_the_spool_another_way_is_refused_at_intake(tmp_path, tiny_model_dir, chest_cr_path):
    """A spool written before the bounds existed (or by hand): the intake walks each file before pydicom
    reads it, records the bomb as unreadable with the reason, and the study's other instance gets its job."""
    from dicom_node.config import load_settings
    from dicom_node.context import build_context
    from dicom_node.inbound.spool import Spool
    from dicom_node.studies.intake import create_jobs_for_study
    from dicom_node.studies.records import study_instances

    ctx = build_context(load_settings(paths={"var_dir": tmp_path / "var"}, model={"path": tiny_model_dir},
                                      requests={"default_instruction": INSTRUCTION}, queue={"embedded_worker": False}))
    study = pydicom.uid.generate_uid()
    ok, bomb_ds = chest_copy(chest_cr_path, factor=8, study_uid=study), chest_copy(chest_cr_path, factor=8,
                                                                                   study_uid=study)
    bomb = with_nested_sequence(bomb_ds, tmp_path / "bomb.dcm", 500)
    spool = Spool(ctx.settings.spool_dir)
    for ds, raw in ((ok, part10_bytes(ok)), (bomb_ds, bomb.read_bytes())):
        spool.store(raw, study_uid=study, series_uid=ds.SeriesInstanceUID, sop_uid=ds.SOPInstanceUID)
    out = create_jobs_for_study(ctx, study, called_ae=ctx.settings.node.ae_title)
    assert len(out.created_jobs) == 1
    rows = {r.sop_instance_uid or Path(r.path).stem: r for r in study_instances(ctx.db, study)}
    assert rows[bomb_ds.SOPInstanceUID].status == "unreadable"
    assert "nested more than 32 deep" in rows[bomb_ds.SOPInstanceUID].reason


def test_a_source_nested_deeper_than_the_copy_limit_is_not_copied_into_outputs(chest_cr_path):
    """pydicom re-wraps a write error with the whole traceback at each level (~2.6x per level): the
    outputs copy at most COPY_DEPTH_LIMIT levels of a source, refusing deeper ones with a reason."""
    from pydicom.sequence import Sequence

    from dicom_node.results.geometry import COPY_DEPTH_LIMIT, check_copy_depth, metadata_copy

    ds = chest_copy(chest_cr_path, factor=8)
    inner = pydicom.Dataset()
    inner.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    for _ in range(COPY_DEPTH_LIMIT + 1):
        outer = pydicom.Dataset()
        outer.ReferencedStudySequence = Sequence([inner])
        inner = outer
    ds.ReferencedStudySequence = inner.ReferencedStudySequence
    with pytest.raises(ValueError, match=f"more than {COPY_DEPTH_LIMIT} deep"):
        metadata_copy(ds)
    ds.ReferencedStudySequence = inner.ReferencedStudySequence[0].ReferencedStudySequence
    check_copy_depth(ds)  # exactly the limit: copied
    assert "ReferencedStudySequence" in metadata_copy(ds)


@pytest.mark.slow
def test_stopping_the_node_mid_edit_requeues_the_job_without_counting_a_death(tmp_path, fast_model_dir,
                                                                              chest_cr_path):
    """With edits in a child process, a clean stop (SIGTERM) in the middle of an edit must neither fail
    the job nor count towards its quarantine: it goes back on the queue and the next start does it.
    (The edit, 900 steps, outlasts the 2 s the stopping node gives it: queue.stop_timeout_seconds.)"""
    cfg = f"""
[requests]
default_instruction = "{INSTRUCTION}"
[edit]
steps = 900
[queue]
stop_timeout_seconds = 2
"""
    src = _write(chest_copy(chest_cr_path, factor=8), tmp_path / "in" / "cr.dcm")
    var_dir = tmp_path / "node-var"
    with run_node(tmp_path, cfg, model_dir=fast_model_dir, var_dir=var_dir) as node:
        assert _send(node.port, [src]) == [0]
        node.wait_for(lambda: (j := node.jobs()) and j[0]["state"] == "editing", 120, "the job editing")
        time.sleep(1.0)
        assert node.stop(timeout=90) == 0
        (job,) = node.jobs()
        assert job["state"] == "queued" and job["requeues"] == 0 and not job["last_error"], job
        assert "put back on the queue: the worker is stopping" in node.log_text()
    with run_node(tmp_path, cfg, model_dir=fast_model_dir, var_dir=var_dir, port=node.port) as again:
        (job,) = _wait_final(again, 1, 300)
        assert job["state"] == "done" and job["requeues"] == 0, job


def test_an_overlong_instruction_in_an_instance_is_refused_with_a_reason(tmp_path, tiny_model_dir, chest_cr_path):
    """A 100 kB instruction in the INSTRUCTX2X block (main parsed and stored it): the instance is recorded
    as an invalid request naming the limit; nothing is edited."""
    from dicom_node.config import load_settings
    from dicom_node.context import build_context
    from dicom_node.inbound.spool import Spool
    from dicom_node.studies.intake import create_jobs_for_study
    from dicom_node.studies.records import study_instances
    from dicom_node.studies.requests import write_private_block

    ctx = build_context(load_settings(paths={"var_dir": tmp_path / "var"}, model={"path": tiny_model_dir},
                                      queue={"embedded_worker": False}))
    ds = chest_copy(chest_cr_path, factor=8)
    write_private_block(ds, "Add the finding of " + "pleural effusion and " * 5000 + "edema.")
    Spool(ctx.settings.spool_dir).store(part10_bytes(ds), study_uid=ds.StudyInstanceUID,
                                        series_uid=ds.SeriesInstanceUID, sop_uid=ds.SOPInstanceUID)
    out = create_jobs_for_study(ctx, ds.StudyInstanceUID, called_ae="X2X")
    assert out.created_jobs == [] and out.state == "invalid-request"
    (row,) = study_instances(ctx.db, ds.StudyInstanceUID)
    assert row.status == "invalid-request" and "requests.max_instruction_chars" in row.reason
    assert len(row.reason) < 2000

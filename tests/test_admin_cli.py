"""`x2x status` and `x2x jobs list|show|cancel` against a real job database and the embedded broker;
the lease sweep that recovers jobs whose worker is gone."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dicom_node.config import load_settings
from dicom_node.context import build_context
from dicom_node.db.tables import JobLease, utcnow
from dicom_node.jobs import leases
from dicom_node.jobs.states import JobState
from tests.support.jobs import create_job

EDITING, QUEUED = JobState.EDITING.value, JobState.QUEUED.value

X2X = str(Path(sys.executable).with_name("x2x"))


@pytest.fixture
def var_dir(tmp_path: Path) -> Path:
    return tmp_path / "var"


@pytest.fixture
def ctx(var_dir: Path):
    return build_context(load_settings(paths={"var_dir": var_dir}))


def _job(ctx, n: int, **fields):
    return create_job(
        ctx, idempotency_key=f"key-{n}", study_instance_uid="1.2.3", sop_instance_uid=f"1.2.3.{n}",
        source_path=f"/nowhere/{n}.dcm", instruction="Add the finding of pleural effusion.", **fields,
    )


def x2x(var_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, X2X_PATHS__VAR_DIR=str(var_dir))
    env.pop("X2X_CONFIG", None)
    return subprocess.run([X2X, *args], capture_output=True, text=True, env=env, timeout=120)


def test_jobs_list_show_cancel_and_status(ctx, var_dir: Path) -> None:
    a = _job(ctx, 1, state=QUEUED)
    b = _job(ctx, 2, state="done")
    r = x2x(var_dir, "jobs", "list", "--json")
    assert r.returncode == 0, r.stderr
    assert [j["id"] for j in json.loads(r.stdout)] == [b.id, a.id]
    r = x2x(var_dir, "jobs", "list", "--state", "queued")
    assert r.returncode == 0 and f"{a.id:>6}  queued" in r.stdout and "done" not in r.stdout
    assert x2x(var_dir, "jobs", "list", "--state", "nope").returncode == 2
    shown = json.loads(x2x(var_dir, "jobs", "show", str(a.id)).stdout)
    assert shown["sop_instance_uid"] == "1.2.3.1" and shown["state"] == "queued"
    assert x2x(var_dir, "jobs", "show", "999").returncode == 1

    r = x2x(var_dir, "jobs", "cancel", str(a.id))
    assert r.returncode == 0 and ctx.store.get(a.id).state == "cancelled"
    r = x2x(var_dir, "jobs", "cancel", str(b.id))
    assert r.returncode == 1 and "is done" in r.stderr and ctx.store.get(b.id).state == "done"

    r = x2x(var_dir, "status", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["queue"]["broker_reachable"] is True
    assert info["queue"]["broker"].startswith("sqla+sqlite:///")
    assert info["jobs"]["cancelled"] == 1 and info["jobs"]["done"] == 1 and info["queue"]["depth"] == 0
    assert info["workers"]["live"] == []
    plain = x2x(var_dir, "status")
    assert plain.returncode == 0 and "workers  0 live" in plain.stdout


def test_claim_is_atomic_and_sweep_recovers_only_orphaned_jobs(ctx) -> None:
    me = leases.WorkerIdentity.current()
    other = leases.WorkerIdentity("elsewhere", 1)
    job = _job(ctx, 1, state=QUEUED)
    assert leases.claim(ctx.store, job.id, me) is True
    assert leases.claim(ctx.store, job.id, other) is False, "a second delivery must not run the job again"
    assert ctx.store.get(job.id).state == EDITING
    lease_s = 30.0
    # a fresh lease held by a live process: not recoverable
    assert job.id not in leases.recoverable_jobs(ctx.store, lease_seconds=lease_s, requeue_queued_after=900)
    assert leases.requeue_in_progress(ctx.store, job.id, lease_seconds=lease_s) is False
    # the holder on this host is dead (a pid that does not exist): recoverable at once
    dead = leases.WorkerIdentity(me.hostname, 2**22 + 12345)
    job2 = _job(ctx, 2, state=QUEUED)
    assert leases.claim(ctx.store, job2.id, dead)
    assert job2.id in leases.recoverable_jobs(ctx.store, lease_seconds=lease_s, requeue_queued_after=900)
    assert leases.requeue_in_progress(ctx.store, job2.id, lease_seconds=lease_s) is True
    assert ctx.store.get(job2.id).state == QUEUED
    # a worker on another host that stopped renewing: recoverable once the lease is stale
    job3 = _job(ctx, 3, state=QUEUED)
    assert leases.claim(ctx.store, job3.id, other)
    assert job3.id not in leases.recoverable_jobs(ctx.store, lease_seconds=lease_s, requeue_queued_after=900)
    with ctx.db.session() as s:
        s.get(JobLease, job3.id).heartbeat_at = utcnow() - dt.timedelta(seconds=lease_s + 1)
    assert job3.id in leases.recoverable_jobs(ctx.store, lease_seconds=lease_s, requeue_queued_after=900)
    assert leases.requeue_in_progress(ctx.store, job3.id, lease_seconds=lease_s) is True
    # a delayed retry is not claimed before its time
    job4 = _job(ctx, 4, state=QUEUED, next_attempt_at=utcnow() + dt.timedelta(seconds=60))
    assert leases.claim(ctx.store, job4.id, me) is False


# Each process waits for a common instant, then opens a new database: 6 databases, 0.5 s apart.
_CREATE_AT = """
import sys, time
from pathlib import Path
from dicom_node.config import load_settings
from dicom_node.context import build_context
root, start = Path(sys.argv[1]), float(sys.argv[2])
for k in range(6):
    settings = load_settings(paths={"var_dir": root / str(k)})
    time.sleep(max(0.0, start + 0.5 * k - time.time()))
    build_context(settings)
"""


def test_processes_starting_together_on_a_new_database_all_get_its_tables(tmp_path: Path) -> None:
    # Two `x2x worker`s started at once on a fresh database once raced in CREATE TABLE and one died
    # with "table job_leases already exists".
    start_at = f"{time.time() + 4:.3f}"
    procs = [subprocess.Popen([sys.executable, "-c", _CREATE_AT, str(tmp_path), start_at],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(8)]
    outputs = [p.communicate(timeout=120)[0].decode() for p in procs]
    failed = [out[-1500:] for p, out in zip(procs, outputs, strict=True) if p.returncode != 0]
    assert not failed, f"{len(failed)} of 8 processes failed:\n{failed[0]}"
    for k in range(6):
        ctx = build_context(load_settings(paths={"var_dir": tmp_path / str(k)}))
        with ctx.db.engine.connect() as conn:
            names = {row[0] for row in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"jobs", "job_leases", "workers", "studies", "study_instances"} <= names, names

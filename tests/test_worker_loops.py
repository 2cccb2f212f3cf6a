"""Each stage of a worker process hears its own queue on an asynchronous broker (Redis).

kombu keeps one event loop per process and Celery hands it to every WorkController it builds on Redis or
AMQP; two stages driving it from two threads could leave a whole `x2x worker` deaf to both queues (the
scale-out test saw a worker "ready" that never received a message). Celery apps are module globals, so
the controllers are built in a child process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.redis import redis_server, redis_server_on

X2X = str(Path(sys.executable).with_name("x2x"))

pytestmark = pytest.mark.integration

_BUILD_CONTROLLERS = textwrap.dedent("""
    import json, sys
    from celery.worker import WorkController
    from kombu.asynchronous import get_event_loop, set_event_loop
    from dicom_node.config import load_settings
    from dicom_node.context import build_context
    from dicom_node.jobs import worker

    url = sys.argv[2]
    ctx = build_context(load_settings(paths={"var_dir": sys.argv[1]},
                                      queue={"broker_url": url + "/0", "result_backend": url + "/1"}))
    worker._prepare(ctx)
    plain = [WorkController(app=worker._app(s), pool="solo", queues=[worker._queue(ctx, s)], without_heartbeat=True,
                            without_mingle=True, without_gossip=True) for s in worker.STAGES]
    set_event_loop(None)
    ours = [worker._ThreadedController(ctx, s, s + "@loops") for s in worker.STAGES]
    print(json.dumps({
        "plain_share_one_loop": plain[0].hub is not None and plain[0].hub is plain[1].hub,
        "ours_use_a_loop": [c.controller.use_eventloop for c in ours],
        "ours_hubs": [repr(c.controller.hub) for c in ours],
        "process_loop_left_free": get_event_loop() is None,
    }))
""")


def test_stage_controllers_in_threads_do_not_share_the_process_event_loop(tmp_path: Path) -> None:
    with redis_server(tmp_path) as url:
        out = subprocess.run([sys.executable, "-c", _BUILD_CONTROLLERS, str(tmp_path / "var"), url],
                             capture_output=True, timeout=120, cwd=Path(__file__).parent.parent)
    assert out.returncode == 0, out.stderr.decode()[-3000:]
    found = json.loads(out.stdout.decode().strip().splitlines()[-1])
    # Celery's own behaviour, the reason for the override (if this changes, the override is moot)
    assert found["plain_share_one_loop"] is True
    assert found["ours_use_a_loop"] == [False, False], found
    assert found["ours_hubs"] == ["None", "None"], found
    assert found["process_loop_left_free"] is True


def test_one_worker_process_answers_both_stage_queues_on_redis(tmp_path: Path) -> None:
    """`x2x worker` (edit stage in the main thread on the event loop, delivery stage in a thread) takes
    messages from both queues; for jobs it does not know each stage says so and returns."""
    from celery import Celery

    with redis_server(tmp_path) as url:
        config = tmp_path / "x2x.toml"
        config.write_text(f'[paths]\nvar_dir = "{tmp_path / "var"}"\n'
                          f'[queue]\nbroker_url = "{url}/0"\nresult_backend = "{url}/1"\nembedded_worker = false\n')
        log = tmp_path / "worker.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen([X2X, "-c", str(config), "worker", "--hostname", "both@loops"], stdout=fh,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        client = Celery("loops-client", broker=f"{url}/0", backend=f"{url}/1")
        try:
            from dicom_node.jobs.queue import DELIVER_TASK, EDIT_TASK

            sent = [client.send_task(EDIT_TASK, args=(900 + i,), queue="x2x") for i in range(4)]
            sent += [client.send_task(DELIVER_TASK, args=(950 + i,), queue="x2x-deliver") for i in range(4)]
            answers = [r.get(timeout=120) for r in sent]
        except Exception as exc:
            raise AssertionError(f"{exc!r}\n--- worker log:\n{log.read_text(errors='replace')[-3000:]}") from None
        finally:
            client.close()
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                stopped: int | None = proc.wait(30)
            except subprocess.TimeoutExpired:
                stopped = None
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
    assert stopped is not None, "the worker did not stop within 30 s of SIGTERM (warm shutdown)"
    assert [a["job_id"] for a in answers] == [900, 901, 902, 903, 950, 951, 952, 953]
    assert all(a["claimed"] is False for a in answers), answers
    text = log.read_text(errors="replace")
    assert text.count("not taken for claim") == 4 and text.count("not taken for send") == 4, text[-3000:]


def _worker_rows(var: Path) -> list[tuple[str, str]]:
    import sqlite3

    db = var / "jobs.sqlite"
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return list(con.execute("SELECT worker_id, kind FROM workers"))
    except sqlite3.OperationalError:  # table not created yet
        return []
    finally:
        con.close()


def test_a_worker_is_live_only_once_its_consumer_listens(tmp_path: Path) -> None:
    """`x2x status` counts the workers table as live workers: a worker whose broker is down is not one,
    and it becomes one once the broker is up and its consumer listens."""
    import time

    from tests.conftest import free_port

    port = free_port()  # no broker here yet
    var = tmp_path / "var"
    config = tmp_path / "x2x.toml"
    config.write_text(f'[paths]\nvar_dir = "{var}"\n[queue]\nbroker_url = "redis://127.0.0.1:{port}/0"\n'
                      f'result_backend = "redis://127.0.0.1:{port}/1"\nembedded_worker = false\n'
                      "sweep_interval_seconds = 0.5\n")
    log = tmp_path / "worker.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([X2X, "-c", str(config), "worker", "--hostname", "late@loops"], stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "Cannot connect to redis" not in log.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.2)
        time.sleep(2.0)  # four sweep intervals: a sweeper that registered would have by now
        assert (var / "jobs.sqlite").exists()
        assert _worker_rows(var) == [], "a worker that reaches no broker is listed as live"
        with redis_server_on(tmp_path, port):
            while not _worker_rows(var):  # Celery retries the broker every few seconds
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
                time.sleep(0.2)
            assert re.search(r"late@loops ready\.", log.read_text(errors="replace"))
            assert [kind for _, kind in _worker_rows(var)] == ["worker"]
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(60)
        assert _worker_rows(var) == []  # deregistered at a clean stop
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_consuming_said_at_once_from_many_threads_registers_the_worker_once(tmp_path: Path, caplog) -> None:
    """Registration is written by the sweeper's thread alone: writers racing on the missing row would
    both insert it (the embedded node's start raced the sweeper's first round that way in CI)."""
    import threading
    import time

    from dicom_node.config import load_settings
    from dicom_node.context import build_context
    from dicom_node.jobs import leases
    from dicom_node.jobs.sweeper import Sweeper

    ctx = build_context(load_settings(paths={"var_dir": str(tmp_path / "var")}))
    sweeper = Sweeper(ctx, kind="embedded").start()
    try:
        gate = threading.Barrier(8)
        callers = [threading.Thread(target=lambda: (gate.wait(), sweeper.consuming())) for _ in range(8)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(10)
        deadline = time.monotonic() + 20
        while not leases.live_workers(ctx.store, within_seconds=60):
            assert time.monotonic() < deadline, "the worker was never registered"
            time.sleep(0.05)
        time.sleep(0.5)  # any late writer would have failed by now
        assert [w.kind for w in leases.live_workers(ctx.store, within_seconds=60)] == ["embedded"]
        assert "could not register worker" not in caplog.text
    finally:
        sweeper.stop()
    assert leases.live_workers(ctx.store, within_seconds=60) == []

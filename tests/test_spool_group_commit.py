"""Group commit of the spool's folder fsyncs (inbound/spool.py FolderSync): concurrent stores into one
folder share flushes, and none returns before a flush that began after its rename has finished."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from dicom_node.inbound.spool import FolderSync, Spool


def test_every_sync_waits_for_a_flush_that_started_after_it() -> None:
    flushes: list[tuple[float, float]] = []
    lock = threading.Lock()

    def slow_fsync(_folder: Path) -> None:
        start = time.monotonic()
        time.sleep(0.02)
        with lock:
            flushes.append((start, time.monotonic()))

    sync = FolderSync(slow_fsync)
    calls: list[tuple[float, float]] = []
    barrier = threading.Barrier(16)

    def store(i: int) -> None:
        barrier.wait()
        time.sleep(0.002 * (i % 5))  # renames land while flushes are running
        renamed = time.monotonic()
        sync.sync(Path("/spool/study/series"))
        with lock:
            calls.append((renamed, time.monotonic()))

    threads = [threading.Thread(target=store, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 16
    for renamed, returned in calls:
        assert any(start >= renamed and end <= returned for start, end in flushes), (renamed, returned, flushes)
    assert 1 <= len(flushes) < 16  # shared: fewer flushes than stores
    assert sync.flushes == len(flushes)
    assert not sync._issued and not sync._synced and not sync._waiting  # nothing kept once idle


def test_a_failed_flush_fails_only_its_caller_and_the_next_one_retries() -> None:
    attempts = []

    def flaky(_folder: Path) -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("I/O error")

    sync = FolderSync(flaky)
    try:
        sync.sync(Path("/x"))
        raise AssertionError("the first flush should have failed")
    except OSError:
        pass
    sync.sync(Path("/x"))  # flushes again: the failed one made nothing durable
    assert len(attempts) == 2 and sync.flushes == 1


def test_concurrent_stores_into_one_series_share_folder_flushes(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    payloads = {f"1.2.3.{i}": bytes([i]) * (64 * 1024 + i) for i in range(24)}
    barrier = threading.Barrier(len(payloads))
    outcomes = {}

    def store(sop: str) -> None:
        barrier.wait()
        outcomes[sop] = spool.store(payloads[sop], study_uid="1.2", series_uid="1.2.1", sop_uid=sop)

    threads = [threading.Thread(target=store, args=(sop,)) for sop in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(o.ok for o in outcomes.values())
    for sop, data in payloads.items():
        assert outcomes[sop].path.read_bytes() == data
    assert not list((tmp_path / "spool").rglob("*.part"))
    assert 1 <= spool.folder_sync.flushes <= len(payloads)

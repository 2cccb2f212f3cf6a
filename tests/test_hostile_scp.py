"""Hostile and broken senders against a real `x2x serve` (issue 16): nesting bombs, lossy syntax
choices, slow and too many associations, a trickled PDU, huge instances, UIDs that are not UIDs.

Each test reproduces an attack that worked on the main branch before the fix; node memory is bounded
with RLIMIT_AS where the attack is on memory, so a regression cannot take the machine with it."""

from __future__ import annotations

import re
import socket
import subprocess
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, DEFAULT_TRANSFER_SYNTAXES
from pynetdicom.sop_class import ComputedRadiographyImageStorage, Verification  # type: ignore[attr-defined]

from tests.support.chest_copies import chest_copy
from tests.support.dicom_files import store_statuses, storescu
from tests.support.hostile import (
    REQUEST_ATTRIBUTES_SEQUENCE,
    node_rss_mb,
    replace_bytes,
    slow_association_request,
    with_nested_sequence,
)
from tests.support.node import echo, run_node

pytestmark = pytest.mark.integration

INSTRUCTION = "Add the finding of pleural effusion."
EDITING_NODE = f"""
[requests]
default_instruction = "{INSTRUCTION}"
[edit]
steps = 1
"""
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_LS_NEAR_LOSSLESS = "1.2.840.10008.1.2.4.81"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
DEFLATE = "1.2.840.10008.1.2.1.99"


def _store(port: int, path: Path, *, syntax: str | None = None) -> int:
    """C-STORE the file's data set byte for byte, streamed from the file (pynetdicom's chunked send
    reads only the file meta: it neither decodes nor holds the data set)."""
    from pynetdicom import _config

    meta = pydicom.filereader.read_file_meta_info(path)
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(meta.MediaStorageSOPClassUID, syntax or meta.TransferSyntaxUID)
    ae.acse_timeout = ae.network_timeout = 30
    assoc = ae.associate("127.0.0.1", port, ae_title="X2X")
    assert assoc.is_established
    chunked, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
    try:
        return int(assoc.send_c_store(path).Status)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
        assoc.release()


@pytest.mark.parametrize("tag", [REQUEST_ATTRIBUTES_SEQUENCE, (0x0008, 0x1110)],
                         ids=["after-the-uids", "before-the-uids"])
def test_nested_sequence_bomb_is_refused_and_the_node_lives(tmp_path, tiny_model_dir, chest_cr_path, tag):
    """500 nested sequence levels (issue 16 #1): after the UIDs, main acknowledged it, made a job, and
    writing the outputs grew memory exponentially (24.5 GB; here the node's RLIMIT_AS stops it). Before
    the UIDs, main's header parse hit the recursion limit (0xC210 with a RecursionError). Now: refused
    at receipt, 0xC212 with the reason, before anything parses it; no job."""
    bomb = with_nested_sequence(chest_copy(chest_cr_path, factor=8), tmp_path / "bomb.dcm", 500, tag)
    ok = tmp_path / "ok.dcm"
    chest_copy(chest_cr_path, factor=8).save_as(ok, enforce_file_format=True)
    with run_node(tmp_path, EDITING_NODE, model_dir=tiny_model_dir, receiver_processes=1,
                  address_space_mb=3500) as node:
        status = _store(node.port, bomb)
        assert status == 0xC212, hex(status)
        assert _store(node.port, ok) == 0x0000
        node.wait_for(lambda: len(node.jobs()) >= 1, 60, "the good instance's job")
        time.sleep(2)  # a job for the bomb would show up now
        assert [j["sop_instance_uid"] for j in node.jobs()] == [pydicom.dcmread(ok).SOPInstanceUID]
        assert "nested more than 32 deep (node.max_sequence_depth)" in node.log_text()
        assert node.echo() and node.proc.poll() is None


def test_transfer_syntax_preference_pynetdicom_proposals(tmp_path, tiny_model_dir):
    """The sender's lossless syntaxes as proposed; lossy only alone; Deflate only when nothing else."""
    cases = [
        ([JPEG_LOSSLESS_SV1, JPEG_BASELINE], JPEG_LOSSLESS_SV1),  # main: JPEG Baseline
        ([EXPLICIT_LE, JPEG_LS_NEAR_LOSSLESS], EXPLICIT_LE),  # main: near-lossless
        (list(DEFAULT_TRANSFER_SYNTAXES), IMPLICIT_LE),  # main: Deflate
        ([JPEG_BASELINE, EXPLICIT_LE], EXPLICIT_LE),
        ([DEFLATE, JPEG_BASELINE], JPEG_BASELINE),
        ([JPEG_BASELINE], JPEG_BASELINE),
        ([DEFLATE], DEFLATE),
    ]
    with run_node(tmp_path, "", model_dir=tiny_model_dir, receiver_processes=1) as node:
        got = []
        for proposal, _ in cases:
            ae = AE(ae_title="PYSCU")
            ae.add_requested_context(ComputedRadiographyImageStorage, proposal)
            assoc = ae.associate("127.0.0.1", node.port, ae_title="X2X")
            assert assoc.is_established
            got.append(str(assoc.accepted_contexts[0].transfer_syntax[0]))
            assoc.release()
    assert got == [want for _, want in cases]


def test_transfer_syntax_preference_dcmtk_proposals(tmp_path, tiny_model_dir, chest_cr_path):
    """dcmtk storescu: with +C one context carries every proposed syntax, and we choose: uncompressed,
    never JPEG Baseline (-xy) or Deflate (-xd) (main chose those: JPEG Baseline, which storescu cannot
    even produce from this 15-bit image). Without +C each syntax has its own context; each is decided
    on its own, so every file travels in its own encoding, untranscoded (a JPEG Baseline file included)."""
    from pydicom.data import get_testdata_file

    src = tmp_path / "cr.dcm"
    chest_copy(chest_cr_path, factor=8).save_as(src, enforce_file_format=True)
    jpeg = tmp_path / "jpeg.dcm"
    ds = pydicom.dcmread(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(jpeg)
    with run_node(tmp_path, "", model_dir=tiny_model_dir, receiver_processes=1) as node:
        for options in (["-xy", "+C"], ["-xd", "+C"]):
            r = storescu(node.port, src, extra=[*options, "-d"])
            log = r.stdout + r.stderr
            assert r.returncode == 0 and "0x0000: Success" in log, (options, log[-2000:])
            accepted = re.findall(r"Accepted Transfer Syntax: =(\S+)", log)
            assert accepted and not [ts for ts in accepted if "JPEGBaseline" in ts or "Deflated" in ts], \
                (options, accepted)
        for options in (["-xy"], ["-xd"]):
            r = storescu(node.port, src, extra=options)
            assert store_statuses(r) == ["Success"], (options, r.stdout[-2000:])
        r = storescu(node.port, jpeg, extra=["-xy"])
        assert store_statuses(r) == ["Success"], r.stdout[-2000:]
        syntaxes = {str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID)
                    for p in node.spool_files()}
        assert syntaxes == {EXPLICIT_LE, JPEG_BASELINE}, syntaxes  # as each file was: nothing transcoded


def test_slow_senders_are_dropped_and_echo_keeps_working(tmp_path, tiny_model_dir):
    """Connections that trickle an A-ASSOCIATE-RQ a byte at a time (issue 16 #6): on main the silence
    timer restarted with every byte, they were never dropped, and they filled every association slot.
    Now a deadline (acse_timeout) holds for the whole negotiation and the oldest pending connection
    makes room for a new one (default node.max_pending_associations = 32), so a real C-ECHO answers while
    40 slow senders keep trying."""
    cfg = "[node]\nacse_timeout = 3.0\nmax_associations = 8\n"
    with run_node(tmp_path, cfg, model_dir=tiny_model_dir, receiver_processes=1) as node:
        slow = [slow_association_request(node.port) for _ in range(40)]
        closed_at: dict[int, float] = {}
        stop = threading.Event()
        t0 = time.monotonic()

        def trickle() -> None:
            while not stop.is_set() and len(closed_at) < len(slow):
                for i, sock in enumerate(slow):
                    if i in closed_at:
                        continue
                    try:
                        sock.sendall(b"\x00")  # one more byte of the request
                        sock.settimeout(0.01)
                        if sock.recv(1) == b"":
                            closed_at[i] = time.monotonic() - t0
                    except (TimeoutError, BlockingIOError):
                        pass
                    except OSError:
                        closed_at[i] = time.monotonic() - t0
                stop.wait(0.5)

        trickler = threading.Thread(target=trickle, daemon=True)
        trickler.start()
        try:
            time.sleep(1.0)
            echoes = [echo(node.port, timeout=5) for _ in range(3)]
            trickler.join(timeout=20)
        finally:
            stop.set()
            for sock in slow:
                sock.close()
        assert echoes == [True, True, True]
        assert len(closed_at) == len(slow), f"only {len(closed_at)} of {len(slow)} slow senders dropped"
        assert max(closed_at.values()) < 3.0 + 3.0, closed_at
        log = node.log_text()
        assert "no association within node.acse_timeout=3 s" in log
        assert "more than node.max_pending_associations=32 connections negotiating; dropped the oldest" in log
        assert node.echo()


def test_association_limit_is_total_across_receivers_and_backlog_is_real(tmp_path, tiny_model_dir):
    """max_associations applied per receiver process on main (4 configured, 8 accepted with 2 receivers),
    and the listen backlog was socketserver's 5."""
    cfg = "[node]\nmax_associations = 4\n"
    with run_node(tmp_path, cfg, model_dir=tiny_model_dir, receiver_processes=2) as node:
        ss = subprocess.run(["ss", "-ltnH", f"sport = :{node.port}"], capture_output=True, text=True)
        backlogs = [int(line.split()[2]) for line in ss.stdout.splitlines() if line.strip()]
        assert backlogs and all(b >= 256 for b in backlogs), ss.stdout

        ae = AE(ae_title="MANY")
        ae.add_requested_context(Verification)
        assocs = [ae.associate("127.0.0.1", node.port, ae_title="X2X") for _ in range(7)]
        try:
            established = [a for a in assocs if a.is_established]
            assert len(established) == 4, [a.is_established for a in assocs]
            assert sum(a.is_rejected for a in assocs) == 3
        finally:
            for a in assocs:
                if a.is_established:
                    a.release()
        node.wait_for(lambda: "more than node.max_associations=4 associations (all receivers)" in node.log_text(),
                      10, "the rejections to be logged")
        # the permits came back: four more fit again
        again = [ae.associate("127.0.0.1", node.port, ae_title="X2X") for _ in range(4)]
        try:
            assert all(a.is_established for a in again)
        finally:
            for a in again:
                if a.is_established:
                    a.release()
        # a burst of connections is queued by the kernel, not refused
        burst: list[socket.socket] = []
        try:
            for _ in range(100):
                burst.append(socket.create_connection(("127.0.0.1", node.port), timeout=2))
        finally:
            for sock in burst:
                sock.close()
        assert len(burst) == 100


def test_uid_with_non_ascii_bytes_is_refused_without_a_traceback(tmp_path, tiny_model_dir, chest_cr_path):
    """main answered 0xC211 and logged a traceback (the file meta could not be encoded)."""
    ds = chest_copy(chest_cr_path, factor=8)
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.777777777"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.888888888"
    path = tmp_path / "bad-uid.dcm"
    ds.save_as(path, enforce_file_format=True)
    replace_bytes(path, b"777777777", "77777\u00e9\u00e9".encode("latin-1") + b"77")
    with run_node(tmp_path, "", model_dir=tiny_model_dir, receiver_processes=1) as node:
        assert _store(node.port, path) == 0xC210
        node.wait_for(lambda: "refused (0xC210): SOP Instance UID: UID with non-ASCII" in node.log_text(), 10,
                      "the refusal")
        assert "Traceback" not in node.log_text()
        assert node.spool_files() == []


def test_instance_over_the_size_cap_is_refused_and_never_stored(tmp_path, tiny_model_dir, chest_cr_path):
    with run_node(tmp_path, "[node]\nmax_instance_mb = 2\n", model_dir=tiny_model_dir, receiver_processes=1) as node:
        assert _store(node.port, chest_cr_path) == 0xA700  # 7 MB > 2 MB
        small = tmp_path / "small.dcm"
        chest_copy(chest_cr_path, factor=4).save_as(small, enforce_file_format=True)  # ~450 kB
        assert _store(node.port, small) == 0x0000
        assert len(node.spool_files()) == 1
        assert not list(node.spool_dir.rglob(".incoming/*"))
        node.wait_for(lambda: "larger than node.max_instance_mb=2" in node.log_text(), 10, "the refusal")


def _big_copy(src: Path, dst: Path, target_mb: int) -> Path:
    """The chest CR tiled to about `target_mb` MB of 16-bit pixels (new UIDs)."""
    import numpy as np

    ds = chest_copy(src, factor=1)
    side = int((target_mb * 1024 * 1024 / 2) ** 0.5)
    tile = ds.pixel_array
    reps = (side // tile.shape[0] + 1, side // tile.shape[1] + 1)
    pixels = np.ascontiguousarray(np.tile(tile, reps)[:side, :side])
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = pixels.tobytes()
    ds.save_as(dst, enforce_file_format=True)
    return dst


@pytest.mark.slow
def test_four_150_mb_instances_at_once_keep_memory_flat(tmp_path, tiny_model_dir, chest_cr_path):
    """Data sets used to be buffered whole (issue 16 #7: +440 MB for one 150 MB instance, +905 MB for
    four at once). Now they stream into the spool: the node's RSS (all its processes) grows by less than
    BOUND_MB while four 150 MB instances arrive concurrently."""
    bound_mb = 200
    files = [_big_copy(chest_cr_path, tmp_path / f"big{i}.dcm", 150) for i in range(4)]
    try:
        with run_node(tmp_path, "", model_dir=tiny_model_dir, receiver_processes=1, address_space_mb=8000) as node:
            time.sleep(2)
            idle = node_rss_mb(node.proc.pid)
            peak = idle
            statuses: list[int] = []

            def send(path: Path) -> None:
                statuses.append(_store(node.port, path))

            threads = [threading.Thread(target=send, args=(f,)) for f in files]
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                peak = max(peak, node_rss_mb(node.proc.pid))
                time.sleep(0.05)
            assert statuses == [0] * 4
            stored = node.spool_files()
            assert len(stored) == 4 and all(p.stat().st_size > 150e6 for p in stored)
            print(f"node RSS idle {idle:.0f} MB, peak {peak:.0f} MB (+{peak - idle:.0f} MB) for 4 x 150 MB")
            assert peak - idle < bound_mb, (idle, peak)
    finally:
        for f in files:
            f.unlink(missing_ok=True)

"""One receiving process per spool: a second `x2x serve` on the same spool refuses to start instead of
sharing the port (SO_REUSEPORT would let it) and deleting the first one's unfinished receipts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dicom_node.inbound.spool import RECEIVING_LOCK, Spool, SpoolInUse
from tests.support.node import run_node

X2X = str(Path(sys.executable).with_name("x2x"))


def test_a_second_claim_on_one_spool_is_refused_and_names_the_holder(tmp_path):
    first = Spool(tmp_path / "spool").claim_receiving()
    try:
        with pytest.raises(SpoolInUse, match=rf"process {os.getpid()} on "):
            Spool(tmp_path / "spool").claim_receiving()
    finally:
        first.release()
    again = Spool(tmp_path / "spool").claim_receiving()  # released: free to claim
    again.release()
    assert (tmp_path / "spool" / RECEIVING_LOCK).exists()  # the lock file stays; the lock is what counts
    assert list(Spool(tmp_path / "spool").iter_studies()) == []  # not mistaken for a study


def test_the_claim_ends_with_its_process_however_it_ends(tmp_path):
    code = ("import os, sys; from pathlib import Path; from dicom_node.inbound.spool import Spool; "
            "Spool(Path(sys.argv[1])).claim_receiving(); os._exit(0)")  # no release: the kernel's job
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "spool")], check=True, timeout=60)
    Spool(tmp_path / "spool").claim_receiving().release()


def test_second_node_on_one_spool_exits_and_keeps_the_first_ones_temp_files(tmp_path, tiny_model_dir):
    with run_node(tmp_path, model_dir=tiny_model_dir) as node:
        in_flight = node.spool_dir / "1.2" / "1.2.3" / ".1.2.3.4.dcm.1.2.part"  # a receipt under way
        in_flight.parent.mkdir(parents=True)
        in_flight.write_bytes(b"half an instance")
        env = dict(node.env, X2X_NODE__PORT=str(node.port + 1), X2X_API__ENABLED="false")
        second = subprocess.run([X2X, "-c", str(node.config_path), "serve"], env=env, capture_output=True,
                                text=True, timeout=120)
        assert second.returncode == 1, second.stderr[-2000:]
        lines = second.stderr.strip().splitlines()
        assert "already receiving" in lines[-1] and f"process {node.proc.pid}" in lines[-1], second.stderr
        assert "Traceback" not in second.stderr
        assert in_flight.exists()  # the first node's unfinished receipt was not deleted
        assert node.echo()  # and the first node still serves


def test_a_node_that_fails_to_start_gives_its_claim_back(tmp_path, tiny_model_dir):
    """A start that fails after the claim (here: the DICOM port is taken) stops what it started and
    releases the spool, so the same process can start a node on it again."""
    import socket

    from dicom_node.config import load_settings
    from dicom_node.context import build_context
    from dicom_node.node import NodeService

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    s = load_settings(None)
    s.paths.var_dir = tmp_path / "var"
    s.model.path = tiny_model_dir
    s.node.host, s.node.port = "127.0.0.1", taken.getsockname()[1]
    s.node.receiver_processes = 1  # in-process SCP: its bind fails on a port in use
    s.api.enabled = False
    s.queue.embedded_worker = False
    service = NodeService(build_context(s))
    try:
        with pytest.raises(OSError):
            service.start()
    finally:
        taken.close()
    Spool(s.spool_dir).claim_receiving().release()  # free again

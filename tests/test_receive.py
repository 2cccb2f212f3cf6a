"""The SCP through real clients: dcmtk echoscu/storescu/storescp and pynetdicom (TLS, statuses)."""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, StoragePresentationContexts

from tests.conftest import free_port, require_tool
from tests.support.dicom_files import (
    dataset_bytes,
    dcmtk_env,
    echoscu,
    proposal_option,
    renumbered_copy,
    store_statuses,
    storescu,
)
from tests.support.node import echo, run_node

pytestmark = pytest.mark.integration


@pytest.fixture(params=["tuned", "stock"])
def scp_loops(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every receive test runs against the node's prompt reactor loops and against stock pynetdicom."""
    monkeypatch.setenv("X2X_NODE__SCP_TUNING", "true" if request.param == "tuned" else "false")
    return str(request.param)


def _pynetdicom_store(port: int, path: Path, *, calling_ae: str = "PYSCU", ssl_context=None) -> int:
    """Send a file with pynetdicom (a file path is sent as its encoded data set, byte for byte)."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="X2X",
                         tls_args=(ssl_context, "localhost") if ssl_context else None)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(path)
        return int(status.Status)
    finally:
        assoc.release()


def test_echo_and_store_bytes_as_received(tmp_path, scp_loops, tiny_model_dir, chest_cr_path):
    require_tool("storescu")
    # What dcmtk storescu puts on the wire, as received bit-preserving by dcmtk's own storescp.
    ref_dir = tmp_path / "storescp"
    ref_dir.mkdir()
    ref_port = free_port()
    scp = subprocess.Popen(["storescp", "+B", "-od", str(ref_dir), str(ref_port)], env=dcmtk_env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            if echoscu(ref_port).returncode == 0:
                break
            time.sleep(0.1)
        assert store_statuses(storescu(ref_port, chest_cr_path)) == ["Success"]
    finally:
        scp.terminate()
        scp.wait(10)
    (reference,) = [p for p in ref_dir.iterdir() if p.is_file()]

    with run_node(tmp_path, "", model_dir=tiny_model_dir) as node:
        assert echoscu(node.port).returncode == 0
        r = storescu(node.port, chest_cr_path)
        assert r.returncode == 0 and store_statuses(r) == ["Success"]
        ds = pydicom.dcmread(chest_cr_path, stop_before_pixels=True)
        spooled = node.spool_dir / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        assert spooled.exists()
        assert dataset_bytes(spooled) == dataset_bytes(reference)
        again = pydicom.dcmread(spooled)
        assert again.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
        assert again.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID

        # pynetdicom sends a file's data set untouched: the spool holds exactly the file's data set
        copy = renumbered_copy(chest_cr_path, tmp_path / "copy.dcm")
        assert _pynetdicom_store(node.port, copy) == 0x0000
        assert _pynetdicom_store(node.port, copy) == 0x0000  # duplicate: Success again, stored once
        c = pydicom.dcmread(copy, stop_before_pixels=True)
        target = node.spool_dir / c.StudyInstanceUID / c.SeriesInstanceUID / f"{c.SOPInstanceUID}.dcm"
        assert dataset_bytes(target) == dataset_bytes(copy)
        assert len(list(target.parent.iterdir())) == 1
        node.wait_for(lambda: "1 duplicate" in node.log_text(), 10, "the duplicate to be logged")


def test_unknown_calling_ae_rejected(tmp_path, scp_loops, tiny_model_dir):
    cfg = '[node]\nallowed_calling_aes = ["GOODSCU"]\n'
    with run_node(tmp_path, cfg, model_dir=tiny_model_dir,
                  ready_check=lambda nd: echo(nd.port, calling_ae="GOODSCU")) as node:
        assert echoscu(node.port, calling_ae="GOODSCU").returncode == 0
        bad = echoscu(node.port, calling_ae="BADSCU")
        assert bad.returncode != 0
        assert "Rejected" in bad.stdout + bad.stderr or "reject" in (bad.stdout + bad.stderr).lower()
        node.wait_for(lambda: "association rejected: calling AE 'BADSCU'" in node.log_text(), 10,
                      "the rejection to be logged")
        assert "not in node.allowed_calling_aes" in node.log_text()
        assert node.echo() is False  # pynetdicom's default calling AE is not allowed either


def test_unknown_called_ae_rejected_by_default(tmp_path, tiny_model_dir, chest_cr_path):
    """A misspelt rule AE (X2X_WRONG for X2X_EFFUSION) used to be stored and edited from its private tag:
    now the association is refused (called AE not recognised) and the refusal logged with who sent it."""
    cfg = '[[rules]]\ncalled_ae = "X2X_EFFUSION"\ninstruction = "Add the finding of pleural effusion."\n'
    with run_node(tmp_path, cfg, model_dir=tiny_model_dir, receiver_processes=2) as node:
        assert echoscu(node.port, called_ae="X2X").returncode == 0
        assert echoscu(node.port, called_ae="X2X_EFFUSION").returncode == 0
        wrong = echoscu(node.port, calling_ae="MODALITY7", called_ae="X2X_WRONG")
        assert wrong.returncode != 0
        assert "Called AE Title Not Recognized" in wrong.stdout + wrong.stderr
        sent = storescu(node.port, renumbered_copy(chest_cr_path, tmp_path / "cr.dcm"), called_ae="X2X_WRONG")
        assert sent.returncode != 0 and store_statuses(sent) == []
        assert node.spool_files() == []
        line = node.wait_for(lambda: next((ln for ln in node.log_text().splitlines()
                                           if "called AE title 'X2X_WRONG' not recognised" in ln), None),
                             10, "the refusal to be logged")
        assert "calling AE 'MODALITY7' from 127.0.0.1:" in line, line


def test_unknown_called_ae_policy_default_accepts_as_the_node_ae(tmp_path, chest_cr_path, caplog):
    import logging

    from dicom_node.config import NodeConfig
    from dicom_node.inbound.scp import StorageSCP
    from dicom_node.inbound.spool import Spool

    port = free_port()
    events: list = []
    config = NodeConfig(host="127.0.0.1", port=port, unknown_called_ae="default")
    scp = StorageSCP(config, Spool(tmp_path / "spool"), events.append, called_aes=["X2X", "X2X_EFFUSION"])
    scp.start()
    try:
        with caplog.at_level(logging.WARNING, logger="x2x.receive"):
            sent = storescu(port, renumbered_copy(chest_cr_path, tmp_path / "cr.dcm"), called_ae="X2X_WRONG")
    finally:
        scp.stop()
    assert store_statuses(sent) == ["Success"]
    assert "called AE 'X2X_WRONG' is not one of this node's AE titles" in caplog.text
    assert "calling AE 'STORESCU' from 127.0.0.1:" in caplog.text
    assert [e.called_ae for e in events if type(e).__name__ == "InstanceReceived"] == ["X2X_WRONG"]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_pki(d: Path) -> None:
    d.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
             "-days", "2", "-subj", "/CN=x2x-test-ca", cwd=d)
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN=x2x-test-{name}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", "san.cnf", cwd=d)


def test_tls_needs_the_right_client_certificate(tmp_path, scp_loops, tiny_model_dir, chest_cr_path):
    require_tool("openssl")
    pki = tmp_path / "pki"
    _make_pki(pki)
    cfg = f"""
[node.tls]
enabled = true
cert_file = "{pki / 'server.pem'}"
key_file = "{pki / 'server.key'}"
ca_file = "{pki / 'ca.pem'}"
require_client_cert = true
"""

    def client_ctx(with_cert: bool) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki / "ca.pem"))
        ctx.check_hostname = False
        if with_cert:
            ctx.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
        return ctx

    with run_node(tmp_path, cfg, model_dir=tiny_model_dir, receiver_processes=1,
                  ready_check=lambda nd: echo(nd.port, ssl_context=client_ctx(True))) as node:
        # a client that connects and never starts TLS does not hold up anyone else
        with socket.create_connection(("127.0.0.1", node.port)):
            t0 = time.monotonic()
            assert echo(node.port, ssl_context=client_ctx(True)) is True
            assert time.monotonic() - t0 < 5
        assert _pynetdicom_store(node.port, chest_cr_path, ssl_context=client_ctx(True)) == 0
        assert echo(node.port, ssl_context=client_ctx(False)) is False  # no client certificate
        assert echo(node.port) is False  # plain TCP
        assert node.echo() is False
        assert node.proc.poll() is None
        node.wait_for(lambda: "TLS handshake with" in node.log_text(), 10, "failed handshakes to be logged")


def test_disk_full_answers_out_of_resources_without_partial_files(tmp_path, scp_loops, tiny_model_dir, chest_cr_path,
                                                                  pydicom_data_dir):
    mnt = tmp_path / "tiny-spool"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here; tests/test_spool.py covers ENOSPC with a failing writer")
    try:
        # no free-space reserve here: what is tested is a write that fails half way (ENOSPC)
        env = {"X2X_PATHS__SPOOL_DIR": str(mnt), "X2X_NODE__SPOOL_MIN_FREE_MB": "0"}
        with run_node(tmp_path, "", env, model_dir=tiny_model_dir) as node:
            assert _pynetdicom_store(node.port, chest_cr_path) == 0xA700  # 7 MB into 1 MB
            assert [p for p in mnt.rglob("*") if p.is_file() and p.suffix in (".dcm", ".part")] == []
            small = Path(pydicom_data_dir) / "emri_small.dcm"  # ~10 kB still fits
            assert _pynetdicom_store(node.port, small) == 0x0000
            assert len([p for p in mnt.rglob("*.dcm")]) == 1
            assert node.echo()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.slow
def test_every_corpus_file_gets_a_status_and_node_survives(tmp_path, scp_loops, tiny_model_dir, pydicom_data_dir):
    files = sorted(Path(pydicom_data_dir).rglob("*.dcm"))
    assert len(files) >= 60
    answered, client_refused = {}, []
    with run_node(tmp_path, "", model_dir=tiny_model_dir) as node:
        for f in files:
            r = storescu(node.port, f, extra=proposal_option(f), timeout=60)
            statuses = store_statuses(r)
            if statuses:
                answered[f.name] = statuses[0]
            else:  # storescu could not read / propose the file: nothing reached the node
                client_refused.append(f.name)
            assert node.proc.poll() is None, f"node died on {f.name}"
        assert node.echo()
        assert echoscu(node.port).returncode == 0
        stored = len(node.spool_files())
    assert len(answered) >= len(files) - 10, client_refused
    assert "Success" in answered.values()
    # several corpus files are encodings of one instance (same UIDs): stored once, Success each time
    succeeded = [Path(pydicom_data_dir) / n for n, s in answered.items() if s == "Success"]
    uids = {
        tuple(str(d.get(k, "")) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"))
        for d in (pydicom.dcmread(f, stop_before_pixels=True, force=True) for f in succeeded)
    }
    assert stored == len(uids)
    print(f"{len(answered)} answered ({sum(s == 'Success' for s in answered.values())} Success), "
          f"client could not send {len(client_refused)}: {client_refused}")


def test_concurrent_associations_and_undecodable_dataset(tmp_path, scp_loops, tiny_model_dir, chest_cr_path):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ImplicitVRLittleEndian, generate_uid

    with run_node(tmp_path, "", model_dir=tiny_model_dir, receiver_processes=1) as node:
        ae = AE(ae_title="MANY")
        ae.requested_contexts = StoragePresentationContexts[:10]
        # more than pynetdicom's default of 10 concurrent associations
        assocs = [ae.associate("127.0.0.1", node.port, ae_title="X2X") for _ in range(12)]
        try:
            assert all(a.is_established for a in assocs)
            # a data set without Study/Series Instance UID: refused with a reason, node keeps serving
            bad = Dataset()
            bad.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
            bad.SOPInstanceUID = generate_uid()
            bad.Modality = "CR"
            bad.file_meta = FileMetaDataset()
            bad.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
            status = assocs[0].send_c_store(bad)
            assert int(status.Status) == 0xC210
        finally:
            for a in assocs:
                a.release()
        node.wait_for(lambda: "refused (0xC210): data set lacks StudyInstanceUID" in node.log_text(), 10,
                      "the refusal to be logged")
        assert node.echo()
        assert node.spool_files() == []


@pytest.mark.slow
def test_bench_ingest_prints_rates_and_ratios(tmp_path):
    import json
    import sys

    x2x = str(Path(sys.executable).with_name("x2x"))
    r = subprocess.run([x2x, "bench", "ingest", "--count", "16", "--concurrency", "2", "--rounds", "1",
                        "--workdir", str(tmp_path / "bench")], capture_output=True, text=True, timeout=900,
                       env=dcmtk_env())
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["instances"] == 16 and out["instance_bytes"] > 900_000
    for mode in ("one_association", "2_associations"):
        rates = out[mode]
        for receiver in ("x2x", "x2x_no_fsync", "orthanc", "dcmtk_storescp"):
            assert rates[receiver]["median"] > 0 and rates[receiver]["best"] >= rates[receiver]["median"]
            assert len(rates[receiver]["rounds"]) == out["rounds"]
            assert max(rates[receiver]["rounds"]) == rates[receiver]["best"]
        assert rates["ratio_x2x_over_orthanc"] == pytest.approx(
            rates["x2x"]["median"] / rates["orthanc"]["median"], abs=0.01)
    assert out["scaling_x2x"] == pytest.approx(
        out["2_associations"]["x2x"]["median"] / out["one_association"]["x2x"]["median"], abs=0.01)
    assert out["scaling_x2x_per_round"] == [pytest.approx(out["scaling_x2x"], abs=0.01)]  # one round
    assert set(out["meets_targets"]) == {"scaling", "one_association_vs_orthanc", "2_associations_vs_orthanc"}


def test_supported_contexts_copy_like_deepcopy_and_pynetdicom_still_copies_them() -> None:
    """transport.SupportedContexts makes pynetdicom's per-association deepcopy cheap; the copy must equal a real
    deep copy, share nothing mutable with the original, and pynetdicom must still copy that way."""
    import copy
    import hashlib
    import importlib
    import inspect

    from dicom_node.config import NodeConfig
    from dicom_node.inbound import scp, transport

    contexts = scp.StorageSCP(NodeConfig(), None, lambda _e: None).ae.supported_contexts  # type: ignore[arg-type]
    cheap = copy.deepcopy(transport.SupportedContexts(contexts))
    real = copy.deepcopy(contexts)
    assert len(cheap) == len(real) == len(contexts) > 100
    for a, b, original in zip(cheap, real, contexts, strict=True):
        assert vars(a) == vars(b)
        for name, value in vars(a).items():
            if isinstance(value, (list, dict, set)):
                assert value is not getattr(original, f"{name}")
    cheap[0].transfer_syntax.append("1.2.3")  # type: ignore[attr-defined]
    assert "1.2.3" not in contexts[0].transfer_syntax
    for qualname, digest in transport.CONTEXT_COPY_SOURCE_SHA256.items():
        module_name, cls_name, func_name = qualname.rsplit(".", 2)
        func = getattr(getattr(importlib.import_module(module_name), cls_name), func_name)
        source = inspect.getsource(func)
        assert "deepcopy(self.server.contexts)" in source
        assert hashlib.sha256(source.encode()).hexdigest() == digest, qualname


# The prompt reactor loops (dicom_node/inbound/tuning.py) ------------------------------------------
def test_tuning_replaces_exactly_the_pinned_upstream_loops() -> None:
    """tuning.py re-implements two private pynetdicom loops: a pynetdicom release that changes either one
    must fail here (re-check the copy against the new upstream loop, then update the pins)."""
    import hashlib
    import importlib
    import inspect

    import pynetdicom

    from dicom_node.inbound import tuning

    assert pynetdicom.__version__ == tuning.UPSTREAM_VERSION, (
        f"pynetdicom {pynetdicom.__version__} is not the version inbound/tuning.py was checked against"
    )
    for qualname, digest in tuning.UPSTREAM_SOURCE_SHA256.items():
        module_name, cls_name, func_name = qualname.rsplit(".", 2)
        func = getattr(getattr(importlib.import_module(module_name), cls_name), func_name)
        assert hashlib.sha256(inspect.getsource(func).encode()).hexdigest() == digest, qualname


@pytest.mark.parametrize("tuned", [True, False])
def test_acceptor_pause_handshake_and_no_standard_log_handlers(tmp_path: Path, tuned: bool) -> None:
    """pynetdicom's acceptor-side send_*() and release pause the reactor and wait for `_is_paused`: the
    tuned loop must answer that handshake (it once never did, so such a pause spun forever). And the
    per-PDU standard log handlers are not bound to any association (LOG_HANDLER_LEVEL)."""
    from pynetdicom import _handlers, evt
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    from dicom_node.config import NodeConfig
    from dicom_node.inbound.scp import StorageSCP
    from dicom_node.inbound.spool import Spool
    from dicom_node.inbound.tuning import PromptAcceptor

    port = free_port()
    scp = StorageSCP(NodeConfig(host="127.0.0.1", port=port, scp_tuning=tuned), Spool(tmp_path), lambda _e: None)
    scp.start()
    try:
        ae = AE(ae_title="PAUSER")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", port, ae_title="X2X")
        assert assoc.is_established
        assert scp._server is not None
        (acceptor,) = scp._server.active_associations
        assert isinstance(acceptor, PromptAcceptor) is tuned
        acceptor._reactor_checkpoint.clear()
        deadline = time.monotonic() + 2.0
        while not acceptor._is_paused and time.monotonic() < deadline:
            time.sleep(0.005)
        assert acceptor._is_paused, "the acceptor reactor never reported itself paused"
        acceptor._reactor_checkpoint.set()
        assert int(assoc.send_c_echo().Status) == 0x0000
        bound = [handler for handler, _args in acceptor.get_handlers(evt.EVT_PDU_RECV)]
        assert _handlers.standard_pdu_recv_handler not in bound
        assoc.release()
    finally:
        scp.stop()

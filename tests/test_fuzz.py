"""The fuzz corpus (tests/support/fuzz.py) through a real `x2x serve`: every case over C-STORE and, with
other UIDs, over STOW-RS. The node stays up, answers every case with a status, records every stored
instance's outcome, and every job it creates ends done, failed with a reason, or dead-lettered with a
reason — no worker dies (a worker death would show as a recovered job)."""

from __future__ import annotations

import collections
import uuid
from pathlib import Path

import httpx
import pydicom
import pytest
from pynetdicom import AE, _config

from tests.support.chest_copies import low_resolution_model
from tests.support.fuzz import FuzzCase, fuzz_corpus, kinds
from tests.support.node import NodeProcess, run_node

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CAP_MB = 64
NODE_TOML = f"""
[node]
max_instance_mb = {CAP_MB}
[edit]
steps = 1
"""


@pytest.fixture(scope="module")
def fast_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return low_resolution_model(tiny_model_dir, tmp_path_factory.mktemp("models") / "tiny128")


def _cstore_all(port: int, cases: list[FuzzCase]) -> dict[str, int | None]:
    """Status of every case, sent byte for byte (chunked), 25 C-STOREs per association. Cases of one
    transfer syntax share associations: proposed beside Explicit VR, Deflate is (rightly) not accepted."""
    by_syntax: dict[tuple[str, str], list[FuzzCase]] = {}
    for case in cases:
        meta = pydicom.filereader.read_file_meta_info(case.path)
        by_syntax.setdefault((str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)), []).append(case)
    statuses: dict[str, int | None] = {}
    chunked, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
    try:
        for (sop_class, ts), group in by_syntax.items():
            ae = AE(ae_title="FUZZER")
            ae.add_requested_context(sop_class, ts)
            ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
            for start in range(0, len(group), 25):
                assoc = ae.associate("127.0.0.1", port, ae_title="X2X")
                assert assoc.is_established
                for case in group[start:start + 25]:
                    if not assoc.is_established:  # never expected: the node would have broken an association
                        assoc = ae.associate("127.0.0.1", port, ae_title="X2X")
                    status = assoc.send_c_store(case.path)
                    statuses[case.name] = int(status.Status) if "Status" in status else None
                assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
    return statuses


def _stow_all(node: NodeProcess, cases: list[FuzzCase]) -> tuple[collections.Counter[str], collections.Counter[str]]:
    """Requests per HTTP status, and parts answered (stored / failed with each FailureReason), over
    requests of 20 parts."""
    token = (node.var_dir / "api-token").read_text().strip()
    parts, per_status = collections.Counter[str](), collections.Counter[str]()
    with httpx.Client(base_url=f"http://127.0.0.1:{node.api_port}", timeout=120) as c:
        for start in range(0, len(cases), 20):
            batch = cases[start:start + 20]
            boundary = uuid.uuid4().hex
            body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + case.path.read_bytes()
                            + b"\r\n" for case in batch) + f"--{boundary}--\r\n".encode()
            r = c.post("/dicomweb/studies", content=body, headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Authorization": f"Bearer {token}"})
            per_status[str(r.status_code)] += 1
            assert r.status_code in (200, 202, 409), r.text[:500]
            resp = pydicom.Dataset.from_json(r.json())
            parts["stored"] += len(resp.get("ReferencedSOPSequence", []))
            for item in resp.get("FailedSOPSequence", []):
                parts[f"failed 0x{int(item.FailureReason):04X}"] += 1
    return per_status, parts


def test_fuzz_corpus_through_the_scp_and_stow(tmp_path: Path, fast_model_dir: Path, chest_cr_path: Path) -> None:
    dimse_cases = fuzz_corpus(chest_cr_path, tmp_path / "dimse", seed=1, size_cap_mb=CAP_MB)
    stow_cases = fuzz_corpus(chest_cr_path, tmp_path / "stow", seed=2, size_cap_mb=CAP_MB)
    with run_node(tmp_path, NODE_TOML, model_dir=fast_model_dir, address_space_mb=4000) as node:
        statuses = _cstore_all(node.port, dimse_cases)
        http_statuses, stow_parts = _stow_all(node, stow_cases)
        assert node.echo(), "the node stopped answering C-ECHO"

        def settled() -> bool:
            spooled, recorded = len(node.spool_files()), len(node.study_instances())
            jobs = node.jobs()
            busy = [j for j in jobs if j["state"] not in ("done", "failed", "dead-letter", "cancelled")]
            receiving = [s for s in node.studies() if s["state"] == "receiving"]
            return recorded >= spooled and not busy and not receiving

        node.wait_for(settled, 900, "every instance recorded and every job finished")
        jobs, instances, log = node.jobs(), node.study_instances(), node.log_text()
        assert node.proc.poll() is None and node.echo()
    assert len(statuses) == len(dimse_cases) and all(s is not None for s in statuses.values()), \
        [n for n, s in statuses.items() if s is None]
    assert sum(stow_parts.values()) == len(stow_cases), "every STOW-RS part answered"
    by_status = collections.Counter(f"0x{s:04X}" for s in statuses.values() if s is not None)
    states = collections.Counter(j["state"] for j in jobs)
    assert set(states) <= {"done", "failed", "dead-letter"}, states
    assert all(j["last_error"] for j in jobs if j["state"] != "done"), "every failed job says why"
    assert all(i["reason"] for i in instances if i["status"] != "job"), "every skip says why"
    assert "recovering job" not in log, "a worker died on a fuzz case"
    outcomes = collections.Counter(i["status"] for i in instances)
    print(f"\nfuzz corpus: {len(dimse_cases)} C-STORE cases {dict(kinds(dimse_cases))}, "
          f"{len(stow_cases)} STOW-RS parts")
    print(f"C-STORE statuses: {dict(by_status)}; STOW-RS requests by HTTP status: {dict(http_statuses)}, "
          f"parts: {dict(stow_parts)}")
    print(f"instances recorded: {dict(outcomes)}; jobs: {dict(states)}")
    assert by_status.get("0x0000", 0) >= 10 and by_status.get("0xC212", 0) >= 10

"""`[worker] batch_size`: a worker claims queued jobs that can share one model pass and edits them together
(Editor.edit_batch), through a real `x2x serve` (receiving only) and a real `x2x worker`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pydicom
import pytest
from pynetdicom import AE

from tests.support.chest_copies import chest_copy, low_resolution_model
from tests.support.node import run_node

pytestmark = pytest.mark.integration

X2X = str(Path(sys.executable).with_name("x2x"))


@pytest.fixture(scope="module")
def fast_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return low_resolution_model(tiny_model_dir, tmp_path_factory.mktemp("models") / "tiny128")


def _store(port: int, paths: list[Path]) -> list[int]:
    ae = AE(ae_title="PYSCU")
    meta = pydicom.filereader.read_file_meta_info(paths[0])
    ae.add_requested_context(str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
    assoc = ae.associate("127.0.0.1", port, ae_title="X2X")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(p).Status) for p in paths]
    finally:
        assoc.release()


@pytest.mark.slow
def test_a_worker_edits_queued_jobs_with_the_same_parameters_together(tmp_path, fast_model_dir, chest_cr_path):
    """Three queued studies with the same parameters: one worker with batch_size = 3 claims all three at
    its first message and edits them in one batch; the other two messages find nothing to claim. A job
    with other steps (another batch key) is edited on its own."""
    cfg = """
[requests]
default_instruction = "Add the finding of pleural effusion."
[edit]
steps = 4
[queue]
embedded_worker = false
[api]
token = "batch-test-token"
"""
    sources = []
    for k in range(3):
        path = tmp_path / "in" / f"cr{k}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        chest_copy(chest_cr_path, factor=8).save_as(path, enforce_file_format=True)
        sources.append(path)
    with run_node(tmp_path, cfg, model_dir=fast_model_dir) as node:
        assert _store(node.port, sources) == [0, 0, 0]
        node.wait_for(lambda: len(node.jobs()) == 3, 60, "three queued jobs")
        # the same source edited with other steps: not the same batch key
        answer = httpx.post(f"http://127.0.0.1:{node.api_port}/jobs", timeout=60,
                            headers={"Authorization": "Bearer batch-test-token"},
                            json={"study_instance_uid": node.jobs()[0]["study_instance_uid"],
                                  "instruction": "Add the finding of pleural effusion.", "params": {"steps": 3}})
        assert answer.status_code == 201, answer.text
        assert all(j["state"] == "queued" for j in node.jobs())
        log_path = tmp_path / "batcher.log"
        with open(log_path, "wb") as log:
            worker = subprocess.Popen(
                [X2X, "-c", str(node.config_path), "worker", "--hostname", "batcher@test"], stdout=log,
                stderr=subprocess.STDOUT, env=node.env | {"X2X_WORKER__BATCH_SIZE": "3"}, start_new_session=True)
        try:
            rows = node.wait_for(lambda: (j := node.jobs()) and len(j) == 4 and all(x["state"] == "done" for x in j)
                                 and j, 300, "four jobs done")
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(60)
    text = log_path.read_text(errors="replace")
    jobs = [{**row, **{k: json.loads(row[k] or "null") for k in ("params", "timings", "result", "output_uids")}}
            for row in rows]
    batched = sorted(j["id"] for j in jobs if j["params"].get("steps") == 4)
    alone = [j for j in jobs if j["params"].get("steps") == 3]
    assert len(batched) == 3 and len(alone) == 1
    assert f"jobs {batched} edited together (worker.batch_size=3)" in text
    for job in jobs:
        assert text.count(f"job {job['id']} claimed by") == 1, "each job claimed exactly once"
        sizes = job["timings"].get("edit_batch_size")
        assert sizes == (3 if job["id"] in batched else None), (job["id"], job["timings"])
        assert job["result"]["parsed_instruction"]["findings"], job["result"]
    assert len({j["output_uids"]["counterfactual"]["sop"] for j in jobs}) == 4

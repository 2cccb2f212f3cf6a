"""One schema of edit parameters, one job key: every path that edits gives the same edit the same UIDs.

`x2x edit`, `x2x batch`, a C-STORE job (called-AE rule) and a `POST /jobs` upload of the same image with
the same instruction, seed and parameters must produce the same output UIDs (derived from the job key),
so a PACS de-duplicates whichever way the edit was made; and `POST /jobs` edits with the steps it asks
for.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pydicom
import pytest

from dicom_node.config import load_settings
from dicom_node.edit_params import InvalidEditParams, resolve_params
from dicom_node.results import FILE_NAMES, KINDS
from editor import EditParams
from tests.support.dicom_files import storescu
from tests.support.node import X2X, NodeProcess, run_node

INSTRUCTION = "Add the finding of left pleural effusion."
CONFIG = f"""
[edit]
steps = 2
resolution = 256
seed = 5

[[rules]]
called_ae = "X2X_EFF"
instruction = "{INSTRUCTION}"
"""


def _file_uids(folder: Path) -> dict[str, str]:
    return {kind: str(pydicom.dcmread(folder / FILE_NAMES[kind], stop_before_pixels=True).SOPInstanceUID)
            for kind in KINDS}


def _job_uids(job: dict) -> dict[str, str]:
    outputs = json.loads(job["output_uids"]) if isinstance(job["output_uids"], str) else job["output_uids"]
    return {kind: outputs[kind]["sop"] for kind in KINDS}


def _post_upload(node: NodeProcess, path: Path, **fields: str) -> httpx.Response:
    token = (node.var_dir / "api-token").read_text().strip()
    with path.open("rb") as fh:
        return httpx.post(
            f"http://127.0.0.1:{node.api_port}/jobs", headers={"Authorization": f"Bearer {token}"},
            data={"instruction": INSTRUCTION, **fields}, files={"file": ("cr.dcm", fh, "application/dicom")},
            timeout=120,
        )


def _done(node: NodeProcess, job_id: int) -> dict:
    return node.wait_for(
        lambda: next((j for j in node.jobs() if j["id"] == job_id and j["state"] == "done"), None),
        timeout=300, what=f"job {job_id} done",
    )


@pytest.mark.integration
@pytest.mark.slow
def test_every_path_gives_the_same_edit_the_same_uids(
    tmp_path: Path, tiny_model_dir: Path, chest_cr_path: Path
) -> None:
    config = tmp_path / "x2x.toml"
    config.write_text(CONFIG)
    env_model = ["--model", str(tiny_model_dir), "--device", "cpu"]

    edit_out = tmp_path / "edit"
    r = subprocess.run([X2X, "-c", str(config), "edit", str(chest_cr_path), "-i", INSTRUCTION, "--out",
                        str(edit_out), *env_model], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    by_edit = _file_uids(edit_out)

    src = tmp_path / "archive"
    src.mkdir()
    shutil.copy(chest_cr_path, src / "cr.dcm")
    batch_out = tmp_path / "batch"
    r = subprocess.run([X2X, "-c", str(config), "batch", str(src), "-i", INSTRUCTION, "--out", str(batch_out),
                        "--model", str(tiny_model_dir)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    (folder,) = [p for p in batch_out.iterdir() if p.is_dir()]
    by_batch = _file_uids(folder)

    with run_node(tmp_path / "a", CONFIG, model_dir=tiny_model_dir) as node:
        assert storescu(node.port, chest_cr_path, called_ae="X2X_EFF").returncode == 0
        (job,) = node.wait_for_jobs(1, timeout=120)
        by_cstore = _job_uids(_done(node, job["id"]))

    with run_node(tmp_path / "b", CONFIG, model_dir=tiny_model_dir) as node:
        r2 = _post_upload(node, chest_cr_path)
        assert r2.status_code == 201, r2.text
        (job_id,) = r2.json()["created"]
        by_api = _job_uids(_done(node, job_id))

        # POST /jobs with steps edits with those steps (a different edit: a different key and UIDs)
        r3 = _post_upload(node, chest_cr_path, steps="3")
        assert r3.status_code == 201, r3.text
        (job3_id,) = r3.json()["created"]
        job3 = _done(node, job3_id)
        assert json.loads(job3["params"])["steps"] == 3
        assert json.loads(job3["result"])["params"]["steps"] == 3
        assert _job_uids(job3) != by_api

    assert by_edit == by_batch == by_cstore == by_api


def test_resolve_params_validates_overrides_with_the_editor_schema() -> None:
    settings = load_settings()
    assert resolve_params(settings) == EditParams()
    assert resolve_params(settings, {"steps": 7, "tau": None}).steps == 7
    with pytest.raises(InvalidEditParams, match="steps"):
        resolve_params(settings, {"steps": 0})
    with pytest.raises(InvalidEditParams, match="unknown edit parameter"):
        resolve_params(settings, {"stepz": 3})

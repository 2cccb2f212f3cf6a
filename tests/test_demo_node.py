"""The newcomer's path: phantom studies asking for an edit in their private tag, sent with dcmtk to a node
running its default configuration and the shipped phantom demo model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from editor.demo import DEMO_MODEL_ID
from tests.support.dicom_files import storescu
from tests.support.node import run_node

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_phantom_studies_cli_writes_requests(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", "dataset", "phantom-studies", str(tmp_path), "--n", "2"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    files = sorted(tmp_path.glob("*.dcm"))
    assert len(files) == 2
    ds = pydicom.dcmread(files[0])
    assert ds.Modality == "CR" and ds.ViewPosition == "PA" and list(ds.PatientOrientation) == ["L", "F"]
    assert ds.SyntheticData == "YES" and ds.PatientName == "PHANTOM^DEMO"
    instruction = ds.private_block(0x0071, "INSTRUCTX2X")[0x10].value
    assert instruction in out.stdout
    from editor import parse_instruction

    assert parse_instruction(instruction).canonical() == instruction


def test_default_node_edits_phantom_studies_with_the_demo_model(tmp_path: Path) -> None:
    from dicom_node.tools.phantom_studies import write_phantom_studies

    files = write_phantom_studies(tmp_path / "in", n=2, size=256)
    with run_node(tmp_path, "[edit]\nsteps = 10\n") as node:  # no model configured: the demo model
        result = storescu(node.port, files)
        assert result.returncode == 0, result.stderr
        def all_done() -> list[dict] | None:
            jobs = node.jobs()
            return jobs if len(jobs) == 2 and all(j["state"] == "done" for j in jobs) else None

        jobs = node.wait_for(all_done, timeout=240, what="2 done jobs")
        assert "PHANTOM DEMO model" in node.log_text()
    for job in jobs:
        assert job["model_id"] == DEMO_MODEL_ID
        folder = node.var_dir / "results" / str(job["id"])
        assert {p.name for p in folder.glob("*.dcm")} == {
            "counterfactual.dcm", "seg.dcm", "fseg.dcm", "pmap.dcm", "overlay.dcm"
        }
        source = pydicom.dcmread(job["source_path"])
        cf = pydicom.dcmread(folder / "counterfactual.dcm")
        seg = pydicom.dcmread(folder / "seg.dcm")
        mask = np.asarray(seg.pixel_array, dtype=bool)
        mask = mask.any(axis=0) if mask.ndim == 3 else mask
        changed = cf.pixel_array != source.pixel_array
        assert changed.any(), "the demo edit changed nothing"
        assert not (changed & ~mask).any(), "pixels outside the guidance mask changed"
        summary = json.loads((folder / "result.json").read_text())
        assert summary["instruction"] == job["instruction"]

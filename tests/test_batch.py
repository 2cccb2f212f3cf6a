"""`x2x batch` on a folder tree: 24 chest CR copies (new UIDs, downscaled 4x for speed) + 6 files that
must be skipped with a reason. The first run is interrupted with SIGINT (Ctrl-C) part way; the rerun
resumes and finishes with exactly one manifest row per item and one output folder per edit."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from tests.support.chest_copies import chest_copy, low_resolution_model, write_chest_copies
from tests.support.terminal import ctrl_c_reaches

X2X = str(Path(sys.executable).with_name("x2x"))
INSTRUCTION = "Add the finding of pleural effusion."
N_CHEST = 24

@pytest.fixture(scope="module")
def fast_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return low_resolution_model(tiny_model_dir, tmp_path_factory.mktemp("models") / "tiny128")



def _build_source_tree(root: Path, chest_cr_path: Path, pydicom_data_dir: Path) -> dict[str, str]:
    """Returns {relative path: expected skip-reason fragment} for the ineligible files."""
    write_chest_copies(chest_cr_path, root / "site-a" / "2024", N_CHEST // 2, prefix="a")
    write_chest_copies(chest_cr_path, root / "site-b", N_CHEST - N_CHEST // 2, prefix="b")
    (root / "site-b" / "notes.txt").write_text("not an image\n")
    shutil.copy(pydicom_data_dir / "MR2_UNCR.dcm", root / "site-a" / "mr.dcm")
    shutil.copy(pydicom_data_dir / "US1_UNCR.dcm", root / "site-a" / "us.dcm")
    chest_copy(chest_cr_path, ViewPosition="LL").save_as(root / "site-b" / "lateral.dcm", enforce_file_format=True)
    chest_copy(chest_cr_path, BodyPartExamined="HAND").save_as(root / "site-b" / "hand.dcm",
                                                               enforce_file_format=True)
    (root / "site-b" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI" + b"\xff" * 7)
    return {
        "site-b/notes.txt": "not a DICOM file",
        "site-a/mr.dcm": "modality MR",
        "site-a/us.dcm": "modality US",
        "site-b/lateral.dcm": "view position LL",
        "site-b/hand.dcm": "body part HAND",
        "site-b/broken.dcm": "unreadable",
    }


def _rows(manifest: Path) -> list[dict[str, str]]:
    if not manifest.exists():
        return []
    with open(manifest, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_batch_skips_ineligible_resumes_after_ctrl_c_without_duplicates(
    tmp_path: Path, chest_cr_path: Path, pydicom_data_dir: Path, fast_model_dir: Path
) -> None:
    src, out = tmp_path / "archive", tmp_path / "out"
    expected_skips = _build_source_tree(src, chest_cr_path, pydicom_data_dir)
    n_files = sum(1 for p in src.rglob("*") if p.is_file())
    assert n_files == 30
    cmd = [X2X, "batch", str(src), "--instruction", INSTRUCTION, "--out", str(out), "--model",
           str(fast_model_dir), "--steps", "1", "--seed", "3"]
    env = dict(os.environ, X2X_PATHS__VAR_DIR=str(tmp_path / "var"), COLUMNS="120")
    env.pop("X2X_CONFIG", None)
    manifest = out / "manifest.csv"

    # run 1: Ctrl-C once a few items are finished
    first = subprocess.Popen(ctrl_c_reaches(cmd), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while len(_rows(manifest)) < 8:
        assert first.poll() is None, first.communicate()[1].decode()[-3000:]
        assert time.monotonic() < deadline, "batch made no progress"
        time.sleep(0.1)
    first.send_signal(signal.SIGINT)
    _, err1 = first.communicate(timeout=120)
    assert first.returncode == 130, err1.decode()[-3000:]
    assert b"interrupted: rerun the same command to resume" in err1
    rows_after_first = _rows(manifest)
    assert 8 <= len(rows_after_first) < 30

    # run 2: resumes, redoes nothing that has a row
    second = subprocess.run(cmd, env=env, capture_output=True, timeout=600)
    err2 = second.stderr.decode()
    assert second.returncode == 0, err2[-3000:]
    assert f"{len(rows_after_first)} already in the manifest" in err2
    assert "ETA" in err2  # the rich progress bar
    rows = _rows(manifest)
    assert rows[: len(rows_after_first)] == rows_after_first, "finished rows are never rewritten"
    assert len(rows) == 30 and len({r["item_key"] for r in rows}) == 30, "one row per item, no duplicates"
    by_path = {r["source_path"]: r for r in rows}
    assert len(by_path) == 30

    done = [r for r in rows if r["status"] == "done"]
    assert len(done) == N_CHEST
    for rel, fragment in expected_skips.items():
        assert by_path[rel]["status"] == "skipped", by_path[rel]
        assert fragment in by_path[rel]["reason"], by_path[rel]
    folders = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(folders) == N_CHEST, "one output folder per edit, none duplicated by the rerun"
    for row in done:
        assert row["instruction"] == INSTRUCTION and row["seed"] == "3"
        assert 0.0 <= float(row["coverage"]) <= 1.0 and float(row["seconds"]) > 0
        outputs = [out / p for p in row["outputs"].split(";")]
        names = sorted(p.name for p in outputs)
        assert names == sorted(["counterfactual.dcm", "seg.dcm", "fseg.dcm", "pmap.dcm", "overlay.dcm",
                                "source.png", "counterfactual.png", "overlay.png", "result.json"])
        assert all(p.is_file() and p.stat().st_size > 0 for p in outputs)
        src_uid = pydicom.dcmread(src / row["source_path"], stop_before_pixels=True).SOPInstanceUID
        assert row["source_uid"] == src_uid
        cf = pydicom.dcmread(outputs[[p.name for p in outputs].index("counterfactual.dcm")],
                             stop_before_pixels=True)
        assert cf.SourceImageSequence[0].ReferencedSOPInstanceUID == src_uid


def test_batch_rejects_bad_arguments(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    r = subprocess.run([X2X, "batch", str(src), "--out", str(tmp_path / "o")], capture_output=True)
    assert r.returncode == 2 and b"exactly one of --instruction or --instructions-csv" in r.stderr
    r = subprocess.run([X2X, "batch", str(src), "--out", str(tmp_path / "o"), "--instruction", "make it nicer"],
                       capture_output=True)
    assert r.returncode == 2 and b"invalid instruction" in r.stderr
    r = subprocess.run([X2X, "batch", str(src), "--out", str(tmp_path / "o"), "--instruction", INSTRUCTION,
                        "--send", "nohostport"], capture_output=True)
    assert r.returncode == 2 and b"AE@host:port" in r.stderr


@pytest.mark.integration
def test_batch_send_delivers_the_objects_to_a_dicom_peer(
    tmp_path: Path, chest_cr_path: Path, fast_model_dir: Path
) -> None:
    from tests.conftest import free_port, require_tool

    src, received = tmp_path / "src", tmp_path / "received"
    received.mkdir()
    write_chest_copies(chest_cr_path, src, 2)
    (src / "readme.txt").write_text("skip me")
    port = free_port()
    scp = subprocess.Popen([require_tool("storescp"), "-aet", "PEER", "-od", str(received), "+xa", str(port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        env = dict(os.environ, X2X_PATHS__VAR_DIR=str(tmp_path / "var"), TCP_NODELAY="1")
        env.pop("X2X_CONFIG", None)
        r = subprocess.run([X2X, "batch", str(src), "--instruction", INSTRUCTION, "--out", str(tmp_path / "out"),
                            "--model", str(fast_model_dir), "--steps", "1", "--send", f"PEER@127.0.0.1:{port}"],
                           capture_output=True, env=env, timeout=600)
        assert r.returncode == 0, r.stderr.decode()[-3000:]
    finally:
        scp.terminate()
        scp.wait(10)
    rows = _rows(tmp_path / "out" / "manifest.csv")
    assert sorted(r["status"] for r in rows) == ["done", "done", "skipped"]
    assert [r["sent"] for r in rows if r["status"] == "done"] == ["ok", "ok"]
    got = [pydicom.dcmread(p, stop_before_pixels=True) for p in received.iterdir()]
    assert len(got) == 10 and len({ds.SOPInstanceUID for ds in got}) == 10

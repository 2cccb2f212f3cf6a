"""`x2x batch` over a research archive: a real Orthanc (tests/support/archive.py) reached by DICOMweb
(QIDO-RS + WADO-RS, STOW-RS back, bearer token / basic auth) and by DIMSE (C-FIND + C-GET or C-MOVE to
the batch's own SCP, C-STORE back). Each route's outputs must land in the source's study in Orthanc;
runs are interrupted (Ctrl-C, the archive going down) and resumed without re-fetching finished items;
and a query that matches nothing / an unreachable archive / a refused association each end with one
clear line and a non-zero exit."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from tests.support.archive import CALLING_AE, PASSWORD, TOKEN, USER, Archive, start_archive
from tests.support.chest_copies import low_resolution_model
from tests.support.terminal import ctrl_c_reaches

X2X = str(Path(sys.executable).with_name("x2x"))
INSTRUCTION = "Add the finding of pleural effusion."
OBJECTS = {"counterfactual.dcm", "seg.dcm", "fseg.dcm", "pmap.dcm", "overlay.dcm"}

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fast_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return low_resolution_model(tiny_model_dir, tmp_path_factory.mktemp("models") / "tiny128")


@pytest.fixture
def archive(tmp_path: Path, chest_cr_path: Path, pydicom_data_dir: Path) -> Iterator[Archive]:
    arc = start_archive(tmp_path / "archive", chest_cr_path, pydicom_data_dir)
    try:
        yield arc
    finally:
        arc.orthanc.stop()


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("X2X_CONFIG", "X2X_DICOMWEB_TOKEN")}
    env.update(X2X_PATHS__VAR_DIR=str(tmp_path / "var"), X2X_NODE__HOST="127.0.0.1", X2X_NODE__AE_TITLE=CALLING_AE,
               COLUMNS="200", TCP_NODELAY="1", **extra)
    return env


def _rows(manifest: Path) -> list[dict[str, str]]:
    if not manifest.exists():
        return []
    with open(manifest, newline="") as fh:
        return list(csv.DictReader(fh))


def _edit_args(out: Path, model: Path) -> list[str]:
    return ["--instruction", INSTRUCTION, "--out", str(out), "--model", str(model), "--steps", "2", "--seed", "5"]


def _output_uids(out: Path, row: dict[str, str]) -> set[str]:
    paths = [out / p for p in row["outputs"].split(";") if p.endswith(".dcm")]
    assert {p.name for p in paths} == OBJECTS, row
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}


def _wait_rows(proc: subprocess.Popen[bytes], manifest: Path, until: object, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not until(_rows(manifest)):  # type: ignore[operator]
        assert proc.poll() is None, proc.communicate()[1].decode()[-3000:]
        assert time.monotonic() < deadline, "batch made no progress"
        time.sleep(0.05)


def _assert_in_study(archive: Archive, study: str, out: Path, rows: list[dict[str, str]]) -> None:
    in_orthanc = archive.orthanc.study_instance_uids(study)
    for row in rows:
        uids = _output_uids(out, row)
        assert uids <= set(in_orthanc), f"outputs of {row['source_uid']} not in study {study}"
        assert all(in_orthanc[u].startswith("X2X ") for u in uids)


@pytest.mark.slow
def test_dicomweb_route_stores_into_the_source_study_and_resumes_after_ctrl_c_without_refetching(
    tmp_path: Path, archive: Archive, fast_model_dir: Path
) -> None:
    out = tmp_path / "out"
    manifest = out / "manifest.csv"
    cmd = [X2X, "batch", "--from-dicomweb", archive.orthanc.dicomweb_url, "--query", "StudyDate=20240101-20240131",
           "--store-back", "--fetch-workers", "2", "--prefetch", "2", *_edit_args(out, fast_model_dir)]
    env = _env(tmp_path, X2X_DICOMWEB_TOKEN=TOKEN)
    before_b = archive.orthanc.study_instance_uids(archive.study_b)

    first = subprocess.Popen(ctrl_c_reaches(cmd), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_rows(first, manifest, lambda rows: any(r["status"] == "done" for r in rows))
    first.send_signal(signal.SIGINT)
    out1, err1 = first.communicate(timeout=120)
    assert first.returncode == 130, err1.decode()[-3000:]
    assert b"interrupted: rerun the same command to resume" in err1
    after_first = _rows(manifest)
    assert 1 <= sum(r["status"] == "done" for r in after_first) < 3, "interrupted part way"

    # run 1 stored its edits into study A: those instances are now query matches too
    inputs = {*archive.frontal, archive.lateral, archive.mr}
    stored_1 = [u for u, desc in archive.orthanc.study_instance_uids(archive.study_a).items() if u not in inputs]
    assert len(stored_1) % 5 == 0 and stored_1

    second = subprocess.run(cmd, env=env, capture_output=True, timeout=600)
    err2 = second.stderr.decode()
    assert second.returncode == 0, err2[-3000:]
    assert f"{5 + len(stored_1)} item(s) from DICOMweb archive {archive.orthanc.dicomweb_url}" in err2
    assert f"{len(after_first)} already in the manifest" in err2 and "ETA" in err2 and "items/s" in err2
    for output in (out1, err1, second.stdout, second.stderr):
        assert TOKEN.encode() not in output, "the bearer token must never be printed"

    all_rows = _rows(manifest)
    assert all_rows[: len(after_first)] == after_first, "finished rows are never rewritten"
    assert len({r["item_key"] for r in all_rows}) == len(all_rows) == 5 + len(stored_1), "one row per item"
    rows = [r for r in all_rows if r["source_uid"] in inputs]
    by_uid = {r["source_uid"]: r for r in rows}
    assert len(rows) == 5
    synthetic = "synthetic X2X output series: outputs are never edited again"
    assert {r["reason"] for r in all_rows if r["source_uid"] not in inputs} == {synthetic}
    assert {by_uid[u]["status"] for u in archive.frontal} == {"done"}
    assert "view position LL" in by_uid[archive.lateral]["reason"]
    assert by_uid[archive.mr]["status"] == "skipped" and "modality MR" in by_uid[archive.mr]["reason"]
    assert all(r["study_uid"] == archive.study_a for r in rows)
    assert {by_uid[u]["sent"] for u in archive.frontal} == {"ok"}

    # resume without re-fetching: the archive's own request log
    gets = archive.wado_gets()
    assert not {archive.mr, *stored_1} & set(gets), "an instance the query's attributes exclude is never retrieved"
    for row in after_first:
        if row["source_uid"] != archive.mr:
            assert gets.get(row["source_uid"]) == 1, f"{row['source_uid']} finished in run 1, fetched again"
    assert all(gets.get(u, 0) >= 1 for u in [*archive.frontal, archive.lateral])

    done = [r for r in rows if r["status"] == "done"]
    _assert_in_study(archive, archive.study_a, out, done)
    assert archive.orthanc.study_instance_uids(archive.study_b) == before_b, "the other study is untouched"

    # a third run: nothing left to edit; the outputs now in study A are recognised, never retrieved
    count = archive.orthanc.instance_count()
    third = subprocess.run(cmd, env=env, capture_output=True, timeout=300)
    assert third.returncode == 0, third.stderr.decode()[-3000:]
    assert archive.wado_gets() == gets and archive.orthanc.instance_count() == count
    new_rows = _rows(manifest)[len(all_rows):]
    assert len(new_rows) == 15 - len(stored_1) and {r["reason"] for r in new_rows} == {synthetic}
    assert f"{len(all_rows)} already in the manifest, {15 - len(stored_1)} to go" in third.stderr.decode()


@pytest.mark.slow
def test_pacs_cget_route_stops_when_the_pacs_goes_down_and_resumes_storing_nothing_twice(
    tmp_path: Path, archive: Archive, fast_model_dir: Path
) -> None:
    uids_file = tmp_path / "studies.txt"
    uids_file.write_text(f"# the study to edit\n{archive.study_a}\n")
    out = tmp_path / "out"
    manifest = out / "manifest.csv"
    base = [X2X, "batch", "--from-pacs", archive.pacs, "--study-uids", str(uids_file), "--query", "Modality=CR",
            "--store-back", "--fetch-workers", "1", "--prefetch", "1"]
    env = _env(tmp_path)

    first = subprocess.Popen([*base, *_edit_args(out, fast_model_dir)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    _wait_rows(first, manifest, lambda rows: len(rows) >= 1)
    archive.orthanc.kill()  # the PACS goes down mid-run (at once: a graceful stop left time to finish)
    _, err1 = first.communicate(timeout=180)
    assert first.returncode == 1, err1.decode()[-3000:]
    assert b"stopped: " in err1 and b"Rerun the same command to resume" in err1, err1.decode()[-3000:]
    after_first = _rows(manifest)
    assert 1 <= len(after_first) < 4

    archive.orthanc.start()
    second = subprocess.run([*base, "--retry-failed", *_edit_args(out, fast_model_dir)], env=env,
                            capture_output=True, timeout=600)
    assert second.returncode == 0, second.stderr.decode()[-3000:]
    final = {r["item_key"]: r for r in _rows(manifest)}  # the last row of a key wins
    assert len(final) == 4, "the three frontal CRs and the lateral one (the MR series is not queried)"
    by_uid = {r["source_uid"]: r for r in final.values()}
    assert {by_uid[u]["status"] for u in archive.frontal} == {"done"}
    assert by_uid[archive.lateral]["status"] == "skipped"
    for row in after_first:
        if row["status"] == "failed" and row["reason"].startswith("store:"):  # edited, then the PACS was gone
            assert "earlier attempt with the same job key reused" in final[row["item_key"]]["reason"], \
                "a retried delivery does not re-edit"
    done = [by_uid[u] for u in archive.frontal]
    _assert_in_study(archive, archive.study_a, out, done)
    assert all(r["sent"] == "ok" for r in done)

    # the same batch into a fresh folder: same UIDs, so the PACS gets nothing new
    count = archive.orthanc.instance_count()
    out2 = tmp_path / "out2"
    again = subprocess.run([*base, *_edit_args(out2, fast_model_dir)], env=env, capture_output=True, timeout=600)
    assert again.returncode == 0, again.stderr.decode()[-3000:]
    assert archive.orthanc.instance_count() == count, "re-running stores nothing twice"
    rows2 = {r["source_uid"]: r for r in _rows(out2 / "manifest.csv")}
    for uid in archive.frontal:
        assert _output_uids(out2, rows2[uid]) == _output_uids(out, by_uid[uid])


@pytest.mark.slow
def test_pacs_cmove_route_to_the_batch_scp_delivers_to_a_configured_destination(
    tmp_path: Path, archive: Archive, fast_model_dir: Path
) -> None:
    config = tmp_path / "x2x.toml"
    config.write_text(f'[destinations.research]\ntype = "stow"\nurl = "{archive.orthanc.dicomweb_url}"\n'
                      f'username = "{USER}"\npassword = "{PASSWORD}"\n')
    uids_file = tmp_path / "studies.txt"
    uids_file.write_text(archive.study_b + "\n")
    out = tmp_path / "out"
    r = subprocess.run([X2X, "--config", str(config), "batch", "--from-pacs", archive.pacs, "--retrieve", "move",
                        "--move-ae", CALLING_AE, "--move-port", str(archive.move_port), "--level", "series",
                        "--query", "Modality=CR", "--study-uids", str(uids_file), "--destination", "research",
                        *_edit_args(out, fast_model_dir)], env=_env(tmp_path), capture_output=True, timeout=600)
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    assert "C-MOVE to X2X" in r.stderr.decode() and PASSWORD not in r.stderr.decode()
    rows = _rows(out / "manifest.csv")
    assert [(row["source_uid"], row["status"], row["sent"]) for row in rows] == [(archive.study_b_cr, "done", "ok")]
    _assert_in_study(archive, archive.study_b, out, rows)
    stow_posts = [line for line in archive.requests_log.read_text().splitlines() if line.startswith("POST ")]
    assert stow_posts, "the destination stored by STOW-RS (basic auth let it through the archive's filter)"


def test_archive_problems_end_with_a_clear_message_and_a_nonzero_exit(
    tmp_path: Path, archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from dicom_node.cli import app
    from tests.conftest import free_port

    for key, value in _env(tmp_path).items():
        if key.startswith("X2X_"):
            monkeypatch.setenv(key, value)
    monkeypatch.delenv("X2X_CONFIG", raising=False)
    monkeypatch.delenv("X2X_DICOMWEB_TOKEN", raising=False)
    url, closed = archive.orthanc.dicomweb_url, free_port()
    common = ["--instruction", INSTRUCTION, "--out", str(tmp_path / "out")]

    def run(*args: str, code: int, says: str) -> str:
        result = CliRunner().invoke(app, ["batch", *args, *common])
        text = result.output
        assert result.exit_code == code, (args, text)
        assert says in text, (args, text)
        assert TOKEN not in text and PASSWORD not in text
        return text

    run("--from-dicomweb", url, "--token", TOKEN, "--query", "StudyDate=19000101", code=1,
        says="the query matched no instance in DICOMweb archive")
    run("--from-pacs", archive.pacs, "--query", "AccessionNumber=NO-SUCH", code=1,
        says=f"the query matched no instance in PACS {archive.pacs}")
    run("--from-dicomweb", f"http://127.0.0.1:{closed}/dicom-web", "--token", TOKEN, code=1,
        says=f"cannot reach the DICOMweb archive http://127.0.0.1:{closed}/dicom-web")
    run("--from-pacs", f"ORTHANC@127.0.0.1:{closed}", code=1, says=f"cannot reach the PACS ORTHANC@127.0.0.1:{closed}")
    run("--from-pacs", f"WRONG@127.0.0.1:{archive.orthanc.dicom_port}", code=1,
        says="association refused by WRONG@127.0.0.1")
    run("--from-pacs", f"WRONG@127.0.0.1:{archive.orthanc.dicom_port}", code=1, says="Called AE title not recognised")
    run("--from-pacs", archive.pacs, "--calling-ae", "STRANGER", code=1, says="is calling AE STRANGER allowed to query")
    run("--from-dicomweb", url, "--token", "wrong-token", code=1, says="refused the QIDO-RS search with HTTP 403")
    run("--from-dicomweb", f"http://{USER}:{PASSWORD}@127.0.0.1:{closed}/dicom-web", code=1,
        says=f"cannot reach the DICOMweb archive http://127.0.0.1:{closed}/dicom-web")
    # arguments: exit 2, nothing contacted
    run("--from-dicomweb", url, "--query", "NotAKeyword=1", code=2, says="is not a DICOM keyword")
    run("--from-dicomweb", url, "--query", "Modality", code=2, says="expected KEY=VALUE")
    run("--from-dicomweb", url, "--level", "patient", code=2, says="--level must be one of")
    run("--from-pacs", archive.pacs, "--retrieve", "move", code=2, says="--retrieve move needs --move-port")
    run("--from-pacs", "no-port", code=2, says="expected AE@host:port")
    run(str(tmp_path), "--query", "Modality=CR", code=2, says="need --from-dicomweb or --from-pacs")
    run("--from-dicomweb", url, "--from-pacs", archive.pacs, code=2, says="give one source")
    run("--from-dicomweb", url, "--destination", "nowhere", code=2, says="'nowhere' is not in [destinations]")

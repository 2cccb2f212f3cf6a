"""Senders against real receivers: Orthanc (C-STORE and DICOMweb STOW-RS), a folder, and dead ports."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pydicom
import pytest

from dicom_node.config import (
    ConfigError,
    CStoreDestination,
    FolderDestination,
    StowDestination,
    load_settings,
)
from dicom_node.results import encode_results, save_objects
from dicom_node.send import SendError, get_sender, resolve_destination
from tests.conftest import free_port
from tests.support.orthanc import Orthanc, orthanc  # noqa: F401  (fixture)
from tests.test_results import synthetic_result


@pytest.fixture(scope="module")
def objects(chest_cr_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    source = pydicom.dcmread(chest_cr_path)
    datasets = encode_results(source, synthetic_result(source), job_key="send-tests")
    return save_objects(datasets, tmp_path_factory.mktemp("objects"))


def _study_uid(objects: dict[str, Path]) -> str:
    return str(pydicom.dcmread(objects["seg"], stop_before_pixels=True).StudyInstanceUID)


@pytest.mark.integration
def test_cstore_delivers_all_five_and_resend_adds_nothing(objects: dict[str, Path], orthanc: Orthanc) -> None:  # noqa: F811
    dest = CStoreDestination(type="cstore", host="127.0.0.1", port=orthanc.dicom_port, ae_title=orthanc.ae_title)
    sender = get_sender(dest, name="pacs", calling_ae="X2X")
    report = sender.send(list(objects.values()))
    assert report.ok, report.failed
    assert len(report.sent) == 5
    series = orthanc.study_series(_study_uid(objects))
    modalities = sorted(s["MainDicomTags"].get("Modality", "") for s in series)
    assert modalities == ["OT", "OT", "OT", "SEG", "SEG"]  # SC, overlay SC, Parametric Map, 2 x SEG
    assert orthanc.instance_count() == 5
    again = sender.send(list(objects.values()))  # same UIDs: the PACS keeps one copy
    assert again.ok and orthanc.instance_count() == 5


@pytest.mark.integration
def test_stow_rs_delivers_to_orthanc_dicomweb(objects: dict[str, Path], orthanc: Orthanc) -> None:  # noqa: F811
    assert orthanc.dicomweb, "Orthanc's DICOMweb plugin is not installed"
    sender = get_sender(StowDestination(type="stow", url=orthanc.dicomweb_url), name="web")
    report = sender.send([pydicom.dcmread(p) for p in objects.values()])  # datasets work as well as files
    assert report.ok, report.failed
    assert orthanc.instance_count() == 5
    assert len(orthanc.study_series(_study_uid(objects))) == 5


@pytest.mark.integration
def test_unreachable_destinations_fail_every_object(objects: dict[str, Path]) -> None:
    dead = free_port()  # nothing listens there
    cstore = get_sender(CStoreDestination(type="cstore", host="127.0.0.1", port=dead, ae_title="NOBODY"))
    report = cstore.send(list(objects.values()))
    assert not report.ok and report.sent == [] and len(report.failed) == 5
    assert "association" in report.error_summary()
    stow = get_sender(StowDestination(type="stow", url=f"http://127.0.0.1:{dead}/dicom-web"))
    report = stow.send(list(objects.values()))
    assert not report.ok and len(report.failed) == 5 and "STOW-RS" in report.error_summary()


def test_folder_sender_writes_study_series_sop(objects: dict[str, Path], tmp_path: Path) -> None:
    share = FolderDestination(type="folder", path=tmp_path / "out")
    report = get_sender(share, name="share").send(list(objects.values()))
    assert report.ok and len(report.sent) == 5
    files = sorted((tmp_path / "out").rglob("*.dcm"))
    assert len(files) == 5
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert path.relative_to(tmp_path / "out").parts == (
            ds.StudyInstanceUID, ds.SeriesInstanceUID, f"{ds.SOPInstanceUID}.dcm"
        )


def test_destination_resolution_order(tmp_path: Path) -> None:
    settings = load_settings(
        None,
        destinations={
            "rule": {"type": "folder", "path": str(tmp_path / "a")},
            "peer": {"type": "folder", "path": str(tmp_path / "b")},
            "default": {"type": "folder", "path": str(tmp_path / "c")},
        },
        send={"default_destination": "default", "peers": {"MODALITY1": "peer"}},
    )
    pick = resolve_destination
    assert pick(settings, job_destination="rule", calling_ae="MODALITY1")[0] == "rule"  # type: ignore[index]
    assert pick(settings, job_destination=None, calling_ae="MODALITY1")[0] == "peer"  # type: ignore[index]
    assert pick(settings, job_destination=None, calling_ae="OTHER")[0] == "default"  # type: ignore[index]
    bare = load_settings(None)
    assert pick(bare, job_destination=None, calling_ae="OTHER") is None
    with pytest.raises(SendError, match="not defined"):
        pick(settings, job_destination="missing", calling_ae=None)
    # an incomplete destination no longer waits for the first send: the config does not load
    with pytest.raises(ConfigError, match=r"'destinations\.incomplete\.host'"):
        load_settings(None, destinations={"incomplete": {"type": "cstore"}})


def _pipeline_job(
    tmp_path: Path, objects: dict[str, Path], chest_cr_path: Path, **settings: object
) -> tuple[Any, int]:
    """A job whose five objects are already encoded on disk (a previous attempt): run_job only sends."""
    from dicom_node.context import build_context
    from dicom_node.jobs.pipeline import job_results_dir

    ctx = build_context(load_settings(None, paths={"var_dir": str(tmp_path / "var")}, **settings))
    from tests.support.jobs import create_job

    job = create_job(
        ctx, idempotency_key="send-tests", study_instance_uid="1.2.3", sop_instance_uid="1.2.3.4",
        source_path=str(chest_cr_path), instruction="Add the finding of pleural effusion.",
        state="queued",
    )
    out = job_results_dir(ctx, job.id)
    out.mkdir(parents=True)
    for path in objects.values():
        shutil.copy(path, out / path.name)
    return ctx, job.id


def test_pipeline_sends_existing_objects_without_editing(
    tmp_path: Path, objects: dict[str, Path], chest_cr_path: Path
) -> None:
    from dicom_node.jobs.pipeline import run_job

    folder = tmp_path / "share"
    ctx, job_id = _pipeline_job(
        tmp_path, objects, chest_cr_path,
        destinations={"share": {"type": "folder", "path": str(folder)}},
        send={"default_destination": "share"},
    )
    assert run_job(ctx, job_id).state == "done"
    assert ctx._editor is None  # the objects were on disk: the model was never loaded
    assert len(list(folder.rglob("*.dcm"))) == 5


def test_pipeline_without_destination_is_done_and_unknown_destination_dead_letters(
    tmp_path: Path, objects: dict[str, Path], chest_cr_path: Path
) -> None:
    from dicom_node.jobs.pipeline import run_job

    ctx, job_id = _pipeline_job(tmp_path / "a", objects, chest_cr_path)
    assert run_job(ctx, job_id).state == "done"  # results stay on disk
    ctx, job_id = _pipeline_job(tmp_path / "b", objects, chest_cr_path, send={"default_destination": "nowhere"})
    outcome = run_job(ctx, job_id)
    assert outcome.state == "dead-letter" and outcome.retry_in is None  # waiting would not fix the config
    job = ctx.store.get(job_id)
    assert job is not None and "'nowhere' is not defined" in (job.last_error or "")


def test_backoff_doubles_and_is_capped(tmp_path: Path) -> None:
    from dicom_node.context import build_context
    from dicom_node.jobs.pipeline import backoff_seconds

    ctx = build_context(
        load_settings(None, paths={"var_dir": str(tmp_path)}, send={"backoff_seconds": 2, "backoff_max_seconds": 10})
    )
    assert [backoff_seconds(ctx, n) for n in (1, 2, 3, 4, 5)] == [2, 4, 8, 10, 10]

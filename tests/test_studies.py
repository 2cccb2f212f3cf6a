"""Study completion, edit requests, eligibility and job creation (in-process and through `x2x serve`)."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from dicom_node.config import Rule, load_settings
from dicom_node.context import build_context
from dicom_node.inbound.events import AssociationEnded, InstanceReceived
from dicom_node.inbound.spool import Spool
from dicom_node.studies.intake import create_jobs_for_study
from dicom_node.studies.records import INVALID_REQUEST, study_record
from dicom_node.studies.requests import write_private_block
from dicom_node.studies.tracker import StudyTracker
from tests.support.dicom_files import dcmtk_env, renumbered_copy, store_statuses, storescu
from tests.support.node import run_node

# Jobs are only created here (the pipeline is tested elsewhere): no embedded worker runs them.
EFFUSION_RULE = """
[queue]
embedded_worker = false

[edit]
steps = 2

[[rules]]
called_ae = "X2X_EFFUSION"
instruction = "add the finding of pleural effusion"
seed = 3
"""


def _ctx(tmp_path: Path, tiny_model_dir: Path):
    s = load_settings(None)
    s.paths.var_dir = tmp_path / "var"
    s.model.path = tiny_model_dir
    s.node.study_quiet_seconds = 0.2
    s.rules = [Rule(called_ae="X2X_EFFUSION", instruction="add the finding of pleural effusion")]
    return build_context(s)


def _spool_copy(ctx, src: Path, dst_dir: Path, **attrs) -> pydicom.Dataset:
    f = renumbered_copy(src, dst_dir / "x.dcm", **attrs)
    ds = pydicom.dcmread(f, stop_before_pixels=True)
    Spool(ctx.settings.spool_dir).store(
        f.read_bytes(), study_uid=ds.StudyInstanceUID, series_uid=ds.SeriesInstanceUID,
        sop_uid=ds.SOPInstanceUID,
    )
    return ds


# In-process ------------------------------------------------------------------------------------
def test_tracker_completes_only_after_release_and_quiet_period(tmp_path, tiny_model_dir):
    ctx = _ctx(tmp_path, tiny_model_dir)
    tracker = StudyTracker(ctx, quiet_seconds=0.3)
    tracker.handle(InstanceReceived("1.2.3", "1.2.3.9", "1.2.3.4", "/x", "SCU", "X2X", "assoc-1", False))
    time.sleep(0.4)
    assert tracker.due() == []  # association still open
    tracker.handle(AssociationEnded("assoc-1", "SCU", "X2X", "released"))
    assert tracker.due() == []  # quiet period runs from the release
    time.sleep(0.35)
    assert tracker.due() == ["1.2.3"]
    tracker.handle(InstanceReceived("1.2.3", "1.2.3.9", "1.2.3.5", "/y", "SCU", "X2X", "assoc-2", False))
    tracker.handle(AssociationEnded("assoc-2", "SCU", "X2X", "released"))
    assert tracker.due() == []  # a new instance restarts the quiet period


def test_rule_job_is_idempotent_and_params_match_editparams(tmp_path, tiny_model_dir, chest_cr_path):
    from editor.types import EditParams

    ctx = _ctx(tmp_path, tiny_model_dir)
    ds = _spool_copy(ctx, chest_cr_path, tmp_path / "in")
    out1 = create_jobs_for_study(ctx, ds.StudyInstanceUID, called_ae="X2X_EFFUSION", calling_ae="SCU")
    out2 = create_jobs_for_study(ctx, ds.StudyInstanceUID, called_ae="X2X_EFFUSION", calling_ae="SCU")
    assert len(out1.created_jobs) == 1 and out2.created_jobs == [] and out2.existing_jobs == out1.created_jobs
    job = ctx.store.get(out1.created_jobs[0])
    # the rule's instruction as written is what the editor gets (issue 14), not the canonical rewording
    assert job.instruction == "add the finding of pleural effusion"
    assert job.sop_instance_uid == ds.SOPInstanceUID
    EditParams(**job.params)  # the job's params are EditParams fields
    assert job.params["steps"] == ctx.settings.edit.steps
    from editor.model import describe_model

    assert job.model_hash == describe_model(tiny_model_dir).weights_hash
    assert len(ctx.store.list()) == 1


def test_private_block_request_with_seed_location_severity(tmp_path, tiny_model_dir, chest_cr_path):
    ctx = _ctx(tmp_path, tiny_model_dir)
    src = tmp_path / "private.dcm"
    ds = pydicom.dcmread(chest_cr_path)
    write_private_block(ds, "Add the finding of pleural effusion.", seed=42, location="left", severity="mild")
    ds.save_as(src)
    spooled = _spool_copy(ctx, src, tmp_path / "in")
    out = create_jobs_for_study(ctx, spooled.StudyInstanceUID, called_ae="X2X", calling_ae="SCU")
    job = ctx.store.get(out.created_jobs[0])
    assert job.seed == 42
    assert job.instruction == "Add the finding of mild left pleural effusion."


def test_the_editor_is_prompted_with_the_instruction_as_written(tmp_path, tiny_model_dir, chest_cr_path):
    """The model was trained on the dataset's own sentences: a job keeps the instruction as written
    (whitespace normalised), not the parser's canonical rewording ("... right lower pneumonia.")."""
    ctx = _ctx(tmp_path, tiny_model_dir)
    src = tmp_path / "written.dcm"
    ds = pydicom.dcmread(chest_cr_path)
    write_private_block(ds, "Add the finding of  pneumonia in the right lower lobe.")
    ds.save_as(src)
    spooled = _spool_copy(ctx, src, tmp_path / "in")
    out = create_jobs_for_study(ctx, spooled.StudyInstanceUID, called_ae="X2X", calling_ae="SCU")
    job = ctx.store.get(out.created_jobs[0])
    assert job.instruction == "Add the finding of pneumonia in the right lower lobe."


def test_invalid_instruction_recorded_nothing_edited(tmp_path, tiny_model_dir, chest_cr_path):
    ctx = _ctx(tmp_path, tiny_model_dir)
    src = tmp_path / "bad.dcm"
    ds = pydicom.dcmread(chest_cr_path)
    write_private_block(ds, "Add the finding of pleural efusion.")
    ds.save_as(src)
    spooled = _spool_copy(ctx, src, tmp_path / "in")
    out = create_jobs_for_study(ctx, spooled.StudyInstanceUID, called_ae="X2X", calling_ae="SCU")
    assert out.created_jobs == [] and out.state == INVALID_REQUEST
    rec = study_record(ctx.db, spooled.StudyInstanceUID)
    assert rec is not None and rec.state == INVALID_REQUEST
    assert "efusion" in (rec.request_error or "")
    assert ctx.store.list() == []


def test_no_request_and_default_instruction(tmp_path, tiny_model_dir, chest_cr_path):
    ctx = _ctx(tmp_path, tiny_model_dir)
    spooled = _spool_copy(ctx, chest_cr_path, tmp_path / "in")
    out = create_jobs_for_study(ctx, spooled.StudyInstanceUID, called_ae="X2X", calling_ae="SCU")
    assert out.created_jobs == [] and out.state == "no-request"
    ctx.settings.requests.default_instruction = "Remove the finding of cardiomegaly."
    out = create_jobs_for_study(ctx, spooled.StudyInstanceUID, called_ae="X2X", calling_ae="SCU")
    assert ctx.store.get(out.created_jobs[0]).instruction == "Remove the finding of cardiomegaly."
    # the default applies to the node's own AE title only
    out = create_jobs_for_study(ctx, spooled.StudyInstanceUID, called_ae="OTHER", calling_ae="SCU")
    assert out.created_jobs == [] and out.existing_jobs == []


def test_standard_attribute_request(tmp_path, tiny_model_dir, chest_cr_path):
    ctx = _ctx(tmp_path, tiny_model_dir)
    ctx.settings.requests.standard_attribute = "RequestedProcedureDescription"
    spooled = _spool_copy(ctx, chest_cr_path, tmp_path / "in",
                          RequestedProcedureDescription="Remove the finding of pleural effusion.")
    out = create_jobs_for_study(ctx, spooled.StudyInstanceUID, called_ae="X2X", calling_ae="SCU")
    assert ctx.store.get(out.created_jobs[0]).instruction == "Remove the finding of pleural effusion."


# Through `x2x serve` with dcmtk ------------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.slow
def test_rule_private_tag_and_skips_end_to_end(tmp_path, tiny_model_dir, chest_cr_path):
    cr = renumbered_copy(chest_cr_path, tmp_path / "send" / "cr.dcm")
    lateral = renumbered_copy(chest_cr_path, tmp_path / "send" / "lat.dcm", ViewPosition="LL")
    ct = renumbered_copy(Path(get_testdata_file("CT_small.dcm")), tmp_path / "send" / "ct.dcm")
    tagged_src = pydicom.dcmread(chest_cr_path)
    write_private_block(tagged_src, "Remove the finding of cardiomegaly.", seed=9)
    tagged_src.save_as(tmp_path / "tagged-src.dcm")
    tagged = renumbered_copy(tmp_path / "tagged-src.dcm", tmp_path / "send" / "tagged.dcm")

    with run_node(tmp_path, EFFUSION_RULE, model_dir=tiny_model_dir) as node:
        r = storescu(node.port, [cr, lateral, ct], called_ae="X2X_EFFUSION")
        assert r.returncode == 0, r.stderr
        assert store_statuses(r) == ["Success"] * 3
        r = storescu(node.port, tagged, called_ae="X2X")
        assert store_statuses(r) == ["Success"]
        jobs = node.wait_for_jobs(2)
        by_sop = {j["sop_instance_uid"]: j for j in jobs}
        cr_sop = pydicom.dcmread(cr, stop_before_pixels=True).SOPInstanceUID
        tagged_sop = pydicom.dcmread(tagged, stop_before_pixels=True).SOPInstanceUID
        # the rule's instruction as written (issue 14: the editor is prompted with it, not its rewording)
        assert by_sop[cr_sop]["instruction"] == "add the finding of pleural effusion"
        assert by_sop[cr_sop]["seed"] == 3 and by_sop[cr_sop]["called_ae"] == "X2X_EFFUSION"
        assert by_sop[tagged_sop]["instruction"] == "Remove the finding of cardiomegaly."
        assert by_sop[tagged_sop]["seed"] == 9
        skipped = node.wait_for(lambda: len(s := node.study_instances("skipped")) >= 2 and s, 20, "skips")
        reasons = sorted(s["reason"] for s in skipped)
        assert any("view position LL" in r for r in reasons), reasons
        assert any("modality CT" in r for r in reasons), reasons
        # resending the same study creates no second job
        r = storescu(node.port, [cr], called_ae="X2X_EFFUSION")
        assert store_statuses(r) == ["Success"]
        node.wait_for(lambda: "1 already existed" in node.log_text(), 20, "the resend to be evaluated")
        assert len(node.jobs()) == 2
        assert node.stop() == 0  # SIGTERM: clean shutdown
        log = node.log_text()
        assert "DICOM SCP listening on 127.0.0.1:" in log and "x2x.serve: stopped" in log
    assert "study " in log and "association " in log
    patient = pydicom.dcmread(chest_cr_path, stop_before_pixels=True)
    for value in (str(patient.get("PatientName", "")), str(patient.get("PatientID", ""))):
        if value.strip():
            assert value not in log, "patient name/ID must never be logged"


@pytest.mark.integration
@pytest.mark.slow
def test_sigkill_mid_send_then_restart_no_loss_no_duplicates(tmp_path, tiny_model_dir, chest_cr_path):
    study = pydicom.uid.generate_uid()
    files = [renumbered_copy(chest_cr_path, tmp_path / "send" / f"{i:02d}.dcm", study_uid=study, crop=512)
             for i in range(50)]
    with run_node(tmp_path, EFFUSION_RULE, model_dir=tiny_model_dir, receiver_processes=1) as node:
        cmd = ["storescu", "-v", "-R", "-aec", "X2X_EFFUSION", "127.0.0.1", str(node.port), *map(str, files)]
        sender = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  env=dcmtk_env())
        node.wait_for(lambda: len(node.spool_files()) >= 15, 60, "15 instances in the spool")
        node.kill()
        out, _ = sender.communicate(timeout=60)
    # which files got Success: storescu prints "Sending file: X" ... "Received Store Response (Success)"
    succeeded: list[str] = []
    current = None
    for line in out.splitlines():
        if m := re.search(r"Sending file: (\S+)", line):
            current = m.group(1)
        elif "Received Store Response (Success)" in line and current:
            succeeded.append(pydicom.dcmread(current, stop_before_pixels=True).SOPInstanceUID)
    assert 15 <= len(succeeded) < 50, out[-2000:]

    with run_node(tmp_path, EFFUSION_RULE, model_dir=tiny_model_dir, port=node.port,
                  var_dir=node.var_dir) as node2:
        assert not list(node2.spool_dir.rglob("*.part"))
        jobs = node2.wait_for(lambda: len(j := node2.jobs()) >= len(succeeded) and j, 60, "resumed jobs")
        job_sops = [j["sop_instance_uid"] for j in jobs]
        spooled = {p.stem for p in node2.spool_files()}
        for sop in succeeded:
            assert sop in spooled
            assert job_sops.count(sop) == 1
        # resend everything: all 50 end up with exactly one job each
        r = storescu(node2.port, files, called_ae="X2X_EFFUSION")
        assert store_statuses(r) == ["Success"] * 50
        jobs = node2.wait_for(lambda: len(j := node2.jobs()) >= 50 and j, 60, "50 jobs")
        time.sleep(1.5)  # a second evaluation would show up here
        jobs = node2.jobs()
        sops = [j["sop_instance_uid"] for j in jobs]
        assert len(sops) == 50 and len(set(sops)) == 50


# Body Part Examined: what modalities really write ----------------------------------------------------
@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")  # what modalities write, not what the standard says
@pytest.mark.parametrize("value", ["CHEST", "chest", "Thorax", "THORAX", "LUNG", "lungs", "TORSO", "CHEST_PA",
                                   "PORT CHEST", "Tórax", "BRUSTKORB", "poumon", "TORACE", "BRÖSTKORG", ""])
def test_chest_body_part_synonyms_are_eligible(value: str) -> None:
    from pydicom.dataset import Dataset

    from dicom_node.studies.eligibility import skip_reason

    ds = Dataset()
    ds.Modality, ds.ViewPosition, ds.BodyPartExamined = "CR", "PA", value
    assert skip_reason(ds) is None


@pytest.mark.parametrize("value", ["ABDOMEN", "SKULL", "HAND", "KNEE", "CHESTNUT"])
def test_other_body_parts_are_skipped_with_the_value(value: str) -> None:
    from pydicom.dataset import Dataset

    from dicom_node.studies.eligibility import skip_reason

    ds = Dataset()
    ds.Modality, ds.ViewPosition, ds.BodyPartExamined = "DX", "AP", value
    reason = skip_reason(ds)
    assert reason is not None and value in reason


def test_accepted_body_part_is_recorded_with_the_instance(tmp_path, tiny_model_dir, chest_cr_path):
    from dicom_node.studies.records import study_instances

    ctx = _ctx(tmp_path, tiny_model_dir)
    spooled = _spool_copy(ctx, chest_cr_path, tmp_path / "in", BodyPartExamined="Thorax")
    out = create_jobs_for_study(ctx, spooled.StudyInstanceUID, called_ae="X2X_EFFUSION", calling_ae="SCU")
    assert len(out.created_jobs) == 1
    (row,) = study_instances(ctx.db, spooled.StudyInstanceUID)
    assert row.status == "job" and row.body_part == "Thorax"


def test_unknown_called_ae_default_policy_uses_the_default_request(tmp_path, tiny_model_dir, chest_cr_path):
    ctx = _ctx(tmp_path, tiny_model_dir)
    ctx.settings.requests.default_instruction = "Remove the finding of cardiomegaly."
    spooled = _spool_copy(ctx, chest_cr_path, tmp_path / "in")
    ctx.settings.node.unknown_called_ae = "default"
    out = create_jobs_for_study(ctx, spooled.StudyInstanceUID, called_ae="X2X_WRONG", calling_ae="SCU")
    assert ctx.store.get(out.created_jobs[0]).instruction == "Remove the finding of cardiomegaly."


def test_request_error_says_did_you_mean_once(tmp_path, tiny_model_dir, chest_cr_path):
    ctx = _ctx(tmp_path, tiny_model_dir)
    src = tmp_path / "bad.dcm"
    ds = pydicom.dcmread(chest_cr_path)
    write_private_block(ds, "Add the finding of pleural efusion.")
    ds.save_as(src)
    spooled = _spool_copy(ctx, src, tmp_path / "in")
    create_jobs_for_study(ctx, spooled.StudyInstanceUID, called_ae="X2X", calling_ae="SCU")
    rec = study_record(ctx.db, spooled.StudyInstanceUID)
    assert rec is not None and (rec.request_error or "").count("did you mean") == 1, rec.request_error


# Where operators look: x2x studies list|show, x2x jobs list --------------------------------------------
def test_studies_cli_shows_skips_and_request_errors(tmp_path, tiny_model_dir, chest_cr_path):
    import sys

    cfg = tmp_path / "x2x.toml"
    cfg.write_text(f'[paths]\nvar_dir = "{tmp_path / "var"}"\n[model]\npath = "{tiny_model_dir}"\n'
                   '[queue]\nembedded_worker = false\n'
                   '[[rules]]\ncalled_ae = "X2X_EFFUSION"\ninstruction = "Add the finding of pleural effusion."\n')
    ctx = build_context(load_settings(cfg))
    study = pydicom.uid.generate_uid()
    _spool_copy(ctx, chest_cr_path, tmp_path / "a", study_uid=study)
    _spool_copy(ctx, chest_cr_path, tmp_path / "b", study_uid=study, ViewPosition="LL")
    create_jobs_for_study(ctx, study, called_ae="X2X_EFFUSION", calling_ae="MOD1")
    bad_src = tmp_path / "bad.dcm"
    bad = pydicom.dcmread(chest_cr_path)
    write_private_block(bad, "Add the finding of pleural efusion.")
    bad.save_as(bad_src)
    bad_study = _spool_copy(ctx, bad_src, tmp_path / "c").StudyInstanceUID
    create_jobs_for_study(ctx, bad_study, called_ae="X2X", calling_ae="MOD2")

    def x2x(*args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "dicom_node.cli", "-c", str(cfg), *args], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout

    listed = x2x("studies", "list")
    assert study in listed and bad_study in listed
    assert "view position LL is not frontal" in listed
    assert "REQUEST ERROR" in listed and "pleural efusion" in listed
    shown = x2x("studies", "show", study)
    assert "job 1" in shown and "skipped: view position LL" in shown
    jobs = x2x("jobs", "list")
    assert "2 instance(s) not edited, 1 study request(s) refused" in jobs  # the lateral, the bad request
    assert "x2x studies list" in jobs

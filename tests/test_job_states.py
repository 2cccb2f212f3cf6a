"""One job state machine: the transition table is the only rule, `JobStore.transition` the only writer,
and a cancel that lands while a stage runs is never overwritten."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pydicom
import pytest

from dicom_node.config import load_settings
from dicom_node.context import build_context
from dicom_node.edit_params import job_key, resolve_params
from dicom_node.jobs.admin import cancel_job
from dicom_node.jobs.pipeline import run_job
from dicom_node.jobs.states import TERMINAL, TRANSITIONS, Action, JobState
from tests.support.jobs import create_job

ROOT = Path(__file__).resolve().parents[1]


def test_the_table_reaches_every_state_and_done_is_left_only_for_a_new_delivery() -> None:
    reachable = {JobState.RECEIVED} | {rule.target for rule in TRANSITIONS.values()}
    assert reachable == set(JobState)
    leaving_done = [a for a, rule in TRANSITIONS.items() if JobState.DONE in rule.allowed]
    assert leaving_done == [Action.REOPEN], "done is final but for delivering to a new destination"
    for action, rule in TRANSITIONS.items():  # an operator revives (retry) or drops (cancel) a finished job
        if rule.allowed & TERMINAL:
            assert action in (Action.RETRY, Action.CANCEL, Action.REOPEN), action
    assert TRANSITIONS[Action.REOPEN].target is JobState.ENCODED  # back to delivery, never to editing


def test_only_the_store_writes_a_job_state() -> None:
    writers = [str(p.relative_to(ROOT)) for p in (ROOT / "dicom_node").rglob("*.py")
               if re.search(r"update\(\s*Job\b", p.read_text())]
    assert writers == ["dicom_node/jobs/store.py"]


def test_update_refuses_a_state_and_transitions_refuse_wrong_states(tmp_path: Path) -> None:
    ctx = build_context(load_settings(paths={"var_dir": tmp_path}))
    job = create_job(ctx, idempotency_key="k", study_instance_uid="1.2", sop_instance_uid="1.2.3",
                     source_path="/x.dcm", instruction="Add the finding of edema.", state="done")
    with pytest.raises(ValueError, match="transition"):
        ctx.store.update(job.id, state="queued")
    result = ctx.store.transition(job.id, Action.CLAIM)
    assert not result.changed and result.state == "done"


def test_a_cancel_landing_right_after_the_pipeline_looks_leaves_the_job_cancelled(
    tmp_path: Path, tiny_model_dir: Path, chest_cr_path: Path
) -> None:
    """The operator's cancel arrives between the pipeline's last read of the job and its next write
    (here: right after the first read once the edit has finished). Nothing may be sent and the job
    must stay cancelled; on the old code the pipeline's unconditional write ran it on to done."""
    share = tmp_path / "share"
    ctx = build_context(load_settings(
        paths={"var_dir": str(tmp_path / "var")}, model={"path": str(tiny_model_dir), "device": "cpu"},
        edit={"steps": 2, "resolution": 256},
        destinations={"share": {"type": "folder", "path": str(share)}}, send={"default_destination": "share"},
        queue={"edit_isolation": "none"},  # the edit in this process, so that the test can wrap it
    ))
    source = tmp_path / "source.dcm"
    shutil.copy(chest_cr_path, source)
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    instruction = "Add the finding of pleural effusion."
    params = resolve_params(ctx.settings)
    job = create_job(ctx, idempotency_key=job_key(ds.SOPInstanceUID, instruction, "h", 0, params),
                     study_instance_uid=ds.StudyInstanceUID, sop_instance_uid=ds.SOPInstanceUID,
                     source_path=str(source), instruction=instruction, params=params.to_dict(), state="queued")

    editor = ctx.editor()
    real_edit, real_get = editor.edit_batch, ctx.store.get  # the pipeline edits through edit_batch
    edited = {"done": False, "cancelled": False}

    def edit_then_flag(*args, **kwargs):  # type: ignore[no-untyped-def]
        out = real_edit(*args, **kwargs)
        edited["done"] = True
        return out

    def get_then_cancel(job_id: int):  # type: ignore[no-untyped-def]
        seen = real_get(job_id)
        if edited["done"] and not edited["cancelled"]:
            edited["cancelled"] = True
            cancel_job(ctx, job_id)  # lands after this read, before the pipeline's next write
        return seen

    editor.edit_batch = edit_then_flag  # type: ignore[method-assign]
    ctx.store.get = get_then_cancel  # type: ignore[method-assign]
    outcome = run_job(ctx, job.id)
    ctx.store.get = real_get  # type: ignore[method-assign]
    assert edited["cancelled"], "the cancel was delivered"
    assert outcome.state == "cancelled"
    final = ctx.store.get(job.id)
    assert final is not None and final.state == "cancelled"
    assert not list(share.rglob("*.dcm")), "a cancelled job sends nothing"

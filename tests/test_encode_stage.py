"""The encode of the five objects runs in the delivery stage, not the edit stage (issue 17): the edit
stage leaves the edit's arrays in the job's folder (one .npz, editor/result_file.py) and hands over at
once; the delivery stage encodes them in its own memory-limited child process, then sends."""

from __future__ import annotations

import io
import os
import shutil
import signal
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_node.config import load_settings
from dicom_node.context import NodeContext, build_context
from dicom_node.edit_params import job_key, resolve_params
from dicom_node.jobs import leases
from dicom_node.jobs.editing import EditInput, encode_job
from dicom_node.jobs.encode_process import EncodeProcess
from dicom_node.jobs.pipeline import job_results_dir, run_delivery_stage, run_edits, run_job
from dicom_node.jobs.sandbox import SandboxStopping
from dicom_node.jobs.states import Action, JobState
from dicom_node.jobs.sweeper import sweep_once
from dicom_node.results import FILE_NAMES, edit_result_path, encode_results, result_files
from editor import (
    Editor,
    EditParams,
    EditResultFileError,
    load_edit_result,
    save_edit_result,
    source_from_dataset,
)
from tests.support.jobs import create_job

INSTRUCTION = "Add the finding of left pleural effusion."


def _bytes(ds: pydicom.Dataset) -> bytes:
    """The encoded object, less the SC's Date/Time of Secondary Capture (highdicom stamps the moment of
    encoding there, not the edit time)."""
    for keyword in ("DateOfSecondaryCapture", "TimeOfSecondaryCapture"):
        if keyword in ds:
            delattr(ds, keyword)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_an_edit_result_file_gives_back_the_same_five_objects_and_a_torn_one_is_refused(
    tmp_path: Path, tiny_model_dir: Path, chest_cr_path: Path
) -> None:
    source_ds = pydicom.dcmread(chest_cr_path)
    source = source_from_dataset(source_ds)
    editor = Editor.from_pretrained(tiny_model_dir, device="cpu")
    result = editor.edit(source, INSTRUCTION, seed=3, params=EditParams(steps=2, resolution=256))
    path = save_edit_result(result, tmp_path / "edit-result.npz")
    loaded = load_edit_result(path)

    assert loaded.counterfactual.dtype == result.counterfactual.dtype
    for name in ("counterfactual", "relevance", "guidance", "mask", "source_display"):
        assert np.array_equal(getattr(loaded, name), getattr(result, name)), name
    assert loaded.finding_masks.keys() == result.finding_masks.keys()
    assert loaded.summary() == result.summary()
    when = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
    direct = encode_results(source_ds, result, job_key="k", edit_time=when)
    via_file = encode_results(source_ds, loaded, job_key="k", edit_time=when)
    assert list(direct) == list(via_file) == list(FILE_NAMES)
    for kind in direct:
        assert _bytes(direct[kind]) == _bytes(via_file[kind]), f"{kind} differs after the hand-over"

    raw = bytearray(path.read_bytes())
    torn = tmp_path / "torn.npz"
    middle = len(raw) // 2
    torn.write_bytes(bytes(raw[:middle]))  # a crash before the data reached the disk
    with pytest.raises(EditResultFileError):
        load_edit_result(torn)
    raw[middle] ^= 0xFF  # one flipped byte inside an array: zip's CRC refuses it
    torn.write_bytes(bytes(raw))
    with pytest.raises(EditResultFileError, match="unreadable"):
        load_edit_result(torn)
    with pytest.raises(EditResultFileError):
        load_edit_result(tmp_path / "missing.npz")


def _node(tmp_path: Path, tiny_model_dir: Path) -> NodeContext:
    return build_context(load_settings(
        paths={"var_dir": str(tmp_path / "var")}, model={"path": str(tiny_model_dir), "device": "cpu"},
        edit={"steps": 2, "resolution": 256},
        destinations={"share": {"type": "folder", "path": str(tmp_path / "share")}},
        send={"default_destination": "share"}, queue={"edit_isolation": "none"},
    ))


def _queued_job(ctx: NodeContext, tmp_path: Path, chest_cr_path: Path) -> int:
    source = tmp_path / "source.dcm"
    shutil.copy(chest_cr_path, source)
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    params = resolve_params(ctx.settings)
    job = create_job(ctx, idempotency_key=job_key(ds.SOPInstanceUID, INSTRUCTION, "h", 0, params),
                     study_instance_uid=ds.StudyInstanceUID, sop_instance_uid=ds.SOPInstanceUID,
                     source_path=str(source), instruction=INSTRUCTION, params=params.to_dict(), state="queued")
    return job.id


def _edited_job(ctx: NodeContext, tmp_path: Path, chest_cr_path: Path) -> int:
    """A queued job claimed and run through the edit stage (state edited, arrays on disk)."""
    job_id = _queued_job(ctx, tmp_path, chest_cr_path)
    assert leases.claim(ctx.store, job_id, leases.WorkerIdentity.current(), Action.CLAIM)
    assert run_edits(ctx, [job_id])[job_id].state == JobState.EDITED
    return job_id


def test_the_edit_stage_leaves_arrays_and_the_delivery_stage_encodes_and_sends_them(
    tmp_path: Path, tiny_model_dir: Path, chest_cr_path: Path
) -> None:
    ctx = _node(tmp_path, tiny_model_dir)
    job_id = _queued_job(ctx, tmp_path, chest_cr_path)
    me = leases.WorkerIdentity.current()
    folder = job_results_dir(ctx, job_id)

    assert leases.claim(ctx.store, job_id, me, Action.CLAIM)
    assert run_edits(ctx, [job_id])[job_id].state == JobState.EDITED
    assert edit_result_path(folder).is_file()
    assert not list(folder.glob("*.dcm")) and not list(folder.glob("*.png")), "the edit stage encodes nothing"
    edited = ctx.store.get(job_id)
    assert edited is not None and edited.state == "edited" and "edit_s" in edited.timings
    assert edited.output_uids is None or edited.output_uids == {}

    assert not leases.claim(ctx.store, job_id, me, Action.SEND), "an edited job is taken to encode, not to send"
    assert leases.claim(ctx.store, job_id, me, Action.ENCODE)
    outcome = run_delivery_stage(ctx, job_id)
    leases.release(ctx.store, job_id, me)
    assert outcome.state == JobState.DONE
    assert result_files(folder) is not None and (folder / "counterfactual.png").is_file()
    assert not edit_result_path(folder).exists(), "the arrays go once the objects are the record"
    done = ctx.store.get(job_id)
    assert done is not None and set(done.output_uids) == set(FILE_NAMES)
    assert {"edit_s", "encode_s", "send_s"} <= set(done.timings)
    assert len(list((tmp_path / "share").rglob("*.dcm"))) == 5


def test_an_edited_job_whose_arrays_are_gone_is_edited_again(
    tmp_path: Path, tiny_model_dir: Path, chest_cr_path: Path
) -> None:
    ctx = _node(tmp_path, tiny_model_dir)
    job_id = _edited_job(ctx, tmp_path, chest_cr_path)
    me = leases.WorkerIdentity.current()
    arrays = edit_result_path(job_results_dir(ctx, job_id))
    arrays.write_bytes(arrays.read_bytes()[:1000])  # torn, as by a crash right after the hand-over

    assert leases.claim(ctx.store, job_id, me, Action.ENCODE)
    assert run_delivery_stage(ctx, job_id).state == JobState.QUEUED, "back to the edit queue, not failed"
    job = ctx.store.get(job_id)
    assert job is not None and job.last_error is None
    assert run_job(ctx, job_id).state == JobState.DONE
    assert len(list((tmp_path / "share").rglob("*.dcm"))) == 5


def test_the_encode_child_process_encodes_as_in_process_and_is_replaced_when_it_dies(
    tmp_path: Path, tiny_model_dir: Path, chest_cr_path: Path
) -> None:
    ctx = _node(tmp_path, tiny_model_dir)
    job_id = _edited_job(ctx, tmp_path, chest_cr_path)
    job = ctx.store.get(job_id)
    assert job is not None
    arrays = edit_result_path(job_results_dir(ctx, job_id))
    kept = arrays.read_bytes()

    here = tmp_path / "here"
    here.mkdir()
    arrays_here = edit_result_path(here)
    arrays_here.write_bytes(kept)
    in_process = encode_job(EditInput.of(job), here, ctx.settings)

    box = EncodeProcess(ctx.settings).start()
    try:
        first_pid = box.child_pid()
        assert first_pid != os.getpid()
        out = box.encode(EditInput.of(job), job_results_dir(ctx, job_id))
        assert out.uids == in_process.uids
        for kind, path in out.dicom.items():
            a, b = pydicom.dcmread(path), pydicom.dcmread(in_process.dicom[kind])
            pixels = "FloatPixelData" if kind == "pmap" else "PixelData"
            assert a.SOPInstanceUID == b.SOPInstanceUID and a[pixels].value == b[pixels].value, kind

        os.kill(first_pid, signal.SIGKILL)  # the child dies between jobs (the OOM killer, say)
        for path in out.dicom.values():
            path.unlink()
        arrays.write_bytes(kept)
        again = box.encode(EditInput.of(job), job_results_dir(ctx, job_id))  # a new child, the job not lost
        assert again.uids == in_process.uids
        assert box.child_pid() not in (first_pid, os.getpid())
    finally:
        box.stop()
    with pytest.raises(SandboxStopping):  # the worker stops: the job goes back on the delivery queue
        box.encode(EditInput.of(job), job_results_dir(ctx, job_id))


def test_the_sweep_puts_each_orphaned_step_back_where_it_starts(tmp_path: Path) -> None:
    """A worker that died mid-step (no live lease): editing -> queued (edit again), encoding -> edited
    (encode again from the saved arrays, not edit again), sending -> encoded (send again)."""
    ctx = build_context(load_settings(paths={"var_dir": str(tmp_path / "var")}))
    ids = {state: create_job(ctx, idempotency_key=f"k-{state}", study_instance_uid="1.2", sop_instance_uid=f"1.2.{i}",
                             source_path="/x.dcm", instruction="Add the finding of edema.", state=state).id
           for i, state in enumerate(("editing", "encoding", "sending", "edited"))}
    recovered = sweep_once(ctx)
    assert sorted(recovered) == sorted(ids[s] for s in ("editing", "encoding", "sending"))
    states = {state: ctx.store.get(job_id).state for state, job_id in ids.items()}  # type: ignore[union-attr]
    assert states == {"editing": "queued", "encoding": "edited", "sending": "encoded", "edited": "edited"}

"""A complete study becomes jobs: every spooled instance is checked (eligibility), its edit request
worked out (requests) and one job per eligible instance created under its idempotency key, so a resent
study creates no second job. What happened to every instance is recorded (studies/records.py).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from sqlalchemy.exc import SQLAlchemyError

from dicom_node import metrics
from dicom_node.context import NodeContext, resolve_model_path
from dicom_node.db.engine import retry_locked
from dicom_node.edit_params import InvalidEditParams, default_seed, job_key, resolve_params
from dicom_node.inbound.bounds import Limits, check_file
from dicom_node.inbound.spool import Spool
from dicom_node.jobs.deliveries import ensure_delivery
from dicom_node.jobs.queue import enqueue, send_delivery
from dicom_node.jobs.states import Action, JobState
from dicom_node.send import destination_name
from dicom_node.studies import eligibility, requests
from dicom_node.studies.records import (
    INSTANCE_ERROR,
    INSTANCE_INVALID_REQUEST,
    INSTANCE_JOB,
    INSTANCE_NO_REQUEST,
    INSTANCE_SKIPPED,
    INSTANCE_UNREADABLE,
    INVALID_REQUEST,
    NO_REQUEST,
    PROCESSED,
    StudyOutcome,
    record_instance,
    save_outcome,
)
from editor import EditParams, InstructionError, describe_model

log = logging.getLogger("x2x.studies")


@dataclass(frozen=True)
class ExplicitRequest:
    """An edit asked for over the REST API: it replaces whatever the instances ask for."""

    instruction: str
    seed: int | None = None
    destination: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)  # EditParams overrides (e.g. steps)


def _explicit(settings: Any, req: ExplicitRequest) -> requests.EditRequest:
    seed = default_seed(settings, req.seed)
    try:
        params = resolve_params(settings, req.params)
    except InvalidEditParams as exc:
        return requests.EditRequest("api", req.instruction, None, seed, EditParams(), req.destination, str(exc))
    try:
        prompt = requests.edit_prompt(req.instruction)
    except InstructionError as exc:
        return requests.EditRequest("api", req.instruction, None, seed, params, req.destination, str(exc))
    return requests.EditRequest("api", req.instruction, prompt, seed, params, req.destination)


def _deliver_to(ctx: NodeContext, job_id: int, destination: str | None) -> None:
    """Make sure the job's objects go to `destination`: a new delivery for a job past its delivery stage
    reopens it (the edit is not redone); a destination it already has changes nothing."""
    if destination is None:
        return
    _delivery, created = ensure_delivery(ctx, job_id, destination)
    if created and ctx.store.transition(job_id, Action.REOPEN).changed:
        log.info("job %s: new destination %s, delivering without re-editing", job_id, destination)
        send_delivery(ctx, job_id)


def refusal(settings: Any, req: ExplicitRequest, datasets: list[Any]) -> str | None:
    """Why a REST request would be refused (bad instruction or parameters, no eligible instance), worked
    out before anything is written: a refused request leaves the spool and the study's records as they were.
    `datasets`: the instances it is for (pydicom datasets, pixel data not needed)."""
    request = _explicit(settings, req)
    if not request.valid:
        return f"invalid instruction {req.instruction!r}: {request.error}"
    skipped = []
    for ds in datasets:
        reason = eligibility.skip_reason(ds, has_pixel_data="PixelData" in ds)
        if reason is None:
            return None
        skipped.append(f"{ds.get('SOPInstanceUID', '?')}: {reason}")
    return "no eligible instance: " + ("; ".join(skipped) or "no instances")


class ModelUnavailable(RuntimeError):
    """Jobs cannot be keyed because the model cannot be described (missing, unreadable)."""


@dataclass
class _IntakeState:
    requests_seen: list[requests.EditRequest] = field(default_factory=list)
    real_study_uid: str | None = None
    model_id: str | None = None
    model_hash: str | None = None


def _intake_instance(
    ctx: NodeContext, path: Path, row: dict[str, Any], limits: Limits, state: _IntakeState, outcome: StudyOutcome,
    *, called_ae: str | None, calling_ae: str | None, origin: str, explicit: ExplicitRequest | None,
) -> None:
    """One spooled instance: its outcome recorded, and its job created (idempotently) if it gets one."""
    settings = ctx.settings
    db = ctx.db

    def record(status: str, reason: str | None, **extra: Any) -> None:
        retry_locked(db, lambda: record_instance(db, row | {"status": status, "reason": reason, **extra}))

    try:
        check_file(path, limits)  # before pydicom reads it: it recurses into nested sequences
        ds = pydicom.dcmread(path, defer_size=1024)
        sop = str(ds.get("SOPInstanceUID", "") or path.stem)
        state.real_study_uid = str(ds.get("StudyInstanceUID", row["study_instance_uid"]))
        row.update(study_instance_uid=state.real_study_uid, sop_instance_uid=sop,
                   series_instance_uid=str(ds.get("SeriesInstanceUID", "")) or None,
                   modality=str(ds.get("Modality", "")) or None,
                   body_part=str(ds.get("BodyPartExamined", "") or "").strip()[:64] or None)
    except Exception as exc:  # noqa: BLE001 - whatever pydicom raises on a broken file: a reason
        unreadable = f"unreadable: {type(exc).__name__}: {exc}"[:500]
        record(INSTANCE_UNREADABLE, unreadable)
        outcome.skipped.append((path.stem, unreadable))
        return
    reason = eligibility.skip_reason(ds, has_pixel_data="PixelData" in ds)
    if reason is not None:
        record(INSTANCE_SKIPPED, reason)
        outcome.skipped.append((sop, reason))
        return
    request = _explicit(settings, explicit) if explicit is not None else requests.resolve(settings, called_ae, ds)
    if request is None:
        why = "no edit request (no called-AE rule, INSTRUCTX2X block, attribute or default)"
        record(INSTANCE_NO_REQUEST, why)
        outcome.skipped.append((sop, why))
        return
    state.requests_seen.append(request)
    if not request.valid:
        why = f"invalid instruction {request.text[:200]!r}: {request.error}"
        record(INSTANCE_INVALID_REQUEST, why)
        outcome.skipped.append((sop, why))
        outcome.error = why
        return
    if state.model_hash is None:
        try:
            info = describe_model(resolve_model_path(settings))
        except Exception as exc:  # the node's problem, not the instance's: the study is retried
            raise ModelUnavailable(f"the model cannot be described: {type(exc).__name__}: {exc}") from exc
        state.model_id, state.model_hash = info.model_id, info.weights_hash
    instruction, model_hash = request.instruction, state.model_hash
    assert instruction is not None and model_hash is not None
    job, created = ctx.store.create_job(  # retries a locked database itself
        idempotency_key=job_key(sop, instruction, model_hash, request.seed, request.params),
        study_instance_uid=state.real_study_uid,
        series_instance_uid=row.get("series_instance_uid"),
        sop_instance_uid=sop,
        source_path=str(path.resolve()),
        instruction=instruction,
        seed=request.seed,
        params=request.params.to_dict(),
        model_id=state.model_id,
        model_hash=model_hash,
        calling_ae=calling_ae,
        called_ae=called_ae,
        destination=request.destination,
        origin=origin,
    )
    if created:
        outcome.created_jobs.append(job.id)
        metrics.jobs_created_total.inc()
    else:
        outcome.existing_jobs.append(job.id)
    _deliver_to(ctx, job.id, destination_name(settings, requested=request.destination, calling_ae=calling_ae))
    if created or job.state == JobState.RECEIVED:  # created but never queued (e.g. a crash)
        try:
            enqueue(ctx, job.id)
        except Exception as exc:  # the job is recorded; queueing again later recovers it
            log.error("job %s created but could not be queued: %s: %s", job.id, type(exc).__name__, exc)
    record(INSTANCE_JOB, None, job_id=job.id)


def create_jobs_for_study(
    ctx: NodeContext,
    study_uid: str,
    *,
    called_ae: str | None = None,
    calling_ae: str | None = None,
    origin: str = "dimse",
    explicit: ExplicitRequest | None = None,
) -> StudyOutcome:
    """Check every spooled instance of the study and create (idempotently) one job per eligible one.

    `explicit` (REST API) overrides the request found in the data; otherwise requests.resolve decides
    per instance. New jobs are enqueued.
    """
    settings = ctx.settings
    files = Spool(settings.spool_dir).instances(study_uid)
    outcome = StudyOutcome(study_uid, PROCESSED)

    limits = Limits.from_node(settings.node)
    state = _IntakeState()
    for path in files:
        row: dict[str, Any] = {"path": str(path), "study_instance_uid": study_uid}
        try:
            _intake_instance(ctx, path, row, limits, state, outcome, called_ae=called_ae, calling_ae=calling_ae,
                             origin=origin, explicit=explicit)
        except (SQLAlchemyError, ModelUnavailable):
            raise  # the node cannot work right now: the whole study is retried (studies/tracker.py)
        except Exception as exc:  # noqa: BLE001 - one bad instance never blocks the rest of its study
            why = f"could not be processed: {type(exc).__name__}: {exc}"[:500]
            log.warning("study %s: instance %s %s", study_uid, path.stem, why)
            failed_row = row | {"status": INSTANCE_ERROR, "reason": why}
            retry_locked(ctx.db, functools.partial(record_instance, ctx.db, failed_row))
            outcome.skipped.append((str(row.get("sop_instance_uid") or path.stem), why))
    requests_seen, real_study_uid = state.requests_seen, state.real_study_uid or study_uid

    metrics.instances_skipped_total.inc(len(outcome.skipped))
    if outcome.error is not None and not (outcome.created_jobs or outcome.existing_jobs):
        outcome.state = INVALID_REQUEST
    elif not requests_seen and not (outcome.created_jobs or outcome.existing_jobs):
        outcome.state = NO_REQUEST
    first = next((r for r in requests_seen if r.valid), requests_seen[0] if requests_seen else None)
    retry_locked(ctx.db, lambda: save_outcome(
        ctx.db, real_study_uid, outcome, calling_ae=calling_ae, called_ae=called_ae, instance_count=len(files),
        request_source=first.source if first else None,
        instruction=(first.instruction or first.text) if first else None,
    ))
    return outcome

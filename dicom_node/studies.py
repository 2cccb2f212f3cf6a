"""Study completion and turning a complete study into jobs.

A study is complete when every association that brought it instances has ended and no instance has
arrived for `node.study_quiet_seconds`. Then each instance in the spool is checked (eligibility), its
edit request worked out (edit_requests) and one job per eligible instance created with an idempotency
key, so a resent study creates no second job. What happened to every instance is recorded in the
`study_instances` table (job id, or the reason it was skipped); the study's own state, request and any
invalid-instruction message in `studies`.

Restart safety: the receive path only writes the spool. At start `rescan()` compares the spool with
`study_instances`; any study with an instance not yet recorded is resumed (completed after the quiet
period, with the called AE(s) remembered in the spool's `.origin-*.json` files).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from sqlalchemy import DateTime, Integer, String, Text, select
from sqlalchemy.orm import Mapped, mapped_column

from dicom_node import edit_requests, eligibility, metrics
from dicom_node.context import NodeContext, resolve_model_path
from dicom_node.jobs.store import RECEIVED, Base, create_tables, idempotency_key, utcnow
from dicom_node.receive import AssociationEnded, AssociationRejected, InstanceReceived, InstanceRefused
from dicom_node.spool import Spool

# STOW-RS instances enter the same tracker as C-STORE ones under this pseudo calling AE title.
STOW_CALLING_AE = "DICOMWEB"

log = logging.getLogger("x2x.studies")

# Study states
RECEIVING = "receiving"
PROCESSED = "processed"  # jobs created (possibly zero, see counts)
NO_REQUEST = "no-request"  # nothing asked for an edit
INVALID_REQUEST = "invalid-request"  # the instruction did not parse; request_error says why
ERROR = "error"  # processing failed (e.g. the model cannot be described); retried on restart

# Instance outcomes
INSTANCE_JOB = "job"
INSTANCE_SKIPPED = "skipped"
INSTANCE_NO_REQUEST = "no-request"
INSTANCE_INVALID_REQUEST = "invalid-request"
INSTANCE_UNREADABLE = "unreadable"


class StudyRecord(Base):
    __tablename__ = "studies"

    study_instance_uid: Mapped[str] = mapped_column(String(128), primary_key=True)
    state: Mapped[str] = mapped_column(String(20), default=RECEIVING, index=True)
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    called_ae: Mapped[str | None] = mapped_column(String(16))
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    jobs_created: Mapped[int] = mapped_column(Integer, default=0)
    skipped_count: Mapped[int] = mapped_column(Integer, default=0)
    request_source: Mapped[str | None] = mapped_column(String(20))
    instruction: Mapped[str | None] = mapped_column(Text)
    request_error: Mapped[str | None] = mapped_column(Text)
    first_received_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    last_received_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    completed_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)

    def to_dict(self) -> dict[str, Any]:
        return {
            c.name: (v.isoformat() + "Z" if isinstance(v := getattr(self, c.name), dt.datetime) else v)
            for c in self.__table__.columns
        }


class StudyInstance(Base):
    __tablename__ = "study_instances"

    path: Mapped[str] = mapped_column(Text, primary_key=True)  # spool file
    study_instance_uid: Mapped[str] = mapped_column(String(128), index=True)
    series_instance_uid: Mapped[str | None] = mapped_column(String(128))
    sop_instance_uid: Mapped[str | None] = mapped_column(String(128), index=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(20), index=True)
    reason: Mapped[str | None] = mapped_column(Text)
    job_id: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)

    def to_dict(self) -> dict[str, Any]:
        return {
            c.name: (v.isoformat() + "Z" if isinstance(v := getattr(self, c.name), dt.datetime) else v)
            for c in self.__table__.columns
        }


@dataclass
class StudyOutcome:
    study_uid: str
    state: str
    created_jobs: list[int] = field(default_factory=list)
    existing_jobs: list[int] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (sop uid, reason)
    error: str | None = None


_tables_ready: set[int] = set()


def ensure_tables(ctx: NodeContext) -> None:
    """Create this module's tables (the job store's create_all may have run before they were defined)."""
    engine = ctx.store.engine
    if id(engine) not in _tables_ready:
        tables: list[Any] = [StudyRecord.__table__, StudyInstance.__table__]
        create_tables(engine, tables)
        _tables_ready.add(id(engine))


# Processing a complete study ----------------------------------------------------------------------
def _record_instance(ctx: NodeContext, row: dict[str, Any]) -> None:
    with ctx.store.session() as s:
        s.merge(StudyInstance(**row))


def _model_identity(ctx: NodeContext) -> tuple[str, str]:
    from editor.model import describe_model

    info = describe_model(resolve_model_path(ctx.settings))
    return info.model_id, info.weights_hash


def create_jobs_for_study(
    ctx: NodeContext,
    study_uid: str,
    *,
    called_ae: str | None = None,
    calling_ae: str | None = None,
    origin: str = "dimse",
    instruction: str | None = None,
    seed: int | None = None,
    destination: str | None = None,
) -> StudyOutcome:
    """Check every spooled instance of the study and create (idempotently) one job per eligible one.

    `instruction` (with optional `seed` / `destination`) overrides the request found in the data,
    for the REST API; otherwise edit_requests.resolve decides per instance. New jobs are enqueued.
    """
    from dicom_node.jobs import dispatch

    ensure_tables(ctx)
    settings = ctx.settings
    spool = Spool(settings.spool_dir)
    files = spool.instances(study_uid)
    outcome = StudyOutcome(study_uid, PROCESSED)
    model: tuple[str, str] | None = None
    requests_seen: list[edit_requests.EditRequest] = []
    real_study_uid = study_uid

    for path in files:
        row: dict[str, Any] = {"path": str(path), "study_instance_uid": study_uid}
        try:
            ds = pydicom.dcmread(path, defer_size=1024)
            sop = str(ds.get("SOPInstanceUID", "") or path.stem)
            real_study_uid = str(ds.get("StudyInstanceUID", study_uid))
            row.update(study_instance_uid=real_study_uid, sop_instance_uid=sop,
                       series_instance_uid=str(ds.get("SeriesInstanceUID", "")) or None,
                       modality=str(ds.get("Modality", "")) or None)
        except Exception as exc:
            unreadable = f"unreadable: {type(exc).__name__}: {exc}"[:500]
            _record_instance(ctx, row | {"status": INSTANCE_UNREADABLE, "reason": unreadable})
            outcome.skipped.append((path.stem, unreadable))
            continue
        reason = eligibility.skip_reason(ds, has_pixel_data="PixelData" in ds)
        if reason is not None:
            _record_instance(ctx, row | {"status": INSTANCE_SKIPPED, "reason": reason})
            outcome.skipped.append((sop, reason))
            continue
        request: edit_requests.EditRequest | None
        if instruction is not None:
            request = _explicit_request(settings, instruction, seed, destination)
        else:
            request = edit_requests.resolve(settings, called_ae, ds)
        if request is None:
            why = "no edit request (no called-AE rule, INSTRUCTX2X block, attribute or default)"
            _record_instance(ctx, row | {"status": INSTANCE_NO_REQUEST, "reason": why})
            outcome.skipped.append((sop, why))
            continue
        requests_seen.append(request)
        if not request.valid:
            why = f"invalid instruction {request.text!r}: {request.error}"
            _record_instance(ctx, row | {"status": INSTANCE_INVALID_REQUEST, "reason": why})
            outcome.skipped.append((sop, why))
            outcome.error = why
            continue
        if model is None:
            model = _model_identity(ctx)
        model_id, model_hash = model
        assert request.instruction is not None
        key = idempotency_key(sop, request.instruction, model_hash, request.seed, request.params)
        job, created = ctx.store.create_job(
            idempotency_key=key,
            study_instance_uid=real_study_uid,
            series_instance_uid=row.get("series_instance_uid"),
            sop_instance_uid=sop,
            source_path=str(path),
            instruction=request.instruction,
            seed=request.seed,
            params=request.params,
            model_id=model_id,
            model_hash=model_hash,
            calling_ae=calling_ae,
            called_ae=called_ae,
            destination=request.destination,
            origin=origin,
            state=RECEIVED,
        )
        if created:
            outcome.created_jobs.append(job.id)
            metrics.jobs_created_total.inc()
        else:
            outcome.existing_jobs.append(job.id)
        if created or job.state == RECEIVED:  # (RECEIVED: created but never queued, e.g. a crash)
            try:
                dispatch.enqueue(ctx, job.id)
            except Exception as exc:  # the job is recorded; queueing again later recovers it
                log.error("job %s created but could not be queued: %s: %s", job.id, type(exc).__name__, exc)
        _record_instance(ctx, row | {"status": INSTANCE_JOB, "reason": None, "job_id": job.id})

    metrics.instances_skipped_total.inc(len(outcome.skipped))
    if outcome.error is not None and not (outcome.created_jobs or outcome.existing_jobs):
        outcome.state = INVALID_REQUEST
    elif not requests_seen and not (outcome.created_jobs or outcome.existing_jobs):
        outcome.state = NO_REQUEST
    first = next((r for r in requests_seen if r.valid), requests_seen[0] if requests_seen else None)
    with ctx.store.session() as s:
        rec = s.get(StudyRecord, real_study_uid) or StudyRecord(study_instance_uid=real_study_uid)
        rec.state = outcome.state
        rec.calling_ae = calling_ae or rec.calling_ae
        rec.called_ae = called_ae or rec.called_ae
        rec.instance_count = len(files)
        rec.jobs_created = len(outcome.created_jobs) + len(outcome.existing_jobs)
        rec.skipped_count = len(outcome.skipped)
        rec.request_source = first.source if first else None
        rec.instruction = (first.instruction or first.text) if first else None
        rec.request_error = outcome.error
        rec.completed_at = utcnow()
        s.merge(rec)
    return outcome


def _explicit_request(
    settings: Any, instruction: str, seed: int | None, destination: str | None
) -> edit_requests.EditRequest:
    from editor.instructions import InstructionError

    params = edit_requests.edit_params(settings)
    seed_value = int(seed if seed is not None else settings.edit.seed)
    try:
        canonical = edit_requests.canonicalise(instruction)
    except InstructionError as exc:
        return edit_requests.EditRequest("api", instruction, None, seed_value, params, destination, str(exc))
    return edit_requests.EditRequest("api", instruction, canonical, seed_value, params, destination)


def study_record(ctx: NodeContext, study_uid: str) -> StudyRecord | None:
    with ctx.store.session() as s:
        return s.get(StudyRecord, study_uid)


def study_instances(ctx: NodeContext, study_uid: str | None = None, status: str | None = None,
                    limit: int = 1000) -> list[StudyInstance]:
    """Recorded instance outcomes, e.g. `status="skipped"` for the skipped-with-reason list."""
    q = select(StudyInstance).order_by(StudyInstance.updated_at.desc()).limit(limit)
    if study_uid is not None:
        q = q.where(StudyInstance.study_instance_uid == study_uid)
    if status is not None:
        q = q.where(StudyInstance.status == status)
    with ctx.store.session() as s:
        return list(s.scalars(q))


# Tracking completion ---------------------------------------------------------------------------
@dataclass
class _Pending:
    open_associations: set[str] = field(default_factory=set)
    origins: set[tuple[str | None, str | None]] = field(default_factory=set)  # (called, calling)
    last_instance: float = field(default_factory=time.monotonic)
    new_instances: int = 0
    first_seen_utc: dt.datetime = field(default_factory=utcnow)
    last_seen_utc: dt.datetime = field(default_factory=utcnow)
    dirty: bool = True  # DB row needs an update


class StudyTracker:
    """Receives events from the SCP (any thread), completes studies on its own timer thread."""

    def __init__(self, ctx: NodeContext, quiet_seconds: float | None = None, tick_seconds: float = 0.2):
        self.ctx = ctx
        ensure_tables(ctx)
        self.spool = Spool(ctx.settings.spool_dir)
        self.quiet_seconds = ctx.settings.node.study_quiet_seconds if quiet_seconds is None else quiet_seconds
        self.tick_seconds = tick_seconds
        self._pending: dict[str, _Pending] = {}
        self._assoc_studies: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # events (cheap: called on the receive path) ------------------------------------------------
    def instance_received(self, study_uid: str, sop_uid: str, path: str | Path, calling_ae: str | None,
                          called_ae: str | None, association_id: str | None) -> None:
        with self._lock:
            p = self._pending.get(study_uid)
            if p is None:
                p = self._pending[study_uid] = _Pending()
                log.info("study %s: receiving (calling AE %r -> called AE %r)", study_uid, calling_ae,
                         called_ae)
            if association_id is not None:
                p.open_associations.add(association_id)
                self._assoc_studies.setdefault(association_id, set()).add(study_uid)
            p.origins.add((called_ae, calling_ae))
            p.last_instance = time.monotonic()
            p.last_seen_utc = utcnow()
            p.new_instances += 1
            p.dirty = True

    def association_released(self, association_id: str) -> None:
        with self._lock:
            for study_uid in self._assoc_studies.pop(association_id, set()):
                p = self._pending.get(study_uid)
                if p is not None:
                    p.open_associations.discard(association_id)
                    # the quiet period runs from the later of last instance and release
                    p.last_instance = time.monotonic()

    def handle(self, event: Any) -> None:
        """Sink for dicom_node.receive events (also counts the inbound metrics)."""
        if isinstance(event, InstanceReceived):
            metrics.instances_received_total.labels("duplicate" if event.duplicate else "stored").inc()
            self.instance_received(event.study_uid, event.sop_uid, event.path, event.calling_ae,
                                   event.called_ae, event.association_id)
        elif isinstance(event, AssociationEnded):
            self.association_released(event.association_id)
        elif isinstance(event, AssociationRejected):
            metrics.associations_rejected_total.inc()
        elif isinstance(event, InstanceRefused):
            metrics.instances_refused_total.labels(event.status).inc()

    # restart ------------------------------------------------------------------------------------
    def rescan(self) -> list[str]:
        """Resume every spooled study with an instance not yet recorded; returns their UIDs."""
        removed = self.spool.remove_stale_temp_files()
        if removed:
            log.info("spool: removed %d unacknowledged temp file(s) left by a previous run", removed)
        resumed = []
        for study in self.spool.iter_studies():
            if not study.instances:
                continue
            with self.ctx.store.session() as s:
                known = set(s.scalars(select(StudyInstance.path).where(
                    StudyInstance.path.in_([str(p) for p in study.instances]))))
            missing = [p for p in study.instances if str(p) not in known]
            if not missing:
                continue
            with self._lock:
                p = self._pending.setdefault(study.study_uid, _Pending())
                p.new_instances += len(missing)
                for origin in study.origins or [{}]:
                    p.origins.add((origin.get("called_ae"), origin.get("calling_ae")))
            resumed.append(study.study_uid)
            log.info("study %s: resumed after restart (%d instance(s) not yet turned into jobs)",
                     study.study_uid, len(missing))
        return resumed

    # completion ---------------------------------------------------------------------------------
    def due(self, now: float | None = None) -> list[str]:
        now = time.monotonic() if now is None else now
        with self._lock:
            return [uid for uid, p in self._pending.items()
                    if not p.open_associations and now - p.last_instance >= self.quiet_seconds]

    def poll_once(self) -> list[StudyOutcome]:
        self._flush_receiving_rows()
        outcomes = []
        for study_uid in self.due():
            with self._lock:
                p = self._pending.get(study_uid)
                if p is None or p.open_associations:
                    continue
                origins = sorted(p.origins, key=lambda o: (o[0] or "", o[1] or "")) or [(None, None)]
                count = p.new_instances
                del self._pending[study_uid]
            metrics.studies_completed_total.inc()
            log.info("study %s: complete (%d new instance(s), quiet for %.1f s)", study_uid, count,
                     self.quiet_seconds)
            for called, calling in origins:
                outcomes.append(self._process(study_uid, called, calling))
        return outcomes

    def _process(self, study_uid: str, called: str | None, calling: str | None) -> StudyOutcome:
        origin = "stow" if calling == STOW_CALLING_AE else "dimse"
        try:
            out = create_jobs_for_study(self.ctx, study_uid, called_ae=called, calling_ae=calling, origin=origin)
        except Exception as exc:
            log.exception("study %s: processing failed", study_uid)
            with self.ctx.store.session() as s:
                rec = s.get(StudyRecord, study_uid) or StudyRecord(study_instance_uid=study_uid)
                rec.state = ERROR
                rec.request_error = f"{type(exc).__name__}: {exc}"[:2000]
                s.merge(rec)
            return StudyOutcome(study_uid, ERROR, error=str(exc))
        log.info(
            "study %s: %s via called AE %r: %d job(s) created, %d already existed, %d skipped%s",
            study_uid, out.state, called, len(out.created_jobs), len(out.existing_jobs), len(out.skipped),
            f"; request error: {out.error}" if out.error else "",
        )
        for sop, reason in out.skipped[:20]:
            log.info("study %s: instance %s skipped: %s", study_uid, sop, reason)
        return out

    def _flush_receiving_rows(self) -> None:
        with self._lock:
            dirty = [(uid, p.first_seen_utc, p.last_seen_utc, p.origins.copy())
                     for uid, p in self._pending.items() if p.dirty]
            for uid, *_ in dirty:
                self._pending[uid].dirty = False
        if not dirty:
            return
        with self.ctx.store.session() as s:
            for uid, first, last, origins in dirty:
                rec = s.get(StudyRecord, uid)
                if rec is None:
                    rec = StudyRecord(study_instance_uid=uid, first_received_at=first)
                    s.add(rec)
                rec.state = RECEIVING
                rec.last_received_at = last
                called, calling = sorted(origins, key=lambda o: (o[0] or "", o[1] or ""))[-1]
                rec.called_ae, rec.calling_ae = called, calling

    def pending(self) -> list[str]:
        with self._lock:
            return list(self._pending)

    # thread -------------------------------------------------------------------------------------
    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="x2x-study-tracker", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.tick_seconds):
            try:
                self.poll_once()
            except Exception:
                log.exception("study tracker tick failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        try:  # keep the "receiving" rows current; pending studies resume from the spool next start
            self._flush_receiving_rows()
        except Exception:
            log.exception("study tracker: final flush failed")

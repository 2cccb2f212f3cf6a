"""Study completion: a study is complete when every association that brought it instances has ended
and no instance has arrived for `node.study_quiet_seconds`; then it is processed (studies/intake.py).

Restart safety: the receive path only writes the spool. At start `rescan()` compares the spool with
`study_instances`; any study with an instance not yet recorded is resumed (completed after the quiet
period, with the called AE(s) and origins remembered in the spool's `.origin-*.json` files).

A completion that fails (the database locked or unreachable, the model missing: per-instance problems
never fail it, see studies/intake.py) keeps the study pending and retries it with backoff (2 s,
doubling, at most RETRY_MAX_S); `retrying()` says which studies wait and why, and GET /studies shows
them with that reason even while the database cannot be written.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass, field

from dicom_node import metrics
from dicom_node.context import NodeContext
from dicom_node.db.engine import retry_locked
from dicom_node.db.tables import StudyRecord, utcnow
from dicom_node.inbound.events import DIMSE, AssociationEnded, InstanceReceived, ReceiveEvent, count_receive_event
from dicom_node.inbound.spool import Spool
from dicom_node.studies.intake import create_jobs_for_study
from dicom_node.studies.records import ERROR, RECEIVING, RETRYING, StudyOutcome, recorded_paths, save_error

log = logging.getLogger("x2x.studies")

# (called AE, calling AE, origin) of the senders of a study
Origin = tuple[str | None, str | None, str]


def _origin_order(o: Origin) -> tuple[str, str, str]:
    return (o[0] or "", o[1] or "", o[2])


@dataclass
class _Pending:
    open_associations: set[str] = field(default_factory=set)
    origins: set[Origin] = field(default_factory=set)
    last_instance: float = field(default_factory=time.monotonic)
    new_instances: int = 0
    first_seen_utc: dt.datetime = field(default_factory=utcnow)
    last_seen_utc: dt.datetime = field(default_factory=utcnow)
    dirty: bool = True  # DB row needs an update
    attempts: int = 0  # failed completions so far
    retry_at: float = 0.0  # monotonic time of the next completion attempt
    last_error: str | None = None
    failed_since_utc: dt.datetime | None = None


RETRY_FIRST_S = 2.0
RETRY_MAX_S = 300.0


class StudyTracker:
    """Receives events from the inbound stage (any thread), completes studies on its own timer thread."""

    def __init__(self, ctx: NodeContext, quiet_seconds: float | None = None, tick_seconds: float = 0.2):
        self.ctx = ctx
        self.spool = Spool(ctx.settings.spool_dir)
        self.quiet_seconds = ctx.settings.node.study_quiet_seconds if quiet_seconds is None else quiet_seconds
        self.tick_seconds = tick_seconds
        self._pending: dict[str, _Pending] = {}
        self._assoc_studies: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # events (cheap: called on the receive path) ------------------------------------------------
    def instance_received(self, event: InstanceReceived) -> None:
        with self._lock:
            p = self._pending.get(event.study_uid)
            if p is None:
                p = self._pending[event.study_uid] = _Pending()
                log.info("study %s: receiving (%s, calling AE %r -> called AE %r)", event.study_uid, event.origin,
                         event.calling_ae, event.called_ae)
            p.open_associations.add(event.association_id)
            self._assoc_studies.setdefault(event.association_id, set()).add(event.study_uid)
            p.origins.add((event.called_ae, event.calling_ae, event.origin))
            p.last_instance = time.monotonic()
            p.last_seen_utc = utcnow()
            p.new_instances += 1
            p.dirty = True

    def association_ended(self, association_id: str) -> None:
        with self._lock:
            for study_uid in self._assoc_studies.pop(association_id, set()):
                p = self._pending.get(study_uid)
                if p is not None:
                    p.open_associations.discard(association_id)
                    # the quiet period runs from the later of last instance and release
                    p.last_instance = time.monotonic()

    def handle(self, event: ReceiveEvent) -> None:
        """Sink for dicom_node.inbound events (also counts the inbound metrics)."""
        count_receive_event(event)
        if isinstance(event, InstanceReceived):
            self.instance_received(event)
        elif isinstance(event, AssociationEnded):
            self.association_ended(event.association_id)

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
            known = recorded_paths(self.ctx.db, [str(p) for p in study.instances])
            missing = [p for p in study.instances if str(p) not in known]
            if not missing:
                continue
            with self._lock:
                p = self._pending.setdefault(study.study_uid, _Pending())
                p.new_instances += len(missing)
                for origin in study.origins or [{}]:
                    p.origins.add((origin.get("called_ae"), origin.get("calling_ae"), origin.get("origin") or DIMSE))
            resumed.append(study.study_uid)
            log.info("study %s: resumed after restart (%d instance(s) not yet turned into jobs)",
                     study.study_uid, len(missing))
        return resumed

    # completion ---------------------------------------------------------------------------------
    def due(self, now: float | None = None) -> list[str]:
        now = time.monotonic() if now is None else now
        with self._lock:
            return [uid for uid, p in self._pending.items()
                    if not p.open_associations and now - p.last_instance >= self.quiet_seconds
                    and now >= p.retry_at]

    def poll_once(self) -> list[StudyOutcome]:
        try:
            self._flush_receiving_rows()
        except Exception as exc:  # noqa: BLE001 - the rows are written again next tick (still dirty)
            log.warning("study tracker: could not record receiving studies: %s: %s", type(exc).__name__, exc)
        outcomes = []
        for study_uid in self.due():
            with self._lock:
                p = self._pending.get(study_uid)
                if p is None or p.open_associations:
                    continue
                origins = sorted(p.origins, key=_origin_order) or [(None, None, DIMSE)]
                count = p.new_instances
                del self._pending[study_uid]  # put back below if its completion fails
            if p.attempts == 0:
                metrics.studies_completed_total.inc()
                log.info("study %s: complete (%d new instance(s), quiet for %.1f s)", study_uid, count,
                         self.quiet_seconds)
            try:
                for called, calling, origin in origins:
                    outcomes.append(self._process(study_uid, called, calling, origin))
            except Exception as exc:  # noqa: BLE001 - retried with backoff, never dropped
                self._retry_later(study_uid, p, exc)
                outcomes.append(StudyOutcome(study_uid, ERROR, error=p.last_error))
        return outcomes

    def _retry_later(self, study_uid: str, p: _Pending, exc: BaseException) -> None:
        p.attempts += 1
        p.last_error = f"{type(exc).__name__}: {exc}"[:500]
        p.failed_since_utc = p.failed_since_utc or utcnow()
        delay = min(RETRY_FIRST_S * 2 ** (p.attempts - 1), RETRY_MAX_S)
        p.retry_at = time.monotonic() + delay
        log.error("study %s: completion failed (attempt %d), retrying in %.0f s: %s", study_uid, p.attempts, delay,
                  p.last_error)
        with self._lock:
            newer = self._pending.get(study_uid)
            if newer is not None:  # more instances arrived meanwhile: one pending entry for both
                p.open_associations |= newer.open_associations
                p.origins |= newer.origins
                p.new_instances += newer.new_instances
                p.last_instance = max(p.last_instance, newer.last_instance)
            self._pending[study_uid] = p
        try:  # best effort: the database may be what failed
            save_error(self.ctx.db, study_uid, f"completion failed (attempt {p.attempts}, retrying): "
                                               f"{p.last_error}")
        except Exception as save_exc:  # noqa: BLE001 - GET /studies shows it from retrying() instead
            log.warning("study %s: could not record the failure either: %s", study_uid, type(save_exc).__name__)

    def retrying(self) -> dict[str, dict[str, object]]:
        """Studies whose completion failed and waits for its next attempt: uid -> attempts, reason, when."""
        now = time.monotonic()
        with self._lock:
            return {
                uid: {"state": RETRYING, "completion_attempts": p.attempts, "completion_error": p.last_error,
                      "next_attempt_in_s": round(max(0.0, p.retry_at - now), 1),
                      "failing_since": p.failed_since_utc.isoformat() + "Z" if p.failed_since_utc else None}
                for uid, p in self._pending.items() if p.attempts
            }

    def _process(self, study_uid: str, called: str | None, calling: str | None, origin: str) -> StudyOutcome:
        out = create_jobs_for_study(self.ctx, study_uid, called_ae=called, calling_ae=calling, origin=origin)
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
        try:
            retry_locked(self.ctx.db, lambda: self._write_receiving_rows(dirty))
        except Exception:
            with self._lock:  # write them next tick
                for uid, *_ in dirty:
                    if uid in self._pending:
                        self._pending[uid].dirty = True
            raise

    def _write_receiving_rows(self, dirty: list[tuple[str, dt.datetime, dt.datetime, set[Origin]]]) -> None:
        with self.ctx.db.session() as s:
            for uid, first, last, origins in dirty:
                rec = s.get(StudyRecord, uid)
                if rec is None:
                    rec = StudyRecord(study_instance_uid=uid, first_received_at=first)
                    s.add(rec)
                rec.state = RECEIVING
                rec.last_received_at = last
                called, calling, _origin = sorted(origins, key=_origin_order)[-1]
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


class ImmediateCompletion:
    """A sink without a quiet period, for an API running without a node (tests, embedding): a study is
    processed as soon as the HTTP request that brought it ends."""

    def __init__(self, ctx: NodeContext):
        self.ctx = ctx
        self._studies: dict[str, set[tuple[str, str]]] = {}  # association -> {(study, origin)}
        self._lock = threading.Lock()

    def handle(self, event: ReceiveEvent) -> None:
        count_receive_event(event)
        if isinstance(event, InstanceReceived):
            with self._lock:
                self._studies.setdefault(event.association_id, set()).add((event.study_uid, event.origin))
        elif isinstance(event, AssociationEnded):
            with self._lock:
                studies = self._studies.pop(event.association_id, set())
            for study_uid, origin in sorted(studies):
                metrics.studies_completed_total.inc()
                create_jobs_for_study(self.ctx, study_uid, called_ae=event.called_ae, origin=origin)

"""What the node remembers about studies: their state and request (`studies`), and what became of every
instance (`study_instances`: its job, or why it was skipped). Tables: dicom_node/db/tables.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from dicom_node.db.engine import Database
from dicom_node.db.tables import StudyInstance, StudyRecord, utcnow

# Study states
RECEIVING = "receiving"
PROCESSED = "processed"  # jobs created (possibly zero, see counts)
NO_REQUEST = "no-request"  # nothing asked for an edit
INVALID_REQUEST = "invalid-request"  # the instruction did not parse; request_error says why
ERROR = "error"  # processing failed (e.g. the model cannot be described, the database locked); retried
RETRYING = "retrying"  # shown by GET /studies for a study the tracker retries (see StudyTracker.retrying)

# Instance outcomes
INSTANCE_JOB = "job"
INSTANCE_SKIPPED = "skipped"
INSTANCE_NO_REQUEST = "no-request"
INSTANCE_INVALID_REQUEST = "invalid-request"
INSTANCE_UNREADABLE = "unreadable"
INSTANCE_ERROR = "error"  # evaluating it failed (the reason says how); the rest of the study went on


@dataclass
class StudyOutcome:
    study_uid: str
    state: str
    created_jobs: list[int] = field(default_factory=list)
    existing_jobs: list[int] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (sop uid, reason)
    error: str | None = None


def record_instance(db: Database, row: dict[str, Any]) -> None:
    with db.session() as s:
        s.merge(StudyInstance(**row))


def save_outcome(
    db: Database, study_uid: str, outcome: StudyOutcome, *, calling_ae: str | None, called_ae: str | None,
    instance_count: int, request_source: str | None, instruction: str | None,
) -> None:
    """The study's row after it was processed."""
    with db.session() as s:
        rec = s.get(StudyRecord, study_uid) or StudyRecord(study_instance_uid=study_uid)
        rec.state = outcome.state
        rec.calling_ae = calling_ae or rec.calling_ae
        rec.called_ae = called_ae or rec.called_ae
        rec.instance_count = instance_count
        rec.jobs_created = len(outcome.created_jobs) + len(outcome.existing_jobs)
        rec.skipped_count = len(outcome.skipped)
        rec.request_source = request_source
        rec.instruction = instruction
        rec.request_error = outcome.error
        rec.completed_at = utcnow()
        s.merge(rec)


def save_error(db: Database, study_uid: str, error: str) -> None:
    """The study's row after a failed completion (state error, the reason in request_error)."""
    with db.session() as s:
        rec = s.get(StudyRecord, study_uid) or StudyRecord(study_instance_uid=study_uid)
        rec.state = ERROR
        rec.request_error = error[:2000]
        s.merge(rec)


def study_record(db: Database, study_uid: str) -> StudyRecord | None:
    with db.session() as s:
        return s.get(StudyRecord, study_uid)


def list_studies(db: Database, *, limit: int = 100, offset: int = 0, state: str | None = None) -> list[StudyRecord]:
    q = select(StudyRecord).order_by(StudyRecord.updated_at.desc()).limit(limit).offset(offset)
    if state is not None:
        q = q.where(StudyRecord.state == state)
    with db.session() as s:
        return list(s.scalars(q))


def not_edited_counts(db: Database) -> tuple[int, int]:
    """(instances that got no job, studies whose request was refused): what `x2x jobs list` cannot show."""
    with db.session() as s:
        instances = s.scalar(select(func.count()).select_from(StudyInstance)
                             .where(StudyInstance.status != INSTANCE_JOB)) or 0
        studies = s.scalar(select(func.count()).select_from(StudyRecord)
                           .where(StudyRecord.request_error.is_not(None))) or 0
    return int(instances), int(studies)


def skip_summary(db: Database, study_uids: list[str]) -> dict[str, list[str]]:
    """Study UID -> the distinct reasons its instances were not edited (for tables of many studies)."""
    if not study_uids:
        return {}
    q = (select(StudyInstance.study_instance_uid, StudyInstance.reason)
         .where(StudyInstance.study_instance_uid.in_(study_uids), StudyInstance.status != INSTANCE_JOB))
    out: dict[str, list[str]] = {}
    with db.session() as s:
        for uid, reason in s.execute(q):
            reasons = out.setdefault(uid, [])
            if reason and reason not in reasons:
                reasons.append(reason)
    return out


def study_instances(db: Database, study_uid: str | None = None, status: str | None = None,
                    limit: int = 1000) -> list[StudyInstance]:
    """Recorded instance outcomes, e.g. `status="skipped"` for the skipped-with-reason list."""
    q = select(StudyInstance).order_by(StudyInstance.updated_at.desc()).limit(limit)
    if study_uid is not None:
        q = q.where(StudyInstance.study_instance_uid == study_uid)
    if status is not None:
        q = q.where(StudyInstance.status == status)
    with db.session() as s:
        return list(s.scalars(q))


def recorded_paths(db: Database, paths: list[str]) -> set[str]:
    """Which of these spool files already have an outcome (restart: the rest are still to do)."""
    with db.session() as s:
        return set(s.scalars(select(StudyInstance.path).where(StudyInstance.path.in_(paths))))

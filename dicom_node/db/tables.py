"""Every table of the node's database, in one place (the migrations in db/migrations build exactly these).

- `jobs`: one edit of one source instance (state machine in dicom_node/jobs/states.py);
- `deliveries`: one row per (job, destination) that asked for the job's objects (jobs/deliveries.py);
- `job_leases`, `workers`: which worker runs which job, and which workers are alive (jobs/leases.py);
- `studies`, `study_instances`: what arrived, which request applied, why instances were skipped
  (dicom_node/studies/).

Changing a table means changing it here AND adding a migration (`tests/test_db.py` compares the two).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> dt.datetime:
    """Naive UTC, the form every DateTime column holds."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    def to_dict(self) -> dict[str, Any]:
        """Column values, datetimes as ISO 8601 UTC ('...Z')."""
        out: dict[str, Any] = {}
        for col in self.__table__.columns:
            value = getattr(self, col.name)
            out[col.name] = value.isoformat() + "Z" if isinstance(value, dt.datetime) else value
        return out


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    idempotency_key: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    series_instance_uid: Mapped[str | None] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    source_path: Mapped[str] = mapped_column(Text)
    instruction: Mapped[str] = mapped_column(Text)
    seed: Mapped[int] = mapped_column(Integer, default=0)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # complete EditParams.to_dict()
    model_id: Mapped[str | None] = mapped_column(String(200))
    model_hash: Mapped[str | None] = mapped_column(String(64))
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    called_ae: Mapped[str | None] = mapped_column(String(16))
    destination: Mapped[str | None] = mapped_column(String(200))  # destination name in config
    origin: Mapped[str] = mapped_column(String(20), default="dimse")  # dimse | stow | api
    state: Mapped[str] = mapped_column(String(20), default="received", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # times the job went back to the queue because its worker died; past queue.max_requeues: quarantined
    requeues: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    output_uids: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # kind -> {series, sop}
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # EditResult.summary()
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


class Delivery(Base):
    """The objects of one job, to one destination: every destination that asked for an edit gets one."""

    __tablename__ = "deliveries"
    __table_args__ = (UniqueConstraint("job_id", "destination", name="uq_deliveries_job_destination"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(Integer, ForeignKey("jobs.id"), index=True)
    destination: Mapped[str] = mapped_column(String(200))  # name in [destinations]
    state: Mapped[str] = mapped_column(String(20), default="pending", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    sent: Mapped[int] = mapped_column(Integer, default=0)  # objects the destination accepted
    seconds: Mapped[float | None] = mapped_column(Float)  # duration of the last attempt
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


class JobLease(Base):
    __tablename__ = "job_leases"

    job_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    worker_id: Mapped[str] = mapped_column(String(200))
    hostname: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(DateTime)


class WorkerRecord(Base):
    """One row per worker process, refreshed by its sweeper: `x2x status` counts the live ones on any
    broker (the embedded SQLite broker has no broadcast for Celery's ping)."""

    __tablename__ = "workers"

    worker_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(20))  # embedded | worker
    started_at: Mapped[dt.datetime] = mapped_column(DateTime)
    seen_at: Mapped[dt.datetime] = mapped_column(DateTime)


class StudyRecord(Base):
    __tablename__ = "studies"

    study_instance_uid: Mapped[str] = mapped_column(String(128), primary_key=True)
    state: Mapped[str] = mapped_column(String(20), default="receiving", index=True)
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


class StudyInstance(Base):
    __tablename__ = "study_instances"

    path: Mapped[str] = mapped_column(Text, primary_key=True)  # spool file
    study_instance_uid: Mapped[str] = mapped_column(String(128), index=True)
    series_instance_uid: Mapped[str | None] = mapped_column(String(128))
    sop_instance_uid: Mapped[str | None] = mapped_column(String(128), index=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    body_part: Mapped[str | None] = mapped_column(String(64))  # Body Part Examined as sent (e.g. THORAX)
    status: Mapped[str] = mapped_column(String(20), index=True)
    reason: Mapped[str | None] = mapped_column(Text)
    job_id: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)

"""Job store on SQLAlchemy (SQLite file by default, any SQLAlchemy URL).

States: received -> queued -> editing -> encoding -> sending -> done | failed | dead-letter
(cancelled is a terminal state set by an operator). A job's idempotency key makes resubmission of
the same study a no-op: same key, same job, same output UIDs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, String, Text, create_engine, event, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

RECEIVED = "received"
QUEUED = "queued"
EDITING = "editing"
ENCODING = "encoding"
SENDING = "sending"
DONE = "done"
FAILED = "failed"
DEAD_LETTER = "dead-letter"
CANCELLED = "cancelled"
STATES = (RECEIVED, QUEUED, EDITING, ENCODING, SENDING, DONE, FAILED, DEAD_LETTER, CANCELLED)
TERMINAL_STATES = (DONE, DEAD_LETTER, CANCELLED)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def idempotency_key(
    sop_instance_uid: str, instruction: str, model_hash: str, seed: int, params: dict[str, Any]
) -> str:
    """sha256 over source SOP UID + canonical instruction + model hash + seed + params."""
    payload = json.dumps(
        {
            "sop": sop_instance_uid,
            "instruction": instruction,
            "model": model_hash,
            "seed": int(seed),
            "params": params,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    idempotency_key: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    series_instance_uid: Mapped[str | None] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    source_path: Mapped[str] = mapped_column(Text)
    instruction: Mapped[str] = mapped_column(Text)  # canonical sentence
    seed: Mapped[int] = mapped_column(Integer, default=0)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    model_id: Mapped[str | None] = mapped_column(String(200))
    model_hash: Mapped[str | None] = mapped_column(String(64))
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    called_ae: Mapped[str | None] = mapped_column(String(16))
    destination: Mapped[str | None] = mapped_column(String(200))  # destination name in config
    origin: Mapped[str] = mapped_column(String(20), default="dimse")  # dimse | stow | api | batch
    state: Mapped[str] = mapped_column(String(20), default=RECEIVED, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    output_uids: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # kind -> {series, sop}
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # EditResult.summary()
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for col in self.__table__.columns:
            value = getattr(self, col.name)
            out[col.name] = value.isoformat() + "Z" if isinstance(value, dt.datetime) else value
        return out


def make_engine(url: str) -> Engine:
    sqlite = url.startswith("sqlite")
    # sqlite3's own timeout covers the first statement on a new connection (PRAGMA journal_mode),
    # which runs before the busy_timeout pragma below takes effect.
    connect_args = {"timeout": 30} if sqlite else {}
    engine = create_engine(url, future=True, pool_pre_ping=True, connect_args=connect_args)
    if sqlite:
        # WAL + a busy timeout: the SCP, the API and workers write the same file concurrently.
        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

    return engine


def create_tables(engine: Engine, tables: Sequence[Any] | None = None, attempts: int = 5) -> None:
    """CREATE TABLE IF missing, safe when several processes start on one new database at once.

    create_all checks then creates; two workers starting together can both see a table missing and
    the slower one fails with "table ... already exists" (SQLite) or a duplicate (PostgreSQL). On
    such an error, look again: the other process has created it.
    """
    for attempt in range(1, attempts + 1):
        try:
            Base.metadata.create_all(engine, tables=tables)
            return
        except (OperationalError, ProgrammingError, IntegrityError):
            if attempt == attempts:
                raise
            time.sleep(0.05 * attempt)


class JobStore:
    """All reads and writes of jobs go through here (one place for state rules)."""

    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        create_tables(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False, future=True)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as s, s.begin():
            yield s

    # creation ----------------------------------------------------------------------------
    def create_job(self, **fields: Any) -> tuple[Job, bool]:
        """Insert a job unless one with the same idempotency key exists; returns (job, created)."""
        key = fields["idempotency_key"]
        existing = self.get_by_key(key)
        if existing is not None:
            return existing, False
        try:
            with self.session() as s:
                job = Job(**fields)
                s.add(job)
                s.flush()
                return job, True
        except IntegrityError:  # a concurrent insert of the same key won
            existing = self.get_by_key(key)
            assert existing is not None
            return existing, False

    # queries -----------------------------------------------------------------------------
    def get(self, job_id: int) -> Job | None:
        with self.session() as s:
            return s.get(Job, job_id)

    def get_by_key(self, key: str) -> Job | None:
        with self.session() as s:
            return s.scalars(select(Job).where(Job.idempotency_key == key)).first()

    def list(
        self,
        *,
        state: str | Sequence[str] | None = None,
        study_instance_uid: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Job]:
        q = select(Job).order_by(Job.id.desc())
        if state is not None:
            states = [state] if isinstance(state, str) else list(state)
            q = q.where(Job.state.in_(states))
        if study_instance_uid is not None:
            q = q.where(Job.study_instance_uid == study_instance_uid)
        with self.session() as s:
            return list(s.scalars(q.limit(limit).offset(offset)))

    def count_by_state(self) -> dict[str, int]:
        from sqlalchemy import func

        with self.session() as s:
            rows = s.execute(select(Job.state, func.count()).group_by(Job.state)).all()
        return {state: 0 for state in STATES} | {str(st): int(n) for st, n in rows}

    # updates -----------------------------------------------------------------------------
    def update(self, job_id: int, **fields: Any) -> Job:
        with self.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise KeyError(f"no job {job_id}")
            for name, value in fields.items():
                setattr(job, name, value)
            job.updated_at = utcnow()
            return job

    def transition_if(self, job_id: int, allowed: Sequence[str], **values: Any) -> tuple[Job | None, bool]:
        """Atomically set `values` on the job only while its state is in `allowed` (one conditional UPDATE,
        so two actors racing on the same job cannot both win). Returns (job as it is now, changed)."""
        from sqlalchemy import update

        with self.session() as s:
            result = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.state.in_(tuple(allowed)))
                .values(**values, updated_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            changed = result.rowcount == 1  # type: ignore[attr-defined]
        return self.get(job_id), changed

    def set_state(self, job_id: int, state: str, **fields: Any) -> Job:
        if state not in STATES:
            raise ValueError(f"unknown job state {state!r}")
        if state in TERMINAL_STATES or state == FAILED:
            fields.setdefault("finished_at", utcnow())
        if state == EDITING:
            fields.setdefault("started_at", utcnow())
        return self.update(job_id, state=state, **fields)

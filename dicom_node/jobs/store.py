"""Reads and writes of jobs. A job's state changes only through `transition` (jobs/states.py).

A job's idempotency key (dicom_node.edit_params.job_key) makes a resubmission of the same edit a no-op:
same key, same job, same output UIDs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dicom_node.db.engine import Database, retry_locked
from dicom_node.db.tables import Job, utcnow
from dicom_node.jobs.states import STATES, TRANSITIONS, Action, JobState


@dataclass(frozen=True)
class TransitionResult:
    job: Job | None  # the job as it is after the attempt (None: no such job)
    changed: bool  # False: the job was not in a state the action may start from

    @property
    def state(self) -> str | None:
        return self.job.state if self.job is not None else None


class JobStore:
    def __init__(self, db: Database):
        self.db = db

    # creation ----------------------------------------------------------------------------
    def create_job(self, **fields: Any) -> tuple[Job, bool]:
        """Insert a job (state received) unless one with the same idempotency key exists;
        returns (job, created). Every write here retries while the database is locked (retry_locked)."""
        return retry_locked(self.db, lambda: self._create_job(**fields))

    def _create_job(self, **fields: Any) -> tuple[Job, bool]:
        if "state" in fields:
            raise ValueError("a new job starts as 'received'; states change through transition()")
        key = fields["idempotency_key"]
        existing = self.get_by_key(key)
        if existing is not None:
            return existing, False
        try:
            with self.db.session() as s:
                job = Job(**fields, state=JobState.RECEIVED.value)
                s.add(job)
                s.flush()
                return job, True
        except IntegrityError:  # a concurrent insert of the same key won
            existing = self.get_by_key(key)
            assert existing is not None
            return existing, False

    # queries -----------------------------------------------------------------------------
    def get(self, job_id: int) -> Job | None:
        with self.db.session() as s:
            return s.get(Job, job_id)

    def get_by_key(self, key: str) -> Job | None:
        with self.db.session() as s:
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
            q = q.where(Job.state.in_([str(s) for s in states]))
        if study_instance_uid is not None:
            q = q.where(Job.study_instance_uid == study_instance_uid)
        with self.db.session() as s:
            return list(s.scalars(q.limit(limit).offset(offset)))

    def count_by_state(self) -> dict[str, int]:
        with self.db.session() as s:
            rows = s.execute(select(Job.state, func.count()).group_by(Job.state)).all()
        return {state: 0 for state in STATES} | {str(st): int(n) for st, n in rows}

    # writes ------------------------------------------------------------------------------
    def update(self, job_id: int, **fields: Any) -> Job:
        """Record facts about a job (results, timings, errors): never its state."""
        return retry_locked(self.db, lambda: self._update(job_id, **fields))

    def _update(self, job_id: int, **fields: Any) -> Job:
        if "state" in fields:
            raise ValueError("a job's state changes only through JobStore.transition()")
        with self.db.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise KeyError(f"no job {job_id}")
            for name, value in fields.items():
                setattr(job, name, value)
            job.updated_at = utcnow()
            return job

    def transition(
        self,
        job_id: int,
        action: Action,
        *,
        where: Sequence[ColumnElement[bool]] = (),
        also: Callable[[Session], None] | None = None,
        **values: Any,
    ) -> TransitionResult:
        """Apply `action` to the job if its state allows it, with `values` set in the same UPDATE.

        One conditional UPDATE, so two actors racing on the same job cannot both win; `where` adds
        conditions (e.g. "due now" for a claim); `also` runs in the same transaction when the job
        changed (e.g. taking the job's lease). Returns the job as it is now and whether it changed.
        """
        return retry_locked(self.db, lambda: self._transition(job_id, action, where, also, values))

    def _transition(
        self, job_id: int, action: Action, where: Sequence[ColumnElement[bool]],
        also: Callable[[Session], None] | None, values: dict[str, Any],
    ) -> TransitionResult:
        rule = TRANSITIONS[action]
        now = utcnow()
        stamped: dict[str, Any] = {"state": rule.target.value, "updated_at": now}
        if rule.sets_started:
            stamped["started_at"] = now
        if rule.sets_finished:
            stamped["finished_at"] = now
        with self.db.session() as s:
            result = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.state.in_([st.value for st in rule.allowed]), *where)
                .values(**(values | stamped))
                .execution_options(synchronize_session=False)
            )
            changed = result.rowcount == 1  # type: ignore[attr-defined]
            if changed and also is not None:
                also(s)
        return TransitionResult(self.get(job_id), changed)

"""Deliveries: one record per (job, destination). An edit is computed once per job key; every destination
that asked for it (a called-AE rule, a peer, the default, the REST API) gets its own delivery with its
own state, attempts, last error and retry time, so a second destination is served without re-editing
and a destination already served is never sent the objects twice.

A job's own state in the delivery stage is the sum of its deliveries (`settle`): done when all are
delivered, failed while one waits for a retry, dead-letter when one gave up, back to encoded when a
new one appeared meanwhile.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dicom_node.context import NodeContext
from dicom_node.db.tables import Delivery, Job, utcnow
from dicom_node.jobs.states import DELIVERY_TRANSITIONS, Action, DeliveryAction, DeliveryState, JobState
from dicom_node.send import destination_name

D = DeliveryState


def deliveries(ctx: NodeContext, job_id: int) -> list[Delivery]:
    with ctx.db.session() as s:
        return list(s.scalars(select(Delivery).where(Delivery.job_id == job_id).order_by(Delivery.id)))


def ensure_delivery(ctx: NodeContext, job_id: int, destination: str) -> tuple[Delivery, bool]:
    """The job's delivery to `destination`, created (pending) if there is none; returns (row, created)."""
    with ctx.db.session() as s:
        found = s.scalars(
            select(Delivery).where(Delivery.job_id == job_id, Delivery.destination == destination)
        ).first()
        if found is not None:
            return found, False
    try:
        with ctx.db.session() as s:
            row = Delivery(job_id=job_id, destination=destination, state=D.PENDING.value, attempts=0, sent=0)
            s.add(row)
            s.flush()
            return row, True
    except IntegrityError:  # a concurrent intake of the same study created it
        with ctx.db.session() as s:
            row = s.scalars(select(Delivery).where(Delivery.job_id == job_id,
                                                   Delivery.destination == destination)).one()
            return row, False


def ensure_job_deliveries(ctx: NodeContext, job: Job) -> None:
    """Jobs made before deliveries existed (or by hand) have none: give them the one their own
    destination fields choose (a job without any destination keeps its results on disk)."""
    if deliveries(ctx, job.id):
        return
    name = destination_name(ctx.settings, requested=job.destination, calling_ae=job.calling_ae)
    if name is not None:
        ensure_delivery(ctx, job.id, name)


def transition_delivery(ctx: NodeContext, delivery_id: int, action: DeliveryAction, **values: object) -> bool:
    """One conditional UPDATE of a delivery's state (the only writer of it); True if it applied."""
    allowed, target = DELIVERY_TRANSITIONS[action]
    stamped = {"state": target.value, "updated_at": utcnow()}
    if target is D.DELIVERED:
        stamped["delivered_at"] = utcnow()
    with ctx.db.session() as s:
        result = s.execute(
            update(Delivery).where(Delivery.id == delivery_id, Delivery.state.in_([a.value for a in allowed]))
            .values(**(values | stamped)).execution_options(synchronize_session=False)
        )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def reset_deliveries(s: Session, job_id: int, destination: str | None = None) -> None:
    """In the caller's transaction: every undelivered delivery of the job (or only `destination`'s)
    back to pending with zero attempts (an operator's retry)."""
    allowed, target = DELIVERY_TRANSITIONS[DeliveryAction.RETRY]
    conditions = [Delivery.job_id == job_id, Delivery.state.in_([a.value for a in allowed])]
    if destination is not None:
        conditions.append(Delivery.destination == destination)
    s.execute(update(Delivery).where(*conditions).values(
        state=target.value, attempts=0, next_attempt_at=None, last_error=None, updated_at=utcnow()))


@dataclass(frozen=True)
class Settled:
    state: str  # the job's state after settling
    retry_in: float | None = None  # seconds until a failed delivery's retry falls due
    reopened: bool = False  # a pending delivery appeared: the delivery stage must run again


def settle(ctx: NodeContext, job_id: int) -> Settled:
    """Set the job's state from its deliveries (it is in the delivery stage: sending)."""
    rows = deliveries(ctx, job_id)
    by_state = {state: [d for d in rows if d.state == state.value] for state in D}
    problems = by_state[D.FAILED] + by_state[D.DEAD_LETTER]
    attempts = max((d.attempts for d in problems), default=0)
    error = "; ".join(f"{d.destination}: {d.last_error}" for d in problems if d.last_error)[:2000] or None
    if by_state[D.PENDING]:
        result = ctx.store.transition(job_id, Action.REOPEN)
        return Settled(result.state or JobState.ENCODED.value, reopened=result.changed)
    if by_state[D.FAILED]:
        due = min((d.next_attempt_at for d in by_state[D.FAILED] if d.next_attempt_at is not None), default=utcnow())
        result = ctx.store.transition(job_id, Action.FAIL, attempts=attempts, last_error=error, next_attempt_at=due)
        return Settled(result.state or "", max(0.0, (due - utcnow()).total_seconds()) if result.changed else None)
    if by_state[D.DEAD_LETTER]:
        result = ctx.store.transition(job_id, Action.DEAD_LETTER, attempts=attempts, last_error=error,
                                      next_attempt_at=None)
        return Settled(result.state or "")
    result = ctx.store.transition(job_id, Action.FINISH, last_error=None, next_attempt_at=None)
    return Settled(result.state or "")


def due_deliveries(ctx: NodeContext, job_id: int, *, now: dt.datetime | None = None) -> list[Delivery]:
    """The job's deliveries to attempt now: pending ones, and failed ones whose retry is due (`now=None`:
    every failed one, as a direct attempt does)."""
    def due(d: Delivery) -> bool:
        if d.state == D.PENDING.value:
            return True
        retry_due = now is None or d.next_attempt_at is None or d.next_attempt_at <= now
        return d.state == D.FAILED.value and retry_due

    return [d for d in deliveries(ctx, job_id) if due(d)]

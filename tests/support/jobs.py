"""Test helpers for jobs in a given state, reached through the state machine's own transitions."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update

from dicom_node.context import NodeContext
from dicom_node.db.tables import Job
from dicom_node.jobs.states import Action

# The shortest walk of real transitions from "received" to each state.
WALKS: dict[str, tuple[Action, ...]] = {
    "received": (),
    "queued": (Action.QUEUE,),
    "editing": (Action.QUEUE, Action.CLAIM),
    "edited": (Action.QUEUE, Action.CLAIM, Action.EDITED),
    "encoding": (Action.QUEUE, Action.CLAIM, Action.EDITED, Action.ENCODE),
    "encoded": (Action.QUEUE, Action.CLAIM, Action.EDITED, Action.ENCODE, Action.ENCODED),
    "sending": (Action.QUEUE, Action.CLAIM, Action.EDITED, Action.ENCODE, Action.ENCODED, Action.SEND),
    "done": (Action.QUEUE, Action.CLAIM, Action.FINISH),
    "failed": (Action.QUEUE, Action.CLAIM, Action.FAIL),
    "dead-letter": (Action.QUEUE, Action.CLAIM, Action.DEAD_LETTER),
    "cancelled": (Action.CANCEL,),
}


def create_job(ctx: NodeContext, *, state: str = "received", **fields: Any) -> Job:
    """A new job (store.create_job) walked to `state`; `next_attempt_at` is set with the last step."""
    due = fields.pop("next_attempt_at", None)
    job, created = ctx.store.create_job(**fields)
    assert created, "test job keys must be unique"
    for action in WALKS[state]:
        result = ctx.store.transition(job.id, action, **({"next_attempt_at": due} if due else {}))
        assert result.changed, (action, result.state)
    fresh = ctx.store.get(job.id)
    assert fresh is not None and fresh.state == state
    return fresh


def force_state(ctx: NodeContext, job_id: int, state: str) -> None:
    """Set a state no transition leads to (e.g. done -> failed, standing for a restored database):
    deliberately outside the state machine, for tests of what the pipeline does with such a job."""
    with ctx.db.session() as s:
        s.execute(update(Job).where(Job.id == job_id).values(state=state))

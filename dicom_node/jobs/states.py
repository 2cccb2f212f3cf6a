"""The job state machine: every state, every action, and which state each action may start from.

    received -> queued -> editing -> encoding -> sending -> done
                   ^         |          |           |
                   |         +----------+-----------+--> failed (retried with backoff) | dead-letter
                   +-- retry (operator), requeue (worker gone), queue (retry due)
    any unfinished state --cancel--> cancelled

`JobStore.transition(job_id, action)` applies one row of TRANSITIONS as a single conditional UPDATE
(`... WHERE state IN <allowed>`), and is the only code that writes a job's state. Two actors racing on
one job (a worker finishing a stage, an operator cancelling) therefore cannot both win: the loser's
UPDATE matches no row and it learns the state the winner left.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class JobState(str, enum.Enum):
    RECEIVED = "received"
    QUEUED = "queued"
    EDITING = "editing"
    ENCODING = "encoding"
    SENDING = "sending"
    DONE = "done"
    FAILED = "failed"
    DEAD_LETTER = "dead-letter"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


class Action(str, enum.Enum):
    QUEUE = "queue"  # put on the queue (new, or a failed attempt's retry falling due)
    CLAIM = "claim"  # a worker takes the job and starts editing
    ENCODE = "encode"  # edit finished: writing the DICOM objects
    SEND = "send"  # objects written: delivering them
    FINISH = "finish"  # delivered (or nowhere to deliver)
    FAIL = "fail"  # an attempt failed; `next_attempt_at` says when to retry (None: not by itself)
    DEAD_LETTER = "dead-letter"  # failed for good: only an operator's retry brings it back
    CANCEL = "cancel"  # operator: stop it (a running stage finishes, the next one does not start)
    RETRY = "retry"  # operator: queue a failed, dead-lettered or cancelled job again
    REQUEUE = "requeue"  # the job's worker is gone: back to the queue

    def __str__(self) -> str:
        return self.value


S = JobState
IN_PROGRESS = frozenset({S.EDITING, S.ENCODING, S.SENDING})
TERMINAL = frozenset({S.DONE, S.DEAD_LETTER, S.CANCELLED})


@dataclass(frozen=True)
class Transition:
    allowed: frozenset[JobState]
    target: JobState
    sets_started: bool = False  # started_at = now
    sets_finished: bool = False  # finished_at = now


TRANSITIONS: dict[Action, Transition] = {
    Action.QUEUE: Transition(frozenset({S.RECEIVED, S.QUEUED, S.FAILED}), S.QUEUED),
    Action.CLAIM: Transition(frozenset({S.RECEIVED, S.QUEUED}), S.EDITING, sets_started=True),
    Action.ENCODE: Transition(frozenset({S.EDITING}), S.ENCODING),
    Action.SEND: Transition(frozenset({S.EDITING, S.ENCODING}), S.SENDING),
    Action.FINISH: Transition(IN_PROGRESS, S.DONE, sets_finished=True),
    Action.FAIL: Transition(IN_PROGRESS, S.FAILED, sets_finished=True),
    Action.DEAD_LETTER: Transition(IN_PROGRESS, S.DEAD_LETTER, sets_finished=True),
    Action.CANCEL: Transition(frozenset(S) - {S.DONE, S.CANCELLED}, S.CANCELLED, sets_finished=True),
    Action.RETRY: Transition(frozenset({S.FAILED, S.DEAD_LETTER, S.CANCELLED}), S.QUEUED),
    Action.REQUEUE: Transition(IN_PROGRESS, S.QUEUED),
}

STATES: tuple[str, ...] = tuple(s.value for s in JobState)


def allowed_from(action: Action) -> tuple[str, ...]:
    """The state values `action` may start from (for SQL `IN`)."""
    return tuple(sorted(s.value for s in TRANSITIONS[action].allowed))

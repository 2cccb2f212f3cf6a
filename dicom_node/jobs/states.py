"""The job state machine (and its deliveries'): every state, every action, and which state each action
may start from.

A job is one edit under one key, delivered to every destination that asked for it. Two stages, on two
queues, so the next edit starts while the previous job's objects are still being encoded and sent:

    edit stage      received -> queued -> editing -> edited (the edit's arrays in its results folder)
    delivery stage  edited -> encoding -> encoded (the five objects on disk) -> sending
                    -> done | failed (a delivery waits for its retry) | dead-letter
                    failed --(retry due)--> sending ; done/failed/dead-letter --reopen--> encoded
                    (a destination added, or one delivery retried by the operator)
    operator        any unfinished state --cancel--> cancelled ; failed/dead-letter/cancelled --retry--> queued
    recovery        editing --requeue--> queued ; encoding --requeue-encode--> edited (or --requeue-->
                    queued when the edit's arrays are gone) ; sending --requeue-delivery--> encoded

`JobStore.transition(job_id, action)` applies one row of TRANSITIONS as a single conditional UPDATE
(`... WHERE state IN <allowed>`), and is the only code that writes a job's state. Two actors racing on
one job (a worker finishing a stage, an operator cancelling) therefore cannot both win: the loser's
UPDATE matches no row and it learns the state the winner left. Deliveries work the same way with
DELIVERY_TRANSITIONS (jobs/deliveries.py).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class JobState(str, enum.Enum):
    RECEIVED = "received"
    QUEUED = "queued"
    EDITING = "editing"
    EDITED = "edited"  # the edit's arrays on disk, waiting for the delivery stage to encode them
    ENCODING = "encoding"
    ENCODED = "encoded"  # objects on disk, waiting for the delivery stage
    SENDING = "sending"
    DONE = "done"
    FAILED = "failed"
    DEAD_LETTER = "dead-letter"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


class Action(str, enum.Enum):
    QUEUE = "queue"  # put on the edit queue
    CLAIM = "claim"  # an edit worker takes the job
    EDITED = "edited"  # edit finished, its arrays saved: hand over to the delivery stage
    ENCODE = "encode"  # a delivery worker takes the job to write its DICOM objects
    ENCODED = "encoded"  # objects written
    SEND = "send"  # deliver them (right after encoding, or a failed delivery's retry falling due)
    FINISH = "finish"  # delivered everywhere (or nowhere to deliver)
    FAIL = "fail"  # an attempt failed; `next_attempt_at` says when a retry runs by itself (None: never)
    DEAD_LETTER = "dead-letter"  # failed for good: only an operator brings it back
    REOPEN = "reopen"  # a destination was added or one delivery retried: deliver again
    CANCEL = "cancel"  # operator: stop it (a running stage finishes, the next one does not start)
    RETRY = "retry"  # operator: queue a failed, dead-lettered or cancelled job again
    REQUEUE = "requeue"  # its edit worker is gone (or the edit's arrays are): back to the edit queue
    REQUEUE_ENCODE = "requeue-encode"  # its delivery worker died encoding: back to the delivery queue
    REQUEUE_DELIVERY = "requeue-delivery"  # its delivery worker is gone: back to the delivery queue

    def __str__(self) -> str:
        return self.value


S = JobState
EDIT_IN_PROGRESS = frozenset({S.EDITING})
DELIVERY_IN_PROGRESS = frozenset({S.ENCODING, S.SENDING})
IN_PROGRESS = EDIT_IN_PROGRESS | DELIVERY_IN_PROGRESS
TERMINAL = frozenset({S.DONE, S.DEAD_LETTER, S.CANCELLED})


@dataclass(frozen=True)
class Transition:
    allowed: frozenset[JobState]
    target: JobState
    sets_started: bool = False  # started_at = now
    sets_finished: bool = False  # finished_at = now


TRANSITIONS: dict[Action, Transition] = {
    Action.QUEUE: Transition(frozenset({S.RECEIVED, S.QUEUED}), S.QUEUED),
    Action.CLAIM: Transition(frozenset({S.RECEIVED, S.QUEUED}), S.EDITING, sets_started=True),
    Action.EDITED: Transition(frozenset({S.EDITING}), S.EDITED),
    Action.ENCODE: Transition(frozenset({S.EDITED}), S.ENCODING),
    Action.ENCODED: Transition(frozenset({S.ENCODING}), S.ENCODED),
    Action.SEND: Transition(frozenset({S.ENCODED, S.FAILED}), S.SENDING),
    Action.FINISH: Transition(IN_PROGRESS, S.DONE, sets_finished=True),
    Action.FAIL: Transition(IN_PROGRESS, S.FAILED, sets_finished=True),
    Action.DEAD_LETTER: Transition(IN_PROGRESS, S.DEAD_LETTER, sets_finished=True),
    Action.REOPEN: Transition(frozenset({S.SENDING, S.DONE, S.FAILED, S.DEAD_LETTER}), S.ENCODED),
    Action.CANCEL: Transition(frozenset(S) - {S.DONE, S.CANCELLED}, S.CANCELLED, sets_finished=True),
    Action.RETRY: Transition(frozenset({S.FAILED, S.DEAD_LETTER, S.CANCELLED}), S.QUEUED),
    Action.REQUEUE: Transition(frozenset({S.EDITING, S.ENCODING}), S.QUEUED),
    Action.REQUEUE_ENCODE: Transition(frozenset({S.ENCODING}), S.EDITED),
    Action.REQUEUE_DELIVERY: Transition(frozenset({S.SENDING}), S.ENCODED),
}

STATES: tuple[str, ...] = tuple(s.value for s in JobState)


# Deliveries ------------------------------------------------------------------------------------------
class DeliveryState(str, enum.Enum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"  # waiting for its retry (next_attempt_at)
    DEAD_LETTER = "dead-letter"

    def __str__(self) -> str:
        return self.value


class DeliveryAction(str, enum.Enum):
    DELIVERED = "delivered"
    FAIL = "fail"
    DEAD_LETTER = "dead-letter"
    RETRY = "retry"  # operator (or a job retry): try again from zero attempts

    def __str__(self) -> str:
        return self.value


D = DeliveryState
DELIVERY_TRANSITIONS: dict[DeliveryAction, tuple[frozenset[DeliveryState], DeliveryState]] = {
    DeliveryAction.DELIVERED: (frozenset({D.PENDING, D.FAILED}), D.DELIVERED),
    DeliveryAction.FAIL: (frozenset({D.PENDING, D.FAILED}), D.FAILED),
    DeliveryAction.DEAD_LETTER: (frozenset({D.PENDING, D.FAILED}), D.DEAD_LETTER),
    DeliveryAction.RETRY: (frozenset({D.FAILED, D.DEAD_LETTER, D.PENDING}), D.PENDING),
}
DELIVERY_STATES: tuple[str, ...] = tuple(s.value for s in DeliveryState)

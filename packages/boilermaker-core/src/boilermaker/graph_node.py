"""A graph node's life as transitions on its record.

Every change to a node record is one of these functions: claim, record a
retry, record the outcome, arrive (a node it waits on settled), mark
scheduled, unschedule, skip, reset. Each mutates the record it is given and
says what it did; :class:`Step` wraps one for ``Records.update`` (which calls
it again on a fresh copy when the compare-and-swap loses) and keeps what the
last, winning call decided. Nothing here does I/O, so the rules can be read
(and tested) in one place:

- A node runs only from Pending (a root, or all it waits on has arrived),
  Scheduled, or Retry (its retry message, or a redelivery of the message that
  asked for the retry); a node claimed by another message is a duplicate.
- A finished node never runs again; a skipped node never runs.
- The arrival that makes a node decidable decides it in the same write:
  a main task once everything arrived (all succeeded: dispatch, else skip);
  a failure handler at the first failure among the tasks it serves
  (dispatch), or once all arrived with none failed (skip).
- A node has *settled* (and tells its dependents) once it finished or was
  skipped and everything it waits on has arrived, so a shared handler that ran
  at the first failure still reports the failures that came after.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, Literal, TypeVar

from boilermaker.results import FAILED, NOT_YET, SUCCEEDED, NodeRecord
from boilermaker.task.status import TaskStatus

T = TypeVar("T")

ClaimKind = Literal["run", "finished", "skipped", "duplicate", "premature"]


class Decision(enum.Enum):
    """What deciding for a node means: nothing yet, publish it, or settle it as skipped."""

    NONE = "none"
    DISPATCH = "dispatch"
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class Waiting:
    """What a node waits on: ``size`` arrival slots; ``handler`` for a failure handler."""

    size: int
    handler: bool = False


@dataclass(frozen=True, slots=True)
class Change(Generic[T]):
    """What a transition did: whether the record changed, and its verdict."""

    changed: bool
    value: T


class Step(Generic[T]):
    """A transition as a ``Records.update`` mutation, remembering the last verdict."""

    def __init__(self, transition: Callable[[NodeRecord], Change[T]]) -> None:
        self._transition = transition
        self.value: T | None = None

    def __call__(self, record: NodeRecord) -> NodeRecord | None:
        change = self._transition(record)
        self.value = change.value
        return record if change.changed else None


# -- reading a record -------------------------------------------------------------------


def decision_for(record: NodeRecord, waiting: Waiting) -> Decision:
    """What the deciding arrival does for a node with these arrivals (no change made)."""
    arrivals = record.arrivals_of(waiting.size)
    if waiting.handler:
        if FAILED in arrivals:
            return Decision.DISPATCH
        return Decision.SKIP if NOT_YET not in arrivals else Decision.NONE
    if NOT_YET in arrivals:
        return Decision.NONE
    return Decision.DISPATCH if arrivals == SUCCEEDED * waiting.size else Decision.SKIP


def undecided(record: NodeRecord) -> bool:
    """Whether nobody has decided for the node yet (Pending and not skipped)."""
    return record.status is TaskStatus.Pending and not record.skipped


def has_settled(record: NodeRecord, waiting: Waiting) -> bool:
    """Finished or skipped, with everything it waits on arrived: it may tell its dependents."""
    return record.outcome is not None and record.all_arrived(waiting.size)


def may_start(record: NodeRecord, waiting: Waiting, root: bool) -> bool:
    """Whether a Pending node's message may run it (it came from the graph)."""
    return root or (waiting.size > 0 and decision_for(record, waiting) is Decision.DISPATCH)


# -- transitions --------------------------------------------------------------------------


def claim(
    record: NodeRecord,
    *,
    sequence_number: int,
    message_id: str,
    attempt: int,
    startable: bool,
) -> Change[ClaimKind]:
    """Take the node for the message ``sequence_number``: Started, or why not.

    ``startable`` is :func:`may_start` (or the 1.x rule) for a Pending node.
    """
    if record.status.finished:
        return Change(False, "finished")
    if record.skipped:
        return Change(False, "skipped")
    if record.status is TaskStatus.Pending and not startable:
        return Change(False, "premature")
    if record.status is TaskStatus.Started and record.claimed_by not in (None, sequence_number):
        return Change(False, "duplicate")
    if (
        record.status is TaskStatus.Retry
        and record.expected_message_id
        and record.expected_message_id != message_id
        and record.claimed_by != sequence_number
    ):
        return Change(False, "duplicate")
    record.status = TaskStatus.Started
    record.claimed_by = sequence_number
    record.attempt = attempt
    record.expected_message_id = None
    return Change(True, "run")


def record_retry(record: NodeRecord, message_id: str, retry_at: datetime) -> Change[bool]:
    """The node waits for its retry message ``message_id`` (``claimed_by`` is kept, so a
    redelivery of the message that asked for the retry may still claim it)."""
    if record.status.finished:
        return Change(False, False)
    record.status = TaskStatus.Retry
    record.expected_message_id = message_id
    record.retry_at = retry_at
    return Change(True, True)


def record_outcome(
    record: NodeRecord,
    status: TaskStatus,
    *,
    result: object = None,
    errors: list[str] | None = None,
    formatted_exception: str | None = None,
    attempt: int = 0,
) -> Change[bool]:
    """The node's final status; the first writer wins, a finished node stays as it is."""
    if not status.finished:
        raise ValueError(f"{status} is not a final status")
    if record.status.finished:
        return Change(False, False)
    record.status = status
    record.result = result
    record.errors = errors
    record.formatted_exception = formatted_exception
    record.attempt = attempt
    return Change(True, True)


@dataclass(frozen=True, slots=True)
class Arrival:
    """What recording one arrival did."""

    already: bool = False
    decision: Decision = Decision.NONE


def arrive(
    record: NodeRecord, *, slot: int, outcome: str, failure_seen: bool, waiting: Waiting
) -> Change[Arrival]:
    """Record the outcome of the node in ``slot``; decide for the node if this arrival
    makes it decidable (in the same write, so exactly one writer decides)."""
    arrivals = record.arrivals_of(waiting.size)
    if arrivals[slot] != NOT_YET:
        return Change(False, Arrival(already=True))
    record.arrivals = arrivals[:slot] + outcome + arrivals[slot + 1 :]
    record.failure_seen = record.failure_seen or failure_seen
    decision = decision_for(record, waiting) if undecided(record) else Decision.NONE
    if decision is Decision.DISPATCH:
        record.status = TaskStatus.Scheduled
    elif decision is Decision.SKIP:
        record.skipped = True
    return Change(True, Arrival(decision=decision))


def mark_scheduled(record: NodeRecord) -> Change[bool]:
    """Pending -> Scheduled, once its message has been (or is being) published."""
    if not undecided(record):
        return Change(False, False)
    record.status = TaskStatus.Scheduled
    return Change(True, True)


def unschedule(record: NodeRecord) -> Change[bool]:
    """Scheduled -> Pending when its publish failed, so it reads as ready but unsent."""
    if record.status is not TaskStatus.Scheduled or record.claimed_by is not None:
        return Change(False, False)
    record.status = TaskStatus.Pending
    return Change(True, True)


def skip(record: NodeRecord) -> Change[bool]:
    """Settle an undecided node as one that will never run."""
    if not undecided(record):
        return Change(False, False)
    record.skipped = True
    return Change(True, True)


def reset(record: NodeRecord, *, rerun_failed: bool, reset_attempts: bool) -> Change[TaskStatus]:
    """Make a node runnable again (recovery, dead-letter replay): Scheduled and
    unclaimed. A node that succeeded or was skipped is left alone; a failed one
    only with ``rerun_failed`` (replaying its dead letter), which also clears its
    outcome. The verdict is the status it had."""
    previous = record.status
    if record.skipped or previous is TaskStatus.Success:
        return Change(False, previous)
    if previous.finished and not rerun_failed:
        return Change(False, previous)
    record.status = TaskStatus.Scheduled
    record.claimed_by = None
    record.expected_message_id = None
    record.retry_at = None
    if previous.finished:
        record.result = None
        record.errors = None
        record.formatted_exception = None
    if reset_attempts:
        record.attempt = 0
    return Change(True, previous)

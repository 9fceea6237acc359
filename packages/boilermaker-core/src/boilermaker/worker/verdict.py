"""What happens to a message, decided in one place.

Handling a message ends in an :class:`Outcome` (the task succeeded, raised,
asked for a retry, ran out of time; or it never ran: undecodable, unknown
function, a duplicate...). :func:`decide` turns an outcome into a
:class:`Verdict` (what to do with the message, the status to record, the
dead-letter reason and description) without side effects; the worker then
carries the verdict out. A new kind of outcome is a new row in
:data:`RULES`, not a new branch in the worker.

Dead-letter reasons (the broker's ``DeadLetterReason``, for tools to filter on):

=========================  ======================================================
``InvalidTaskFormat``      the body is not a task this version can read
``ExpectationFailed``      this worker cannot serve the task (function not
                           registered, graph or store missing)
``TaskFailed``             the task raised (or returned TaskFailureResult) and
                           does not retry
``ProcessingError``        the task asked for a retry (or ran past its time
                           limit) with no tries left
``FollowUpFailed``         the task ran, but what must follow it (its retry,
                           chain callback, result or graph continuation) cannot
                           be built or written; retrying the run would not help
``MaxDeliveryCountExceeded``  set by the broker after too many deliveries
=========================  ======================================================
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from boilermaker.reasons import (
    EXPECTATION_FAILED,
    FOLLOW_UP_FAILED,
    INVALID_TASK_FORMAT,
    MAX_DELIVERY_COUNT_EXCEEDED,
    PROCESSING_ERROR,
    REASONS,
    TASK_FAILED,
)
from boilermaker.task.status import TaskStatus
from boilermaker.task.task import Task

__all__ = [
    "EXPECTATION_FAILED",
    "FOLLOW_UP_FAILED",
    "INVALID_TASK_FORMAT",
    "MAX_DELIVERY_COUNT_EXCEEDED",
    "PROCESSING_ERROR",
    "REASONS",
    "TASK_FAILED",
    "Action",
    "Kind",
    "Outcome",
    "Verdict",
    "decide",
]


class Kind(enum.Enum):
    """How handling a message ended."""

    CONTROL = "control"  # a broker's own message (1.x readiness probes): not a task
    UNDECODABLE = "undecodable"
    UNKNOWN_FUNCTION = "unknown_function"
    NOT_SERVABLE = "not_servable"  # e.g. a graph task on a worker with no results store
    DUPLICATE = "duplicate"  # another message has (or had) this graph node
    ALREADY_FINISHED = "already_finished"  # a redelivery: only the continuation ran
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # raised, or returned TaskFailureResult
    RETRY_REQUESTED = "retry_requested"  # raised RetryException
    TIMED_OUT = "timed_out"  # ran past its time limit and was cancelled
    INTERRUPTED = "interrupted"  # our bookkeeping failed for now (store or broker down)
    FOLLOW_UP_FAILED = "follow_up_failed"  # the follow-up cannot be built, for good


class Action(enum.Enum):
    """What is done with the message."""

    COMPLETE = "complete"
    RETRY = "retry"  # publish the next attempt as a scheduled message, then complete
    DEAD_LETTER = "dead_letter"
    ABANDON = "abandon"  # give it back for redelivery


@dataclass(frozen=True, slots=True)
class Outcome:
    """How handling ended, with what it produced (``result``) or why (``error``,
    ``description``)."""

    kind: Kind
    result: Any = None
    error: BaseException | None = None
    description: str | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do: the action on the message, the status to record for the task (None
    when nothing is recorded), and for a dead letter its reason and description."""

    action: Action
    status: TaskStatus | None = None
    reason: str | None = None
    description: str | None = None

    @property
    def failed(self) -> bool:
        """Whether the task's run ended in failure (retries exhausted included)."""
        return self.status is not None and self.status.failed


def bounded(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, marking the cut."""
    if len(text) <= limit:
        return text
    marker = "... [truncated]"
    return text[: max(0, limit - len(marker))] + marker


def describe(outcome: Outcome, limit: int) -> str:
    """The outcome in a bounded line: its description, else ``Type: message``."""
    if outcome.description is not None:
        return bounded(outcome.description, limit)
    if outcome.error is not None:
        return bounded(f"{type(outcome.error).__name__}: {outcome.error}", limit)
    return "task failed"


def _dead_letter_or_complete(task: Task | None, status: TaskStatus, reason: str) -> Action:
    """A failed task is dead-lettered, unless it asked not to be (then completed)."""
    if task is not None and not task.should_dead_letter:
        return Action.COMPLETE
    return Action.DEAD_LETTER


def _retry_or_exhausted(outcome: Outcome, task: Task | None, limit: int) -> Verdict:
    if task is not None and task.can_retry:
        return Verdict(Action.RETRY, TaskStatus.Retry, description=describe(outcome, limit))
    attempts = task.attempts.attempts if task is not None else 0
    text = bounded(
        f"retries exhausted after {attempts} attempt(s): {describe(outcome, limit)}", limit
    )
    action = _dead_letter_or_complete(task, TaskStatus.RetriesExhausted, PROCESSING_ERROR)
    return Verdict(action, TaskStatus.RetriesExhausted, PROCESSING_ERROR, text)


Rule = Callable[[Outcome, "Task | None", int], Verdict]

#: One row per kind of outcome: how it is decided.
RULES: dict[Kind, Rule] = {
    Kind.CONTROL: lambda o, t, n: Verdict(Action.COMPLETE),
    Kind.UNDECODABLE: lambda o, t, n: Verdict(
        Action.DEAD_LETTER, None, INVALID_TASK_FORMAT, describe(o, n)
    ),
    Kind.UNKNOWN_FUNCTION: lambda o, t, n: Verdict(
        Action.DEAD_LETTER, TaskStatus.Deadlettered, EXPECTATION_FAILED, describe(o, n)
    ),
    Kind.NOT_SERVABLE: lambda o, t, n: Verdict(
        Action.DEAD_LETTER, None, EXPECTATION_FAILED, describe(o, n)
    ),
    Kind.DUPLICATE: lambda o, t, n: Verdict(Action.COMPLETE),
    Kind.ALREADY_FINISHED: lambda o, t, n: Verdict(Action.COMPLETE),
    Kind.SUCCEEDED: lambda o, t, n: Verdict(Action.COMPLETE, TaskStatus.Success),
    Kind.FAILED: lambda o, t, n: Verdict(
        _dead_letter_or_complete(t, TaskStatus.Failure, TASK_FAILED),
        TaskStatus.Failure,
        TASK_FAILED,
        describe(o, n),
    ),
    Kind.RETRY_REQUESTED: _retry_or_exhausted,
    Kind.TIMED_OUT: _retry_or_exhausted,
    Kind.INTERRUPTED: lambda o, t, n: Verdict(Action.ABANDON, description=describe(o, n)),
    Kind.FOLLOW_UP_FAILED: lambda o, t, n: Verdict(
        Action.DEAD_LETTER, None, FOLLOW_UP_FAILED, describe(o, n)
    ),
}


def decide(outcome: Outcome, task: Task | None, description_limit: int = 1024) -> Verdict:
    """The verdict for ``outcome`` (``task`` is None when there is no task to speak of).

    A retry is decided with the task's policy as it stands (a RetryException
    carrying its own policy has replaced it by then) and its attempts so far.
    """
    return RULES[outcome.kind](outcome, task, description_limit)

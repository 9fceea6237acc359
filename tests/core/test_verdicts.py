"""The verdict table: every kind of outcome, and what it means for the message."""

from __future__ import annotations

import pytest

from boilermaker import RetryException, RetryPolicy, Task
from boilermaker.task import TaskStatus
from boilermaker.worker import (
    EXPECTATION_FAILED,
    FOLLOW_UP_FAILED,
    INVALID_TASK_FORMAT,
    PROCESSING_ERROR,
    TASK_FAILED,
    Action,
    Kind,
    Outcome,
    decide,
)
from boilermaker.worker.verdict import RULES


def task(*, tries: int = 3, attempts: int = 1, dead_letter: bool = True) -> Task:
    t = Task.si("f", policy=RetryPolicy(max_tries=tries, delay=0), should_dead_letter=dead_letter)
    t.attempts.attempts = attempts
    return t


ERROR = ValueError("boom")

# (kind, task, expected action, recorded status, reason)
TABLE = [
    (Kind.CONTROL, None, Action.COMPLETE, None, None),
    (Kind.UNDECODABLE, None, Action.DEAD_LETTER, None, INVALID_TASK_FORMAT),
    (
        Kind.UNKNOWN_FUNCTION,
        task(),
        Action.DEAD_LETTER,
        TaskStatus.Deadlettered,
        EXPECTATION_FAILED,
    ),
    (Kind.NOT_SERVABLE, task(), Action.DEAD_LETTER, None, EXPECTATION_FAILED),
    (Kind.DUPLICATE, task(), Action.COMPLETE, None, None),
    (Kind.ALREADY_FINISHED, task(), Action.COMPLETE, None, None),
    (Kind.SUCCEEDED, task(), Action.COMPLETE, TaskStatus.Success, None),
    (Kind.FAILED, task(), Action.DEAD_LETTER, TaskStatus.Failure, TASK_FAILED),
    (Kind.FAILED, task(dead_letter=False), Action.COMPLETE, TaskStatus.Failure, TASK_FAILED),
    (Kind.RETRY_REQUESTED, task(attempts=1), Action.RETRY, TaskStatus.Retry, None),
    (
        Kind.RETRY_REQUESTED,
        task(attempts=3),
        Action.DEAD_LETTER,
        TaskStatus.RetriesExhausted,
        PROCESSING_ERROR,
    ),
    (
        Kind.RETRY_REQUESTED,
        task(attempts=3, dead_letter=False),
        Action.COMPLETE,
        TaskStatus.RetriesExhausted,
        PROCESSING_ERROR,
    ),
    (Kind.TIMED_OUT, task(attempts=2), Action.RETRY, TaskStatus.Retry, None),
    (
        Kind.TIMED_OUT,
        task(attempts=3),
        Action.DEAD_LETTER,
        TaskStatus.RetriesExhausted,
        PROCESSING_ERROR,
    ),
    (Kind.INTERRUPTED, task(), Action.ABANDON, None, None),
    (Kind.FOLLOW_UP_FAILED, task(), Action.DEAD_LETTER, None, FOLLOW_UP_FAILED),
]


def test_every_kind_has_a_row() -> None:
    assert set(RULES) == set(Kind)
    assert {row[0] for row in TABLE} == set(Kind)


@pytest.mark.parametrize(("kind", "the_task", "action", "status", "reason"), TABLE)
def test_verdict_table(
    kind: Kind,
    the_task: Task | None,
    action: Action,
    status: TaskStatus | None,
    reason: str | None,
) -> None:
    error = RetryException("later") if kind is Kind.RETRY_REQUESTED else ERROR
    verdict = decide(Outcome(kind, error=error), the_task)
    assert verdict.action is action
    assert verdict.status is status
    if action is Action.DEAD_LETTER or status in (TaskStatus.Failure, TaskStatus.RetriesExhausted):
        assert verdict.reason == reason
        assert verdict.description


def test_descriptions_name_the_cause_and_are_bounded() -> None:
    verdict = decide(Outcome(Kind.FAILED, error=ValueError("x" * 5000)), task(), 100)
    assert verdict.description is not None
    assert verdict.description.startswith("ValueError: xxx")
    assert len(verdict.description) == 100
    assert verdict.description.endswith("[truncated]")
    exhausted = decide(
        Outcome(Kind.TIMED_OUT, description="TimeLimitExceeded: 2s"), task(attempts=3)
    )
    assert exhausted.description == "retries exhausted after 3 attempt(s): TimeLimitExceeded: 2s"


def test_decide_has_no_side_effects() -> None:
    t = task(attempts=1)
    before = t.model_dump()
    for kind in Kind:
        decide(Outcome(kind, error=ERROR), t)
    assert t.model_dump() == before

"""Task outcomes as recorded in the results store."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from boilermaker.ids import GraphId, TaskId


class TaskStatus(enum.StrEnum):
    """Where a task is in its life. Values are the lowercase strings stored in blobs."""

    Pending = "pending"
    Scheduled = "scheduled"
    Started = "started"
    Success = "success"
    Failure = "failure"
    Retry = "retry"
    RetriesExhausted = "retries_exhausted"
    Deadlettered = "deadlettered"

    @classmethod
    def default(cls) -> TaskStatus:
        """``Pending``: where every task starts."""
        return cls.Pending

    @classmethod
    def finished_types(cls) -> frozenset[TaskStatus]:
        """Statuses after which a task never runs again."""
        return _FINISHED

    @classmethod
    def failure_types(cls) -> frozenset[TaskStatus]:
        """Finished statuses that count as a failure."""
        return _FAILED

    @property
    def finished(self) -> bool:
        """True once the task will never run again."""
        return self in _FINISHED

    @property
    def succeeded(self) -> bool:
        """True for ``Success`` only."""
        return self is TaskStatus.Success

    @property
    def failed(self) -> bool:
        """True for every finished status other than ``Success``."""
        return self in _FAILED


_FINISHED = frozenset(
    {
        TaskStatus.Success,
        TaskStatus.Failure,
        TaskStatus.RetriesExhausted,
        TaskStatus.Deadlettered,
    }
)
_FAILED = _FINISHED - {TaskStatus.Success}


class TaskResultSlim(BaseModel):
    """A task's status without its return value.

    ``etag`` is the blob ETag the record was read at (readers set it; it is
    stored as null).
    """

    model_config = ConfigDict(extra="ignore")

    etag: str | None = None
    task_id: TaskId
    graph_id: GraphId | None = None
    status: TaskStatus

    @classmethod
    def default(cls, task_id: TaskId, graph_id: GraphId | None = None) -> TaskResultSlim:
        """A Pending record."""
        return cls(task_id=task_id, graph_id=graph_id, status=TaskStatus.default())

    @property
    def directory_path(self) -> Path:
        """The record's folder under ``task-results/``: the graph id, else the task id."""
        return Path(str(self.graph_id or self.task_id))

    @property
    def storage_path(self) -> Path:
        """The record's path under ``task-results/``: ``{directory}/{task_id}.json``."""
        return self.directory_path / f"{self.task_id}.json"

    @property
    def finished(self) -> bool:
        """True once the task will never run again."""
        return self.status.finished

    @property
    def succeeded(self) -> bool:
        """True for ``Success`` only."""
        return self.status.succeeded

    @property
    def failed(self) -> bool:
        """True for every finished status other than ``Success``."""
        return self.status.failed


class TaskResult(TaskResultSlim):
    """A task's status with its return value or the error that ended it."""

    result: Any = None
    errors: list[str] | None = None
    formatted_exception: str | None = None


class TaskFailureResult:
    """Return this (the class or an instance) from a task to mark it failed without raising.

    The worker then treats the run as a failure: ``on_failure`` runs and the
    message is dead-lettered (or completed when ``should_dead_letter`` is off).
    """

    def __init__(self, reason: str = "task returned TaskFailureResult") -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"TaskFailureResult({self.reason!r})"

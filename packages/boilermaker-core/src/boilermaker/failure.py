"""``TaskFailureResult`` where the published 1.x library had it.

Return it from a task to mark the run failed without raising (see
:class:`boilermaker.task.TaskFailureResult`).
"""

from __future__ import annotations

from typing import TypeAlias

from boilermaker.task.status import TaskFailureResult

TaskFailureResultType: TypeAlias = TaskFailureResult

__all__ = ["TaskFailureResult", "TaskFailureResultType"]

"""Tasks, chains, graphs and their recorded outcomes."""

from collections.abc import Awaitable, Callable
from typing import Any

from boilermaker.ids import GraphId, NullTaskId, TaskId, new_task_id
from boilermaker.task.builder import LAST_ADDED, LastAddedSingleton, TaskGraphBuilder
from boilermaker.task.graph import TaskGraph
from boilermaker.task.status import TaskFailureResult, TaskResult, TaskResultSlim, TaskStatus
from boilermaker.task.task import Task, TaskChain

#: A task function: ``async def fn(state, *args, **kwargs)``.
TaskHandler = Callable[..., Awaitable[Any]]

__all__ = [
    "LAST_ADDED",
    "GraphId",
    "LastAddedSingleton",
    "NullTaskId",
    "Task",
    "TaskChain",
    "TaskFailureResult",
    "TaskGraph",
    "TaskGraphBuilder",
    "TaskHandler",
    "TaskId",
    "TaskResult",
    "TaskResultSlim",
    "TaskStatus",
    "new_task_id",
]

"""Tasks, chains, graphs and their recorded outcomes."""

from boilermaker.ids import GraphId, TaskId
from boilermaker.task.builder import TaskGraphBuilder
from boilermaker.task.graph import TaskGraph
from boilermaker.task.status import TaskFailureResult, TaskResult, TaskResultSlim, TaskStatus
from boilermaker.task.task import Task, TaskChain

__all__ = [
    "GraphId",
    "Task",
    "TaskChain",
    "TaskFailureResult",
    "TaskGraph",
    "TaskGraphBuilder",
    "TaskId",
    "TaskResult",
    "TaskResultSlim",
    "TaskStatus",
]

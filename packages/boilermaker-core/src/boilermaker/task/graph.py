"""A task graph: a DAG of tasks with failure handlers, immutable once built.

Edges are kept in both directions so that finishing one node costs work in
proportion to its own edges, never to the size of the graph.
"""

from __future__ import annotations

from functools import cached_property

from pydantic import BaseModel, ConfigDict, Field

from boilermaker.ids import GraphId, TaskId, new_graph_id
from boilermaker.task.task import Task


class TaskGraph(BaseModel):
    """The structure of a workflow, stored once as ``graph.json`` when published.

    - ``children[p]``: tasks that run once ``p`` and all their other parents succeeded.
    - ``failure_callbacks[x]``: the task that runs if ``x`` fails.
    - ``all_failed_callback``: runs once, after every task has finished or can
      no longer run, if any task failed.
    """

    model_config = ConfigDict(extra="forbid", frozen=False)

    graph_id: GraphId = Field(default_factory=new_graph_id)
    tasks: dict[TaskId, Task] = Field(default_factory=dict)
    children: dict[TaskId, list[TaskId]] = Field(default_factory=dict)
    failure_callbacks: dict[TaskId, TaskId] = Field(default_factory=dict)
    all_failed_callback: TaskId | None = None

    @cached_property
    def parents(self) -> dict[TaskId, list[TaskId]]:
        """Success-edge parents of every task (empty list for roots and handlers)."""
        result: dict[TaskId, list[TaskId]] = {task_id: [] for task_id in self.tasks}
        for parent, kids in self.children.items():
            for kid in kids:
                result[kid].append(parent)
        return result

    @cached_property
    def failure_parent(self) -> dict[TaskId, TaskId]:
        """For each failure handler, the task whose failure triggers it."""
        return {handler: task for task, handler in self.failure_callbacks.items()}

    @cached_property
    def root_ids(self) -> list[TaskId]:
        """Tasks that run as soon as the graph is published."""
        return [
            task_id
            for task_id, parents in self.parents.items()
            if not parents
            and task_id not in self.failure_parent
            and task_id != self.all_failed_callback
        ]

    @cached_property
    def sink_ids(self) -> list[TaskId]:
        """Tasks (handlers included) that nothing waits on; the graph ends when all settle."""
        return [
            task_id
            for task_id in self.tasks
            if not self.children.get(task_id)
            and task_id not in self.failure_callbacks
            and task_id != self.all_failed_callback
        ]

    @cached_property
    def wait_positions(self) -> dict[TaskId, dict[TaskId, int]]:
        """For each task, the position of each task it waits on (its arrival slot)."""
        return {t: {p: i for i, p in enumerate(self.waits_on(t))} for t in self.tasks}

    @cached_property
    def sink_positions(self) -> dict[TaskId, int]:
        """The arrival slot of each sink in the end-of-graph record."""
        return {t: i for i, t in enumerate(self.sink_ids)}

    def waits_on(self, task_id: TaskId) -> list[TaskId]:
        """Everything whose outcome ``task_id`` must hear about before it can settle."""
        if task_id in self.failure_parent:
            return [self.failure_parent[task_id]]
        return self.parents.get(task_id, [])

    def notified_by(self, task_id: TaskId) -> list[TaskId]:
        """Tasks to tell when ``task_id`` settles: its children and its failure handler."""
        kids = list(self.children.get(task_id, []))
        handler = self.failure_callbacks.get(task_id)
        if handler is not None:
            kids.append(handler)
        return kids

    def task(self, task_id: TaskId) -> Task:
        """The task with this id, stamped with the graph id."""
        return self.tasks[task_id]

    def __len__(self) -> int:
        return len(self.tasks)

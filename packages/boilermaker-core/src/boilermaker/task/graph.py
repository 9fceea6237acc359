"""A task graph: a DAG of tasks with failure handlers, stored once as ``graph.json``.

The stored shape is the published 1.x one, so graphs written by either version
are read by both:

- ``children``: every main task, by id; ``fail_children``: failure handlers and
  the all-failed callback, by id;
- ``edges[p]``: tasks that run once ``p`` (and their other parents) succeeded;
- ``fail_edges[t]``: failure handlers that run if ``t`` fails. One handler may
  serve several tasks (``parallel(..., on_failure=h)``,
  ``TaskChain(..., on_any_failure=h)``): it runs once, when the first of them
  fails, and is skipped when all of them succeeded;
- ``all_failed_callback_id``: runs once after the graph has ended, if anything
  in it failed;
- ``results``: empty when stored; filled by readers with each node's record.

``protocol`` says how workers dispatch the graph: 2 (written by this version)
records each edge's outcome in the dependent's record, so finishing a node
costs work in proportion to its own edges; 1 (graphs published by 1.x, which
have no ``protocol`` field) decides readiness from the parents' statuses with
a blob lease per dispatch, as 1.x workers do, so both versions can work on the
same graph.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from boilermaker.exceptions import GraphBuildError
from boilermaker.ids import GraphId, TaskId, check_id, new_graph_id
from boilermaker.task.status import TaskResult, TaskResultSlim, TaskStatus
from boilermaker.task.task import Task, known_task_fields

#: The dispatch protocol graphs published by this version use.
CURRENT_PROTOCOL = 2
#: The protocol of graphs published by the 1.x library (their ``graph.json`` has no field).
LEGACY_PROTOCOL = 1

#: Statuses that ``detect_stalled_tasks`` reports: the node should be moving.
STALLED_STATUSES = frozenset({TaskStatus.Scheduled, TaskStatus.Started, TaskStatus.Retry})

#: Cached derived views, dropped whenever the structure changes.
_DERIVED = (
    "tasks",
    "parents",
    "failure_parents",
    "root_ids",
    "sink_ids",
    "wait_positions",
    "sink_positions",
)


class TaskGraph(BaseModel):
    """The structure of a workflow (see the module docstring for the fields).

    Reading methods (``is_complete``, ``has_failures``, ``detect_stalled_tasks``,
    ...) look at ``results``, which readers such as
    ``BlobClientStorage.load_graph`` fill in.
    """

    model_config = ConfigDict(extra="ignore")

    StorageName: ClassVar[str] = "graph.json"

    graph_id: GraphId = Field(default_factory=new_graph_id)
    children: dict[TaskId, Task] = Field(default_factory=dict)
    fail_children: dict[TaskId, Task] = Field(default_factory=dict)
    edges: dict[TaskId, list[TaskId]] = Field(default_factory=dict)
    fail_edges: dict[TaskId, list[TaskId]] = Field(default_factory=dict)
    all_failed_callback_id: TaskId | None = None
    results: dict[TaskId, TaskResult | TaskResultSlim] = Field(default_factory=dict)
    protocol: int = CURRENT_PROTOCOL

    _skipped: set[TaskId] = PrivateAttr(default_factory=set)

    @field_validator("graph_id")
    @classmethod
    def _graph_id_is_safe(cls, value: str) -> str:
        return check_id(value, "graph_id")

    @model_validator(mode="before")
    @classmethod
    def _read_stored(cls, data: Any) -> Any:
        """Tolerate what other versions wrote: unknown task fields are dropped, and
        sets (1.x serialised edges as JSON arrays of a set) become lists."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for key in ("children", "fail_children"):
            tasks = data.get(key)
            if isinstance(tasks, dict):
                data[key] = {
                    k: known_task_fields(v) if isinstance(v, dict) else v for k, v in tasks.items()
                }
        for key in ("edges", "fail_edges"):
            edges = data.get(key)
            if isinstance(edges, dict):
                data[key] = {
                    k: sorted(v) if isinstance(v, set | frozenset) else v for k, v in edges.items()
                }
        return data

    @classmethod
    def from_stored(cls, data: bytes | str) -> TaskGraph:
        """A graph from its ``graph.json``; one without ``protocol`` was written by 1.x."""
        import json

        doc = json.loads(data)
        if not isinstance(doc, dict):
            raise ValueError("graph.json does not hold a JSON object")
        doc.setdefault("protocol", LEGACY_PROTOCOL)
        doc["results"] = {}
        return cls.model_validate(doc)

    def to_stored(self) -> bytes:
        """The ``graph.json`` bytes: the structure, with ``results`` left empty."""
        return self.model_dump_json(exclude={"results"}).encode()

    # -- paths (the published layout) ----------------------------------------------------

    @classmethod
    def graph_path(cls, graph_id: GraphId | str) -> Path:
        """``{graph_id}/graph.json``: where a graph is stored, under ``task-results/``."""
        return Path(str(graph_id)) / cls.StorageName

    @property
    def storage_path(self) -> Path:
        """Where this graph is stored, under ``task-results/``."""
        return self.graph_path(self.graph_id)

    # -- derived structure ---------------------------------------------------------------

    def _changed(self) -> None:
        for name in _DERIVED:
            self.__dict__.pop(name, None)

    @cached_property
    def tasks(self) -> dict[TaskId, Task]:
        """Every node: main tasks, failure handlers and the all-failed callback."""
        return {**self.children, **self.fail_children}

    @cached_property
    def parents(self) -> dict[TaskId, list[TaskId]]:
        """Success-edge parents of every node (empty for roots and handlers)."""
        result: dict[TaskId, list[TaskId]] = {task_id: [] for task_id in self.tasks}
        for parent, kids in self.edges.items():
            for kid in kids:
                result.setdefault(kid, []).append(parent)
        return result

    @cached_property
    def failure_parents(self) -> dict[TaskId, list[TaskId]]:
        """For each failure handler, the tasks whose failure triggers it."""
        result: dict[TaskId, list[TaskId]] = {}
        for task_id, handlers in self.fail_edges.items():
            for handler in handlers:
                result.setdefault(handler, []).append(task_id)
        return result

    @cached_property
    def root_ids(self) -> list[TaskId]:
        """Main tasks that run as soon as the graph is published."""
        return [t for t in self.children if not self.parents.get(t)]

    @cached_property
    def sink_ids(self) -> list[TaskId]:
        """Nodes (handlers included) that nothing waits on; the graph ends when all settle."""
        return [
            task_id
            for task_id in self.tasks
            if not self.edges.get(task_id)
            and not self.fail_edges.get(task_id)
            and task_id != self.all_failed_callback_id
        ]

    @cached_property
    def wait_positions(self) -> dict[TaskId, dict[TaskId, int]]:
        """For each node, the position of each node it waits on (its arrival slot)."""
        return {t: {p: i for i, p in enumerate(self.waits_on(t))} for t in self.tasks}

    @cached_property
    def sink_positions(self) -> dict[TaskId, int]:
        """The arrival slot of each sink in the end-of-graph record."""
        return {t: i for i, t in enumerate(self.sink_ids)}

    def is_handler(self, task_id: TaskId) -> bool:
        """Whether ``task_id`` is a failure handler (not the all-failed callback)."""
        return task_id in self.failure_parents

    def waits_on(self, task_id: TaskId) -> list[TaskId]:
        """Everything whose outcome ``task_id`` must hear about before it has settled:
        its parents, or for a failure handler the tasks it serves."""
        if task_id in self.failure_parents:
            return self.failure_parents[task_id]
        return self.parents.get(task_id, [])

    def notified_by(self, task_id: TaskId) -> list[TaskId]:
        """Nodes to tell when ``task_id`` settles: its children and its failure handlers."""
        return [*self.edges.get(task_id, []), *self.fail_edges.get(task_id, [])]

    def task(self, task_id: TaskId) -> Task:
        """The node with this id, stamped with the graph id."""
        return self.tasks[task_id]

    def __len__(self) -> int:
        return len(self.tasks)

    # -- building (the published library's methods) --------------------------------------

    def add_task(self, task: Task, parent_ids: Iterable[TaskId] | None = None) -> None:
        """Add a main task running after ``parent_ids`` succeeded.

        A task carrying ``on_success`` / ``on_failure`` brings them along as a
        child and a failure handler (the fields are cleared on the stored copy).
        Raises ValueError on a cycle or a task id already in the graph.
        """
        self._check_new(task)
        task.graph_id = self.graph_id
        follow_success, follow_failure = task.on_success, task.on_failure
        self.children[task.task_id] = task.model_copy(
            update={"on_success": None, "on_failure": None}
        )
        for parent in parent_ids or []:
            kids = self.edges.setdefault(TaskId(parent), [])
            if task.task_id not in kids:
                kids.append(task.task_id)
        self._changed()
        self._refuse_cycle(task.task_id)
        self._inline_followers(task.task_id, follow_success, follow_failure)

    def add_failure_callback(self, parent_id: TaskId, callback_task: Task) -> None:
        """Run ``callback_task`` if ``parent_id`` fails. The same handler may serve
        several tasks: it runs once, at the first failure among them."""
        parent_id = TaskId(parent_id)
        known = self.fail_children.get(callback_task.task_id)
        if known is None:
            self._check_new(callback_task)
            callback_task.graph_id = self.graph_id
            follow_success, follow_failure = callback_task.on_success, callback_task.on_failure
            self.fail_children[callback_task.task_id] = callback_task.model_copy(
                update={"on_success": None, "on_failure": None}
            )
        elif callback_task.task_id == self.all_failed_callback_id:
            raise GraphBuildError(
                f"task {callback_task.task_id} is the all-failed callback; it cannot also "
                "be a failure handler"
            )
        else:
            follow_success = follow_failure = None
        handlers = self.fail_edges.setdefault(parent_id, [])
        if callback_task.task_id not in handlers:
            handlers.append(callback_task.task_id)
        self._changed()
        self._refuse_cycle(callback_task.task_id)
        self._inline_followers(callback_task.task_id, follow_success, follow_failure)

    def add_all_failed_callback(self, callback_task: Task) -> None:
        """Run ``callback_task`` once, after the graph ended, if anything in it failed."""
        if self.all_failed_callback_id is not None:
            raise GraphBuildError("the graph already has an all-failed callback")
        self._check_new(callback_task)
        callback_task.graph_id = self.graph_id
        follow_success, follow_failure = callback_task.on_success, callback_task.on_failure
        self.fail_children[callback_task.task_id] = callback_task.model_copy(
            update={"on_success": None, "on_failure": None}
        )
        self.all_failed_callback_id = callback_task.task_id
        self._changed()
        self._inline_followers(callback_task.task_id, follow_success, follow_failure)

    def _check_new(self, task: Task) -> None:
        if not isinstance(task, Task):
            raise GraphBuildError(f"a graph holds Tasks, not {type(task).__name__}")
        if task.task_id in self.children or task.task_id in self.fail_children:
            raise GraphBuildError(
                f"task {task.task_id} ({task.function_name}) is already in the graph; each "
                "task can appear once (make another with Task.si(...) to run it again)"
            )

    def _inline_followers(
        self, task_id: TaskId, on_success: Task | None, on_failure: Task | None
    ) -> None:
        if on_success is not None:
            self.add_task(on_success, parent_ids=[task_id])
        if on_failure is not None:
            self.add_failure_callback(task_id, on_failure)

    def _refuse_cycle(self, start: TaskId) -> None:
        """Raise if ``start`` can reach itself over success or failure edges."""
        seen: set[TaskId] = set()
        pending = list(self.notified_by(start))
        while pending:
            node = pending.pop()
            if node == start:
                raise GraphBuildError(f"adding task {start} would create a cycle")
            if node not in seen:
                seen.add(node)
                pending.extend(self.notified_by(node))

    def check(self) -> None:
        """Refuse a graph that could never finish as wired; raises GraphBuildError.

        Rejects: an empty graph, edges naming unknown tasks, a handler that is
        also waited on by a task of its own, a task depending on a task and on
        that task's failure handler (it could never run), anything depending on
        the all-failed callback, and cycles.
        """
        errors: list[str] = []
        if not self.children:
            raise GraphBuildError("a graph needs at least one task besides its failure handlers")
        nodes = self.tasks
        for source, kinds in (("edges", self.edges), ("fail_edges", self.fail_edges)):
            for parent, kids in kinds.items():
                if parent not in nodes:
                    errors.append(f"{source} names unknown task {parent}")
                for kid in kids:
                    if kid not in nodes:
                        errors.append(f"{source} of {parent} names unknown task {kid}")
                    if kid == parent:
                        errors.append(f"task {kid} cannot wait on itself")
                    if len(kids) != len(set(kids)):
                        errors.append(f"{source} of {parent} lists a task twice")
        overlap = set(self.children) & set(self.fail_children)
        for task_id in sorted(overlap):
            errors.append(f"task {task_id} is both a main task and a failure handler")
        for handler in self.fail_children:
            if handler != self.all_failed_callback_id and handler not in self.failure_parents:
                errors.append(f"failure handler {handler} serves no task")
        callback = self.all_failed_callback_id
        if callback is not None:
            if callback not in self.fail_children:
                errors.append(f"the all-failed callback {callback} is not in fail_children")
            if callback in self.failure_parents:
                errors.append(f"task {callback} cannot be both a failure handler and all-failed")
            if self.parents.get(callback):
                errors.append("the all-failed callback cannot depend on other tasks")
            for kid in self.edges.get(callback, []):
                errors.append(
                    f"task {kid} depends on the all-failed callback, which runs only after "
                    "the graph has ended"
                )
        for task_id, parents in self.parents.items():
            if task_id in self.failure_parents and parents:
                errors.append(
                    f"failure handler {task_id} also depends on {parents}; a handler runs "
                    "only when a task it serves fails"
                )
            handlers = {h for p in parents for h in self.fail_edges.get(p, [])}
            for parent in parents:
                if parent in handlers:
                    errors.append(
                        f"task {task_id} depends on a task and on its failure handler "
                        f"{parent}; it could never run"
                    )
        if errors:
            raise GraphBuildError("invalid task graph: " + "; ".join(dict.fromkeys(errors)))
        self._check_acyclic()

    def _check_acyclic(self) -> None:
        """Kahn's algorithm over success and failure edges."""
        indegree = dict.fromkeys(self.tasks, 0)
        for task_id in self.tasks:
            for kid in self.notified_by(task_id):
                indegree[kid] += 1
        ready = [t for t, d in indegree.items() if d == 0]
        visited = 0
        while ready:
            node = ready.pop()
            visited += 1
            for kid in self.notified_by(node):
                indegree[kid] -= 1
                if indegree[kid] == 0:
                    ready.append(kid)
        if visited != len(self.tasks):
            stuck = sorted(t for t, d in indegree.items() if d > 0)
            names = ", ".join(f"{t} ({self.tasks[t].function_name})" for t in stuck[:5])
            raise GraphBuildError(f"invalid task graph: cycle among {names}")

    # -- reading (needs ``results``) -----------------------------------------------------

    def set_results(
        self,
        results: dict[TaskId, TaskResult | TaskResultSlim],
        skipped: Iterable[TaskId] = (),
    ) -> None:
        """Attach node records read from the store (``skipped``: nodes that will never run)."""
        self.results = dict(results)
        self._skipped = set(skipped)

    def is_skipped(self, task_id: TaskId) -> bool:
        """Whether the node will never run (a parent failed, or its tasks all succeeded)."""
        return task_id in self._skipped

    def get_result(self, task_id: TaskId) -> TaskResult | TaskResultSlim | None:
        """The node's record, if read."""
        return self.results.get(task_id)

    def get_status(self, task_id: TaskId) -> TaskStatus | None:
        """The node's status, if read."""
        found = self.results.get(task_id)
        return found.status if found is not None else None

    def schedule_task(self, task_id: TaskId) -> TaskResult | TaskResultSlim:
        """Mark a Pending node Scheduled in ``results`` (in memory) and return its record."""
        if task_id not in self.tasks:
            raise ValueError(f"task {task_id} is not in graph {self.graph_id}")
        found = self.results.get(task_id)
        if found is None or found.status is not TaskStatus.Pending:
            raise ValueError(f"task {task_id} is not pending and cannot be scheduled")
        found.status = TaskStatus.Scheduled
        return found

    def add_result(self, result: TaskResult) -> TaskResult:
        """Record a node's result in ``results`` (in memory)."""
        if result.task_id not in self.tasks:
            raise ValueError(f"task {result.task_id} is not in graph {self.graph_id}")
        self.results[result.task_id] = result
        return result

    def all_antecedents_succeeded(self, task_id: TaskId) -> bool:
        """Whether every success-edge parent of ``task_id`` has succeeded."""
        return all(self._status_is(p, succeeded=True) for p in self.parents.get(task_id, []))

    def all_antecedents_finished(self, task_id: TaskId) -> bool:
        """Whether every success-edge parent of ``task_id`` has finished."""
        return all(
            (status := self.get_status(p)) is not None and status.finished
            for p in self.parents.get(task_id, [])
        )

    def task_is_ready(self, task_id: TaskId) -> bool:
        """Whether ``task_id`` may run now: its parents succeeded (a handler: one of the
        tasks it serves failed)."""
        if task_id in self.failure_parents:
            return any(self._status_is(p, failed=True) for p in self.failure_parents[task_id])
        return self.all_antecedents_succeeded(task_id)

    def _status_is(self, task_id: TaskId, *, succeeded: bool = False, failed: bool = False) -> bool:
        status = self.get_status(task_id)
        if status is None:
            return False
        return (succeeded and status.succeeded) or (failed and status.failed)

    def completed_successfully(self) -> bool:
        """Whether every main task succeeded."""
        return bool(self.children) and all(
            self.get_status(t) is TaskStatus.Success for t in self.children
        )

    def has_failures(self) -> bool:
        """Whether any node failed, failure handlers included."""
        return any((status := self.get_status(t)) is not None and status.failed for t in self.tasks)

    def will_not_run(self) -> set[TaskId]:
        """Nodes that can never run: skipped, or downstream of a failure or a skip."""
        blocked = set(self._skipped)
        for task_id in self._in_order():
            status = self.get_status(task_id)
            if status is not None and status is not TaskStatus.Pending:
                continue
            if task_id in self.failure_parents:
                served = self.failure_parents[task_id]
                if all(self._status_is(p, succeeded=True) or p in blocked for p in served):
                    blocked.add(task_id)
            elif any(
                p in blocked or self._status_is(p, failed=True)
                for p in self.parents.get(task_id, [])
            ):
                blocked.add(task_id)
        return blocked

    def _in_order(self) -> list[TaskId]:
        """Nodes in an order where each comes after everything it waits on."""
        done: list[TaskId] = []
        placed: set[TaskId] = set()
        indegree = {t: len(self.waits_on(t)) for t in self.tasks}
        ready = [t for t, d in indegree.items() if d == 0]
        while ready:
            node = ready.pop()
            done.append(node)
            placed.add(node)
            for kid in self.notified_by(node):
                indegree[kid] -= 1
                if indegree[kid] == 0:
                    ready.append(kid)
        done.extend(t for t in self.tasks if t not in placed)
        return done

    def _settled_except_all_failed(self) -> bool:
        blocked = self.will_not_run()
        for task_id in self.tasks:
            if task_id == self.all_failed_callback_id or task_id in blocked:
                continue
            status = self.get_status(task_id)
            if status is None or not status.finished:
                return False
        return True

    def is_terminal_failed(self) -> bool:
        """Whether the graph has ended (every node finished or unable to run, the
        all-failed callback aside) with at least one failure."""
        return bool(self.children) and self._settled_except_all_failed() and self.has_failures()

    def is_complete(self) -> bool:
        """Whether the graph has ended, the all-failed callback included when it is due."""
        if not self.children or not self._settled_except_all_failed():
            return False
        callback = self.all_failed_callback_id
        if callback is not None and self.has_failures() and callback not in self._skipped:
            status = self.get_status(callback)
            return status is not None and status.finished
        return True

    def generate_pending_results(self) -> Iterator[TaskResultSlim]:
        """A Pending record for each node that has none in ``results`` (added to it),
        then every Pending one."""
        for task_id in self.tasks:
            if task_id not in self.results:
                self.results[task_id] = TaskResultSlim.default(task_id, self.graph_id)
            found = self.results[task_id]
            if found.status is TaskStatus.Pending:
                yield found

    def generate_ready_tasks(self) -> Iterator[Task]:
        """Main tasks that are Pending with every parent succeeded."""
        for task_id, task in self.children.items():
            if self.get_status(task_id) is TaskStatus.Pending and self.task_is_ready(task_id):
                yield task

    def generate_failure_ready_tasks(self) -> Iterator[Task]:
        """Failure handlers that are Pending with a task they serve failed."""
        for task_id, task in self.fail_children.items():
            if task_id == self.all_failed_callback_id:
                continue
            if self.get_status(task_id) in (None, TaskStatus.Pending) and self.task_is_ready(
                task_id
            ):
                yield task

    def generate_all_failed_callback_task(self) -> Iterator[Task]:
        """The all-failed callback, once the graph ended with a failure and it is Pending."""
        callback = self.all_failed_callback_id
        if callback is None or self.get_status(callback) is not TaskStatus.Pending:
            return
        if self.is_terminal_failed():
            yield self.fail_children[callback]

    def generate_scheduled_tasks(self) -> Iterator[Task]:
        """Nodes Scheduled whose conditions to run still hold (candidates to publish again
        after a crash between the Scheduled write and the publish)."""
        for task_id, task in self.tasks.items():
            if self.get_status(task_id) is not TaskStatus.Scheduled:
                continue
            if task_id == self.all_failed_callback_id:
                if self.is_terminal_failed():
                    yield task
            elif self.task_is_ready(task_id):
                yield task

    def detect_stalled_tasks(self) -> list[tuple[TaskId, str, TaskStatus]]:
        """``(task_id, function_name, status)`` of nodes Scheduled, Started or Retry:
        candidates for ``recover`` (whether they are stuck depends on how long)."""
        stalled = []
        for task_id, task in itertools.chain(self.children.items(), self.fail_children.items()):
            status = self.get_status(task_id)
            if status in STALLED_STATUSES:
                stalled.append((task_id, task.function_name, status))
        return stalled

"""Building task graphs fluently, with every malformed wiring rejected at ``build()``.

The cursor (the tasks ``then`` attaches to) moves with ``add``, ``parallel``,
``then``, ``sequence`` and ``add_chain``; ``on_failure`` and ``on_all_failed``
attach handlers without moving it, so the seed's
``add(fetch).on_failure(fetch.task_id, cleanup).then(process)`` makes
``process`` depend on ``fetch``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Self

from boilermaker.exceptions import GraphBuildError
from boilermaker.ids import GraphId, TaskId, new_graph_id
from boilermaker.task.graph import TaskGraph
from boilermaker.task.task import Task, TaskChain

Dependency = Task | TaskId | str
Dependencies = Dependency | Sequence[Dependency] | None


def _ids(deps: Dependencies) -> list[TaskId]:
    if deps is None:
        return []
    if isinstance(deps, Task | str):
        deps = [deps]
    out: list[TaskId] = []
    for dep in deps:
        if isinstance(dep, Task):
            out.append(dep.task_id)
        elif isinstance(dep, str):
            out.append(TaskId(dep))
        else:
            raise GraphBuildError(f"depends_on takes tasks or task ids, not {type(dep).__name__}")
    return out


class TaskGraphBuilder:
    """Fluent construction of a :class:`TaskGraph`."""

    def __init__(self, graph_id: GraphId | None = None) -> None:
        self._graph_id = graph_id or new_graph_id()
        self._tasks: dict[TaskId, Task] = {}
        self._parents: dict[TaskId, list[TaskId]] = {}
        self._failure_callbacks: dict[TaskId, TaskId] = {}
        self._all_failed: TaskId | None = None
        self._cursor: list[TaskId] = []
        self._errors: list[str] = []

    # -- adding tasks -----------------------------------------------------------------

    def _register(self, task: Task, what: str) -> None:
        if not isinstance(task, Task):
            raise GraphBuildError(f"{what} takes a Task, not {type(task).__name__}")
        if task.task_id in self._tasks:
            self._errors.append(f"duplicate task id {task.task_id} ({task.function_name})")
            return
        if task.on_success is not None or task.on_failure is not None:
            self._errors.append(
                f"task {task.task_id} ({task.function_name}) carries on_success/on_failure; "
                "in a graph, wire dependencies with depends_on/then/on_failure instead"
            )
        self._tasks[task.task_id] = task

    def add(
        self, task: Task, depends_on: Dependencies = None, on_failure: Task | None = None
    ) -> Self:
        """Add ``task``, running after everything in ``depends_on`` succeeded."""
        self._register(task, "add()")
        self._parents.setdefault(task.task_id, []).extend(_ids(depends_on))
        if on_failure is not None:
            self.on_failure(task.task_id, on_failure)
        self._cursor = [task.task_id]
        return self

    def parallel(
        self,
        *tasks: Task | Iterable[Task],
        depends_on: Dependencies = None,
        on_failure: Task | None = None,
    ) -> Self:
        """Add tasks that may run at the same time, each after ``depends_on``.

        ``on_failure`` here is a single handler that cannot serve several tasks:
        pass one per task with :meth:`on_failure` instead.
        """
        flat: list[Task] = []
        for item in tasks:
            if isinstance(item, Task):
                flat.append(item)
            else:
                flat.extend(item)
        if not flat:
            raise GraphBuildError("parallel() needs at least one task")
        if on_failure is not None and len(flat) > 1:
            raise GraphBuildError(
                "parallel(on_failure=...) would share one handler between several tasks; "
                "attach a handler per task with on_failure(task_id, handler)"
            )
        deps = _ids(depends_on)
        for task in flat:
            self._register(task, "parallel()")
            self._parents.setdefault(task.task_id, []).extend(deps)
        if on_failure is not None:
            self.on_failure(flat[0].task_id, on_failure)
        self._cursor = [task.task_id for task in flat]
        return self

    def then(self, task: Task, on_failure: Task | None = None) -> Self:
        """Add ``task`` after every task at the cursor (a fan-in when there are several)."""
        if not self._cursor:
            raise GraphBuildError("then() needs a task before it: start with add() or parallel()")
        return self.add(task, depends_on=list(self._cursor), on_failure=on_failure)

    def sequence(self, *tasks: Task) -> Self:
        """Add tasks one after another; the first runs after the cursor if there is one."""
        if not tasks:
            raise GraphBuildError("sequence() needs at least one task")
        first, *rest = tasks
        if self._cursor:
            self.then(first)
        else:
            self.add(first)
        for task in rest:
            self.then(task)
        return self

    def add_chain(self, chain: TaskChain, depends_on: Dependencies = None) -> Self:
        """Add a :class:`TaskChain`; its head runs after ``depends_on``."""
        if not isinstance(chain, TaskChain):
            raise GraphBuildError(f"add_chain() takes a TaskChain, not {type(chain).__name__}")
        self.add(chain.head, depends_on=depends_on)
        for task in chain.tasks[1:]:
            self.then(task)
        if chain.on_failure is not None:
            self.on_failure(chain.last.task_id, chain.on_failure)
        return self

    def on_failure(self, task_id: TaskId | str | Task, callback: Task) -> Self:
        """Run ``callback`` if ``task_id`` fails (after its retries). The cursor does not move."""
        target = task_id.task_id if isinstance(task_id, Task) else TaskId(task_id)
        if target in self._failure_callbacks:
            self._errors.append(f"task {target} already has a failure handler")
            return self
        self._register(callback, "on_failure()")
        self._parents.setdefault(callback.task_id, [])
        self._failure_callbacks[target] = callback.task_id
        return self

    def on_all_failed(self, task: Task) -> Self:
        """Run ``task`` once, when the graph has ended and any task in it failed."""
        if self._all_failed is not None:
            raise GraphBuildError("the graph already has an all-failed callback")
        self._register(task, "on_all_failed()")
        self._parents.setdefault(task.task_id, [])
        self._all_failed = task.task_id
        return self

    # -- validation ---------------------------------------------------------------------

    def build(self, on_all_failed: Task | None = None) -> TaskGraph:
        """Validate and return the graph.

        Rejects: an empty graph, duplicate ids, unknown dependencies, cycles,
        a task wired to both a task and that task's failure handler (it could
        never run), a handler serving several tasks, a handler that also has
        dependencies, anything depending on the all-failed callback.
        """
        if on_all_failed is not None:
            self.on_all_failed(on_all_failed)
        errors = list(self._errors)
        handlers = set(self._failure_callbacks.values())
        if not self._tasks:
            raise GraphBuildError("a graph needs at least one task")
        if all(t in handlers or t == self._all_failed for t in self._tasks):
            raise GraphBuildError("a graph needs at least one task besides its failure handlers")
        for target, handler in self._failure_callbacks.items():
            if target not in self._tasks:
                errors.append(f"on_failure() names unknown task {target}")
            if target == handler:
                errors.append(f"task {target} cannot be its own failure handler")
            if handler == self._all_failed:
                errors.append(f"task {handler} cannot be both a failure handler and all-failed")
        for task_id, parents in self._parents.items():
            seen: set[TaskId] = set()
            for parent in parents:
                if parent not in self._tasks:
                    errors.append(f"task {task_id} depends on unknown task {parent}")
                if parent == task_id:
                    errors.append(f"task {task_id} depends on itself")
                if parent in seen:
                    errors.append(f"task {task_id} lists dependency {parent} twice")
                seen.add(parent)
                if parent == self._all_failed:
                    errors.append(
                        f"task {task_id} depends on the all-failed callback, which runs "
                        "only after the graph has ended"
                    )
            if task_id in handlers and parents:
                errors.append(
                    f"failure handler {task_id} also depends on {parents}; a handler runs "
                    "only when its task fails"
                )
            if task_id == self._all_failed and parents:
                errors.append("the all-failed callback cannot depend on other tasks")
            for parent in parents:
                if self._failure_callbacks.get(parent) in seen:
                    errors.append(
                        f"task {task_id} depends on {parent} and on its failure handler; "
                        "it could never run"
                    )
        if errors:
            raise GraphBuildError("invalid task graph: " + "; ".join(dict.fromkeys(errors)))
        children: dict[TaskId, list[TaskId]] = {}
        for task_id, parents in self._parents.items():
            for parent in parents:
                children.setdefault(parent, []).append(task_id)
        self._check_acyclic(children)
        # Stamp the caller's own tasks too, so get_result(task) finds graph records.
        for task in self._tasks.values():
            task.graph_id = self._graph_id
        tasks = {
            task_id: task.model_copy(update={"graph_id": self._graph_id})
            for task_id, task in self._tasks.items()
        }
        return TaskGraph(
            graph_id=self._graph_id,
            tasks=tasks,
            children=children,
            failure_callbacks=dict(self._failure_callbacks),
            all_failed_callback=self._all_failed,
        )

    def _check_acyclic(self, children: dict[TaskId, list[TaskId]]) -> None:
        """Kahn's algorithm over success edges and failure-handler edges."""
        edges: dict[TaskId, list[TaskId]] = {t: list(children.get(t, [])) for t in self._tasks}
        for target, handler in self._failure_callbacks.items():
            edges[target].append(handler)
        indegree = dict.fromkeys(self._tasks, 0)
        for kids in edges.values():
            for kid in kids:
                indegree[kid] += 1
        ready = [t for t, d in indegree.items() if d == 0]
        visited = 0
        while ready:
            node = ready.pop()
            visited += 1
            for kid in edges[node]:
                indegree[kid] -= 1
                if indegree[kid] == 0:
                    ready.append(kid)
        if visited != len(self._tasks):
            stuck = sorted(t for t, d in indegree.items() if d > 0)
            names = ", ".join(f"{t} ({self._tasks[t].function_name})" for t in stuck[:5])
            raise GraphBuildError(f"invalid task graph: cycle among {names}")

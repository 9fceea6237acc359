"""Building task graphs fluently, with the published library's cursor rules.

The builder keeps a cursor: the task(s) added last. A call that leaves
``depends_on`` out (the :data:`LAST_ADDED` default) depends on the cursor:

- ``add(t)``: after the cursor (a root if it is empty); cursor ``[t]``.
- ``add(t, depends_on=None)``: an explicit root; cursor ``[t]``.
- ``add(t, depends_on=[a, "id", chain])``: after those (a chain means its last
  task); cursor ``[t]``.
- ``parallel(t1, t2)``: each after the cursor (``depends_on=None``: roots);
  cursor ``[t1, t2]``.
- ``then(t)``: after the cursor (an error when it is empty); cursor ``[t]``.
- ``sequence(a, b, c)``: ``add(a)``, ``then(b)``, ``then(c)``; cursor ``[c]``.
- ``add_chain(chain)``: the head after the cursor, each other task after the
  one before; cursor ``[chain.last]``. With ``depends_on=[...]``: the head
  after those. With ``depends_on=None``: the head is a root and
  ``chain.last`` is *appended* to the cursor.

So ``add(a).add(b)`` makes ``b`` depend on ``a``, ``add(a).parallel(b, c).then(d)``
is a diamond, and two ``add_chain(..., depends_on=None)`` calls followed by
``then(join)`` join both chains. ``on_failure`` (the method, as in the seed's
``add(fetch).on_failure(fetch.task_id, cleanup).then(process)``) and
``on_all_failed`` attach handlers without moving the cursor.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Self, TypeAlias

from boilermaker.exceptions import GraphBuildError
from boilermaker.ids import GraphId, TaskId, check_id, new_graph_id
from boilermaker.task.graph import TaskGraph
from boilermaker.task.task import Task, TaskChain


class _LastAdded:
    """The "depend on the cursor" default of ``depends_on`` (a singleton)."""

    _instance: _LastAdded | None = None

    def __new__(cls) -> _LastAdded:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "LAST_ADDED"


#: ``depends_on=LAST_ADDED`` (the default): depend on the task(s) added last.
LAST_ADDED = _LastAdded()
LastAddedSingleton: TypeAlias = _LastAdded

Dependency = Task | TaskChain | TaskId | str
Dependencies = Dependency | Sequence[Dependency] | None | _LastAdded


class TaskGraphBuilder:
    """Fluent construction of a :class:`TaskGraph` (rules in the module docstring).

    Mistakes that can be seen at once (an unknown dependency, a task added
    twice) raise ``ValueError`` (:class:`GraphBuildError`) at the call;
    ``build()`` checks the whole wiring.
    """

    def __init__(self, graph_id: GraphId | None = None) -> None:
        self._graph_id = GraphId(check_id(graph_id, "graph_id")) if graph_id else new_graph_id()
        self._tasks: dict[TaskId, Task] = {}
        self._parents: dict[TaskId, list[TaskId]] = {}
        self._handlers: dict[TaskId, Task] = {}
        self._failure_edges: list[tuple[TaskId, TaskId]] = []
        self._all_failed: Task | None = None
        self._cursor: list[TaskId] = []

    # -- adding tasks -----------------------------------------------------------------

    def _known(self, task_id: TaskId) -> bool:
        return task_id in self._tasks

    def _resolve(self, depends_on: Dependencies) -> list[TaskId]:
        """The parents named by ``depends_on`` (the cursor for LAST_ADDED)."""
        if depends_on is LAST_ADDED:
            return list(self._cursor)
        if depends_on is None:
            return []
        single = isinstance(depends_on, Task | TaskChain | str)
        items: Sequence[object] = [depends_on] if single else list(depends_on)  # type: ignore[arg-type]
        out: list[TaskId] = []
        for dep in items:
            if isinstance(dep, TaskChain):
                dep_id = dep.last.task_id
            elif isinstance(dep, Task):
                dep_id = dep.task_id
            elif isinstance(dep, str):
                dep_id = TaskId(dep)
            else:
                raise GraphBuildError(
                    f"depends_on takes tasks, task ids or chains, not {type(dep).__name__}"
                )
            if not self._known(dep_id):
                raise GraphBuildError(
                    f"task {dep_id!r} in depends_on is not in this graph; add it first"
                )
            if dep_id not in out:
                out.append(dep_id)
        return out

    def _register(self, task: Task, parents: list[TaskId], on_failure: Task | None) -> None:
        if not isinstance(task, Task):
            raise GraphBuildError(f"a graph holds Tasks, not {type(task).__name__}")
        if task.task_id in self._tasks or task.task_id in self._handlers:
            raise GraphBuildError(
                f"task {task.task_id!r} ({task.function_name}) was already added to this "
                "graph; each task can appear once (make another with Task.si(...))"
            )
        self._tasks[task.task_id] = task
        self._parents[task.task_id] = list(parents)
        if on_failure is not None:
            self.on_failure(task.task_id, on_failure)

    def add(
        self,
        task: Task,
        *,
        depends_on: Dependencies = LAST_ADDED,
        on_failure: Task | None = None,
    ) -> Self:
        """Add ``task`` after ``depends_on`` (default: the cursor); it becomes the cursor."""
        self._register(task, self._resolve(depends_on), on_failure)
        self._cursor = [task.task_id]
        return self

    def parallel(
        self,
        *tasks: Task | Iterable[Task],
        depends_on: Dependencies = LAST_ADDED,
        on_failure: Task | None = None,
    ) -> Self:
        """Add tasks that may run at the same time, each after ``depends_on`` (default:
        the cursor); together they become the cursor.

        ``on_failure`` is one handler shared by all of them: it runs once, when
        the first of them fails.
        """
        flat: list[Task] = []
        for item in tasks:
            if isinstance(item, Task):
                flat.append(item)
            else:
                flat.extend(item)
        if not flat:
            raise GraphBuildError("parallel() needs at least one task")
        parents = self._resolve(depends_on)
        for task in flat:
            self._register(task, parents, on_failure)
        self._cursor = [task.task_id for task in flat]
        return self

    def then(self, task: Task, *, on_failure: Task | None = None) -> Self:
        """Add ``task`` after every task at the cursor (a fan-in when there are several)."""
        if not self._cursor:
            raise GraphBuildError("then() needs a task before it: start with add() or parallel()")
        return self.add(task, on_failure=on_failure)

    def sequence(self, *tasks: Task) -> Self:
        """``add`` the first task (after the cursor, if any), then ``then`` each other."""
        if not tasks:
            return self
        first, *rest = tasks
        self.add(first)
        for task in rest:
            self.then(task)
        return self

    def add_chain(self, chain: TaskChain, *, depends_on: Dependencies = LAST_ADDED) -> Self:
        """Add a :class:`TaskChain`: its head after ``depends_on``, each other task after
        the one before. ``depends_on=None`` makes an independent chain and *adds* its
        last task to the cursor (so the next ``then`` joins it with what came before);
        otherwise its last task becomes the cursor. The chain's ``on_any_failure``
        handler serves every task of the chain."""
        if not isinstance(chain, TaskChain):
            raise GraphBuildError(f"add_chain() takes a TaskChain, not {type(chain).__name__}")
        parents = self._resolve(depends_on)
        previous: TaskId | None = None
        for task in chain:
            self._register(task, parents if previous is None else [previous], chain.on_any_failure)
            previous = task.task_id
        if depends_on is None:
            self._cursor.append(chain.last.task_id)
        else:
            self._cursor = [chain.last.task_id]
        return self

    def on_failure(self, task_id: TaskId | str | Task, callback: Task) -> Self:
        """Run ``callback`` if ``task_id`` fails (after its retries). The same callback
        may serve several tasks: it then runs once, at the first failure. The cursor
        does not move."""
        target = task_id.task_id if isinstance(task_id, Task) else TaskId(task_id)
        if not self._known(target):
            raise GraphBuildError(f"on_failure() names task {target!r}, which is not in this graph")
        if not isinstance(callback, Task):
            raise GraphBuildError(f"on_failure() takes a Task, not {type(callback).__name__}")
        known = self._handlers.get(callback.task_id)
        if known is None:
            if callback.task_id in self._tasks or (
                self._all_failed is not None and self._all_failed.task_id == callback.task_id
            ):
                raise GraphBuildError(
                    f"task {callback.task_id!r} ({callback.function_name}) is already in this "
                    "graph as a task; a failure handler must be a task of its own"
                )
            self._handlers[callback.task_id] = callback
        if (target, callback.task_id) not in self._failure_edges:
            self._failure_edges.append((target, callback.task_id))
        return self

    def on_all_failed(self, task: Task) -> Self:
        """Run ``task`` once, when the graph has ended and anything in it failed."""
        if self._all_failed is not None:
            raise GraphBuildError("the graph already has an all-failed callback")
        if not isinstance(task, Task):
            raise GraphBuildError(f"on_all_failed() takes a Task, not {type(task).__name__}")
        self._all_failed = task
        return self

    # -- validation ---------------------------------------------------------------------

    def build(self, on_all_failed: Task | None = None) -> TaskGraph:
        """Validate and return the graph (see :meth:`TaskGraph.check` for what is refused).

        Tasks carrying ``on_success`` / ``on_failure`` (chained with ``>>``) bring
        those along as a child and a failure handler. Every task is stamped with
        the graph id, the caller's objects included, so ``get_result(task)``
        finds graph records.
        """
        if on_all_failed is not None:
            if self._all_failed is not None:
                raise GraphBuildError(
                    "on_all_failed set both with the method and as build()'s argument; use one"
                )
            self.on_all_failed(on_all_failed)
        if not self._tasks:
            raise GraphBuildError("a graph needs at least one task: add() one before build()")
        graph = TaskGraph(graph_id=self._graph_id)
        for task_id, task in self._tasks.items():
            graph.add_task(task, parent_ids=self._parents[task_id])
        for target, handler in self._failure_edges:
            graph.add_failure_callback(target, self._handlers[handler])
        if self._all_failed is not None:
            graph.add_all_failed_callback(self._all_failed)
        graph.check()
        return graph

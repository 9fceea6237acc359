"""The Boilermaker application: register task functions, publish tasks, run workers."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from boilermaker.broker import Broker
from boilermaker.exceptions import (
    BoilermakerAppException,
    ResultNotReady,
    ResultsStoreRequired,
)
from boilermaker.graph_dispatch import GraphRuntime
from boilermaker.graph_recovery import GraphProgress, has_ended, read_progress, recover
from boilermaker.ids import NullTaskId, TaskId
from boilermaker.log_format import configure_from_environment
from boilermaker.publishing import Publication, Publisher
from boilermaker.registry import Registry, TaskFunction
from boilermaker.results import Records, node_blob, standalone_blob
from boilermaker.results_store import ResultsStore
from boilermaker.retries import RetryPolicy
from boilermaker.task.graph import TaskGraph
from boilermaker.task.serialize import check_arguments
from boilermaker.task.status import TaskResult
from boilermaker.task.task import Task
from boilermaker.tracing import Tracing

if TYPE_CHECKING:
    from boilermaker.worker.engine import Worker
    from boilermaker.worker.middleware import Middleware
    from boilermaker.worker.settings import WorkerSettings

F = TypeVar("F", bound=TaskFunction)


class Boilermaker:
    """An application: shared ``state``, registered functions, a broker and optionally a store.

    ``state`` is passed as the first argument to every task function; it is
    held by a normal reference, so any object works (a dict, a class instance).
    """

    def __init__(
        self,
        state: Any,
        service_bus_client: Broker | None = None,
        enable_opentelemetry: bool = False,
        results_storage: ResultsStore | None = None,
        *,
        middleware: Sequence[Middleware] = (),
    ) -> None:
        configure_from_environment()
        self.state = state
        self.service_bus_client = service_bus_client
        self.results_storage = results_storage
        self.tracing = Tracing(enable_opentelemetry)
        self.registry = Registry()
        self.middleware: list[Middleware] = []
        for item in middleware:
            self.add_middleware(item)
        self._publisher: Publisher | None = None
        self._graphs: GraphRuntime | None = None
        self._worker: Worker | None = None

    def set_broker(self, broker: Broker) -> None:
        """Give an application built without a broker its broker (before anything is
        published or run); an application that has one keeps it (BoilermakerAppException)."""
        if self.service_bus_client is not None:
            raise BoilermakerAppException("this application already has a broker")
        self.service_bus_client = broker
        self._publisher = None
        self._graphs = None

    def add_middleware(self, middleware: Middleware) -> None:
        """Add a middleware: its hooks run around every task this app's workers
        handle, after the worker's own (see :mod:`boilermaker.worker.middleware`)."""
        from boilermaker.worker.middleware import Middleware

        if not isinstance(middleware, Middleware):
            raise TypeError(
                f"middleware must subclass boilermaker.worker.Middleware, "
                f"not {type(middleware).__name__}"
            )
        self.middleware.append(middleware)

    # -- registration -------------------------------------------------------------------

    def register_async(self, fn: F, **options: Any) -> F:
        """Register an async task function.

        Options: ``policy`` (RetryPolicy), ``should_dead_letter`` (dead-letter
        failed messages; default True), ``acks_late`` (settle after running;
        default True), ``name`` (registered name; default ``fn.__name__``),
        ``timeout`` (seconds a run may take before it is cancelled and counted
        as a failure the retry policy applies to; default: the worker's
        ``task_timeout``). Anything else is an error.
        """
        self.registry.register(fn, **options)
        return fn

    def register_many_async(self, fns: Iterable[TaskFunction], **options: Any) -> None:
        """Register several functions with the same options."""
        for fn in fns:
            self.register_async(fn, **options)

    def task(self, **options: Any) -> Callable[[F], F]:
        """Decorator form of :meth:`register_async`."""

        def decorate(fn: F) -> F:
            return self.register_async(fn, **options)

        return decorate

    # -- creating tasks -----------------------------------------------------------------

    def create_task(
        self, fn: TaskFunction | str, *args: Any, policy: RetryPolicy | None = None, **kwargs: Any
    ) -> Task:
        """A task for registered ``fn`` with these arguments, checked before anything is sent."""
        entry = self.registry.lookup(fn)
        entry.check_call(args, kwargs)
        check_arguments(entry.name, args, kwargs)
        return Task.from_checked(
            entry.name,
            args,
            kwargs,
            should_dead_letter=entry.should_dead_letter,
            acks_late=entry.acks_late,
            policy=policy if policy is not None else entry.policy,
        )

    @staticmethod
    def chain(*tasks: Task, on_failure: Task | None = None) -> Task:
        """Link tasks so each runs after the previous succeeded; returns the first.

        ``on_failure`` runs if any task of the chain fails.
        """
        if not tasks:
            raise BoilermakerAppException("chain() needs at least one task")
        for task in tasks:
            if not isinstance(task, Task):
                raise BoilermakerAppException(f"chain() takes tasks, not {type(task).__name__}")
        for current, following in itertools.pairwise(tasks):
            current.on_success = following
        if on_failure is not None:
            for task in tasks:
                task.on_failure = on_failure
        return tasks[0]

    # -- publishing ---------------------------------------------------------------------

    @property
    def publisher(self) -> Publisher:
        """The publisher over this application's broker."""
        if self._publisher is None:
            if self.service_bus_client is None:
                raise BoilermakerAppException("this application has no broker to publish to")
            broker = self.service_bus_client
            self._publisher = Publisher(broker, self.tracing, broker.queue_name, self.middleware)
        return self._publisher

    async def apply_async(
        self,
        fn: TaskFunction | str,
        *args: Any,
        delay: float = 0,
        publish_attempts: int = 1,
        policy: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> Task:
        """Create a task for ``fn`` and publish it; returns the published task."""
        task = self.create_task(fn, *args, policy=policy, **kwargs)
        # Through publish_task, as in 1.4.1: a subclass that overrides it sees every publish.
        return await self.publish_task(task, delay=delay, publish_attempts=publish_attempts)

    async def publish_task(
        self,
        task: Task,
        delay: float = 0,
        publish_attempts: int = 1,
        unique_msg_id: str | None = None,
    ) -> Task:
        """Publish a task (message id = task id unless ``unique_msg_id`` is given).

        Sets ``task.sequence_number`` when the broker reports one (always for
        delayed tasks).
        """
        if task.task_id == NullTaskId:
            raise BoilermakerAppException(
                "refusing to publish a task with the null task id (a prototype, never given "
                "an id of its own)"
            )
        (published,) = await self.publisher.publish(
            [Publication(task, delay, unique_msg_id)], publish_attempts
        )
        return published

    async def publish_many(
        self, tasks: Sequence[Task], delay: float = 0, publish_attempts: int = 1
    ) -> list[Task]:
        """Publish many tasks in as few broker calls as the message size limit allows."""
        return await self.publisher.publish(
            [Publication(task, delay) for task in tasks], publish_attempts
        )

    async def apply_many(
        self,
        fn: TaskFunction | str,
        calls: Iterable[Any],
        delay: float = 0,
        publish_attempts: int = 1,
    ) -> list[Task]:
        """Create and publish one task per item of ``calls``, batched.

        Each item is a tuple/list of positional arguments, a dict of keyword
        arguments, or an ``(args, kwargs)`` pair; anything else (a string, a
        number) is the task's single positional argument.
        """
        tasks = []
        for call in calls:
            if isinstance(call, Mapping):
                tasks.append(self.create_task(fn, **call))
            elif (
                isinstance(call, tuple)
                and len(call) == 2
                and isinstance(call[0], list | tuple)
                and isinstance(call[1], Mapping)
            ):
                tasks.append(self.create_task(fn, *call[0], **call[1]))
            elif isinstance(call, list | tuple):
                tasks.append(self.create_task(fn, *call))
            else:
                tasks.append(self.create_task(fn, call))
        return await self.publish_many(tasks, delay=delay, publish_attempts=publish_attempts)

    # -- graphs and results ---------------------------------------------------------------

    @property
    def graphs(self) -> GraphRuntime:
        """Graph dispatch over the results store."""
        if self._graphs is None:
            if self.results_storage is None:
                raise ResultsStoreRequired(
                    "task graphs need a results store: Boilermaker(..., results_storage=store)"
                )
            self._graphs = GraphRuntime(self.results_storage, lambda: self.publisher)
        return self._graphs

    async def publish_graph(self, graph: TaskGraph, publish_attempts: int = 1) -> TaskGraph:
        """Store the graph and publish its root tasks.

        Errors are raised, not swallowed; calling again after a failure
        finishes the job without duplicating what was already sent.
        """
        if not isinstance(graph, TaskGraph):
            raise BoilermakerAppException(
                f"publish_graph() takes a TaskGraph (from TaskGraphBuilder.build()), "
                f"not {type(graph).__name__}"
            )
        return await self.graphs.publish(graph, publish_attempts)

    async def graph_progress(self, graph_id: str) -> GraphProgress | None:
        """Every node's status in a published graph, or None if unknown."""
        return await read_progress(self.graphs, graph_id)

    async def wait_for_graph(
        self, graph_id: str, timeout: float | None = None, poll_interval: float = 0.2
    ) -> GraphProgress:
        """Wait until the graph has completed (every node finished or skipped).

        Polls the one end-of-graph record until the graph has ended, then every
        node's record (only the all-failed callback can still be running), so
        waiting costs one read per poll, not one per node.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if await has_ended(self.graphs, graph_id):
                progress = await read_progress(self.graphs, graph_id)
                if progress is not None and progress.complete:
                    return progress
            if deadline is not None and time.monotonic() >= deadline:
                raise ResultNotReady(f"graph {graph_id} did not complete within {timeout}s")
            await asyncio.sleep(poll_interval)

    async def recover_graph(
        self, graph_id: str, stalled_after: timedelta = timedelta(hours=1)
    ) -> list[TaskId]:
        """Re-dispatch stalled nodes of a graph; see :func:`boilermaker.graph_recovery.recover`."""
        return await recover(self.graphs, graph_id, stalled_after)

    async def get_result(
        self,
        task: Task | str,
        timeout: float | None = 0,
        poll_interval: float = 0.1,
        graph_id: str | None = None,
    ) -> TaskResult:
        """The stored result of a task, waiting up to ``timeout`` s for it to finish.

        ``timeout=0`` reads once; ``None`` waits indefinitely. Raises
        :class:`ResultNotReady` if it has not finished in time.
        """
        if self.results_storage is None:
            raise ResultsStoreRequired(
                "results need a results store: Boilermaker(..., results_storage=store)"
            )
        if isinstance(task, Task):
            task_id, graph_id = str(task.task_id), task.graph_id or graph_id
        else:
            task_id = str(task)
        name = node_blob(graph_id, task_id) if graph_id else standalone_blob(task_id)
        records = Records(self.results_storage)
        deadline = None if timeout is None else time.monotonic() + timeout
        wait = poll_interval
        while True:
            got = await records.get(name)
            if got is not None and got[0].status.finished:
                record = got[0]
                return TaskResult.model_validate(record.model_dump())
            if deadline is not None and time.monotonic() >= deadline:
                state = "no result yet" if got is None else f"status {got[0].status.value}"
                raise ResultNotReady(f"task {task_id} has not finished ({state})")
            pause = wait if deadline is None else min(wait, max(0.0, deadline - time.monotonic()))
            await asyncio.sleep(pause)
            wait = min(wait * 1.5, 2.0)

    # -- running ----------------------------------------------------------------------

    def worker(self, settings: WorkerSettings | None = None, **overrides: Any) -> Worker:
        """A worker for this application (see :class:`boilermaker.worker.Worker`)."""
        from boilermaker.broker import Configured
        from boilermaker.worker.engine import Worker
        from boilermaker.worker.settings import WorkerSettings

        broker = self.service_bus_client
        if broker is None:
            raise BoilermakerAppException("a worker needs a broker: Boilermaker(state, broker)")
        config = broker.config if isinstance(broker, Configured) else None
        base = settings or WorkerSettings.from_config(config)
        if overrides:
            base = base.replace(**overrides)
        return Worker(
            broker,
            self.registry,
            state=self.state,
            settings=base,
            publisher=self.publisher,
            graphs=self.graphs if self.results_storage is not None else None,
            tracing=self.tracing,
            middleware=self.middleware,
        )

    async def run(self, settings: WorkerSettings | None = None, **overrides: Any) -> None:
        """Run a worker until SIGINT/SIGTERM (or :meth:`stop`)."""
        self._worker = self.worker(settings, **overrides)
        try:
            await self._worker.run()
        finally:
            self._worker = None

    async def renew_message_lock(self) -> datetime:
        """Renew the lock of the message whose task is calling this; returns the new expiry.

        Workers renew locks on their own (``max_lock_renewal``), so this is rarely
        needed; it works with any concurrency, since each running task knows its
        own message. Raises RuntimeError outside a task run by a worker.
        """
        from boilermaker.worker.current import current_message

        current = current_message.get()
        if current is None:
            raise RuntimeError(
                "renew_message_lock() is for code running inside a task run by a worker"
            )
        return await current.receiver.renew_lock(current.message)

    async def signal_handler(self, *args: Any, **kwargs: Any) -> None:
        """Deprecated: workers handle SIGINT/SIGTERM themselves; this stops the running one."""
        _deprecated("Boilermaker.signal_handler()", "app.stop() (workers handle signals)")
        self.stop()

    async def message_handler(self, *args: Any, **kwargs: Any) -> None:
        """Deprecated: messages are handled by the worker (``app.run()`` /
        ``app.worker()``); calling this raises BoilermakerAppException."""
        _deprecated("Boilermaker.message_handler()", "app.run() or app.worker()")
        raise BoilermakerAppException(
            "message_handler() is gone: the worker (app.run(), app.worker()) handles "
            "messages, with middleware (Boilermaker(..., middleware=[...])) to add behaviour"
        )

    @property
    def function_registry(self) -> dict[str, TaskFunction]:
        """Deprecated: registered functions by name (use ``app.registry``)."""
        _deprecated("Boilermaker.function_registry", "app.registry")
        return {name: self.registry.lookup(name).fn for name in self.registry.names()}

    @property
    def otel_enabled(self) -> bool:
        """Deprecated: whether tracing is on (use ``app.tracing.enabled``)."""
        _deprecated("Boilermaker.otel_enabled", "app.tracing.enabled")
        return self.tracing.enabled

    def stop(self) -> None:
        """Ask a running worker to stop gracefully."""
        if self._worker is not None:
            self._worker.stop()

    async def run_until_idle(
        self, timeout: float = 30.0, settings: WorkerSettings | None = None, **overrides: Any
    ) -> Worker:
        """Run a worker until the queue is drained, then stop (for tests).

        Waits for scheduled messages (retries) too, up to ``timeout`` seconds;
        raises TimeoutError if the queue is not drained by then.
        """
        overrides.setdefault("install_signal_handlers", False)
        worker = self.worker(settings, **overrides)
        await worker.run_until_idle(timeout=timeout)
        return worker

    async def close(self) -> None:
        """Close the broker and the results store."""
        if self.service_bus_client is not None:
            await self.service_bus_client.close()
        if self.results_storage is not None:
            await self.results_storage.close()


def _deprecated(what: str, instead: str) -> None:
    import warnings

    warnings.warn(f"{what} is deprecated: use {instead}", DeprecationWarning, stacklevel=3)

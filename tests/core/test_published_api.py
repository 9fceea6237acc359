"""The members of the published 1.4.1 API reference that 1.x applications use, with
their documented meaning (see docs/migrating-from-1.4.1.md for what changed)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from boilermaker import Boilermaker, RetryPolicy
from boilermaker.broker import ReceivedMessage, ReceiveMode, SubQueue
from boilermaker.exceptions import BoilermakerAppException, PublishError, UnknownTaskError
from boilermaker.memory import InMemoryBroker
from boilermaker.memory.broker import InMemoryReceiver
from boilermaker.retries import RetryAttempts, RetryMode
from boilermaker.task import (
    LAST_ADDED,
    NullTaskId,
    Task,
    TaskGraph,
    TaskGraphBuilder,
    TaskResult,
    TaskResultSlim,
    TaskStatus,
    new_task_id,
)


def test_task_status_members() -> None:
    assert TaskStatus.default() is TaskStatus.Pending
    assert TaskStatus.Success.succeeded
    assert TaskStatus.Success.finished
    assert TaskStatus.RetriesExhausted.failed
    assert not TaskStatus.Retry.finished
    assert TaskStatus.finished_types() == {
        TaskStatus.Success,
        TaskStatus.Failure,
        TaskStatus.RetriesExhausted,
        TaskStatus.Deadlettered,
    }
    assert TaskStatus.failure_types() == TaskStatus.finished_types() - {TaskStatus.Success}


def test_task_result_slim_members() -> None:
    slim = TaskResultSlim.default("t-1", graph_id="g-1")  # type: ignore[arg-type]
    assert slim.status is TaskStatus.Pending
    assert slim.etag is None
    assert slim.directory_path == Path("g-1")
    assert slim.storage_path == Path("g-1/t-1.json")
    standalone = TaskResultSlim(task_id="t-2", status=TaskStatus.Failure)  # type: ignore[arg-type]
    assert standalone.storage_path == Path("t-2/t-2.json")
    assert standalone.finished
    assert standalone.failed
    assert not standalone.succeeded
    full = TaskResult(task_id="t-3", status=TaskStatus.Success, result=[1])  # type: ignore[arg-type]
    assert full.succeeded
    assert full.result == [1]
    assert full.errors is None


def test_task_members() -> None:
    task = Task.default("work", payload={"args": [1]})
    assert task.payload == {"args": [1], "kwargs": {}}
    assert task.policy == RetryPolicy.default()
    assert Task.default("bare").payload == {"args": [], "kwargs": {}}
    assert task.acks_early is False
    assert task.retry_task_id == f"{task.task_id}:0"  # as 1.4.1: <task_id>:<runs so far>
    assert task.can_retry
    task.mark_published(17)
    assert task.sequence_number == 17
    attempts = task.record_attempt()
    assert attempts is task.attempts
    assert attempts.attempts == 1
    assert task.retry_task_id == f"{task.task_id}:1"
    linear = Task.default(
        "w", policy=RetryPolicy(delay=10, delay_max=100, retry_mode=RetryMode.Linear)
    )
    linear.record_attempt()  # as 1.4.1: the first retry waits get_delay_interval(1)
    assert linear.get_next_delay() == 20
    linear.record_attempt()
    assert linear.get_next_delay() == 30
    a, b = Task.si("a"), Task.si("b")
    assert (a >> b) is b
    assert a.on_success is b
    c = Task.si("c")
    assert (c << a) is c  # as 1.4.1: << returns its left-hand task
    assert a.on_success is c


def test_retry_attempts_members() -> None:
    attempts = RetryAttempts.default()
    assert attempts.attempts == 0
    when = datetime(2030, 1, 2, tzinfo=UTC)
    assert attempts.inc(when) is attempts
    assert (attempts.attempts, attempts.last_retry) == (1, when)


def test_ids_and_sentinels() -> None:
    assert NullTaskId == "00000000-0000-0000-0000-000000000000"
    assert new_task_id() != new_task_id()
    assert repr(LAST_ADDED) == "LAST_ADDED"


def graph_with_results(statuses: dict[str, TaskStatus]) -> tuple[TaskGraph, dict[str, Task]]:
    tasks = {n: Task.si(n) for n in ("fetch", "process", "save", "cleanup", "fallback")}
    graph = (
        TaskGraphBuilder()
        .add(tasks["fetch"], on_failure=tasks["cleanup"])
        .then(tasks["process"])
        .then(tasks["save"])
        .build(on_all_failed=tasks["fallback"])
    )
    graph.set_results(
        {
            tasks[n].task_id: TaskResultSlim(
                task_id=tasks[n].task_id, graph_id=graph.graph_id, status=s
            )
            for n, s in statuses.items()
        }
    )
    return graph, tasks


def test_graph_reading_methods_while_running() -> None:
    graph, tasks = graph_with_results(
        {
            "fetch": TaskStatus.Success,
            "process": TaskStatus.Started,
            "save": TaskStatus.Pending,
            "cleanup": TaskStatus.Pending,
            "fallback": TaskStatus.Pending,
        }
    )
    assert graph.get_status(tasks["process"].task_id) is TaskStatus.Started
    assert graph.get_result(tasks["fetch"].task_id) is not None
    assert not graph.is_complete()
    assert not graph.has_failures()
    assert not graph.completed_successfully()
    assert not graph.is_terminal_failed()
    assert graph.detect_stalled_tasks() == [
        (tasks["process"].task_id, "process", TaskStatus.Started)
    ]
    assert graph.task_is_ready(tasks["process"].task_id)
    assert not graph.task_is_ready(tasks["save"].task_id)
    assert graph.all_antecedents_succeeded(tasks["process"].task_id)
    assert not graph.all_antecedents_finished(tasks["save"].task_id)
    assert graph.storage_path == TaskGraph.graph_path(graph.graph_id)


def test_graph_reading_methods_after_a_failure() -> None:
    graph, tasks = graph_with_results(
        {
            "fetch": TaskStatus.Failure,
            "process": TaskStatus.Pending,
            "save": TaskStatus.Pending,
            "cleanup": TaskStatus.Success,
            "fallback": TaskStatus.Pending,
        }
    )
    assert graph.has_failures()
    assert graph.is_terminal_failed()
    assert not graph.is_complete(), "the all-failed callback has yet to run"
    assert graph.task_is_ready(tasks["cleanup"].task_id)
    graph.results[tasks["fallback"].task_id].status = TaskStatus.Success
    assert graph.is_complete()


def test_graph_reading_methods_after_success() -> None:
    graph, _tasks = graph_with_results(
        {
            "fetch": TaskStatus.Success,
            "process": TaskStatus.Success,
            "save": TaskStatus.Success,
            "cleanup": TaskStatus.Pending,
            "fallback": TaskStatus.Pending,
        }
    )
    assert graph.completed_successfully()
    assert graph.is_complete()
    assert not graph.is_terminal_failed()


def test_exception_names_of_1x() -> None:
    from boilermaker import exc
    from boilermaker.failure import TaskFailureResult

    error = BoilermakerAppException("publishing failed", ["timeout"])
    assert error.errors == ["timeout"]
    assert "timeout" in str(error)
    assert issubclass(PublishError, BoilermakerAppException)
    assert issubclass(exc.BoilermakerUnregisteredFunction, ValueError)
    assert exc.BoilermakerUnregisteredFunction is UnknownTaskError
    assert issubclass(exc.BoilermakerTaskLeaseLost, exc.BoilermakerServiceBusError)
    assert TaskFailureResult is not None


async def test_null_task_id_is_never_published() -> None:
    app = Boilermaker({}, InMemoryBroker())
    with pytest.raises(BoilermakerAppException, match="null task id"):
        await app.publish_task(Task.si("f").model_copy(update={"task_id": NullTaskId}))


# -- renew_message_lock ------------------------------------------------------------------


class RecordingBroker(InMemoryBroker):
    """Records, per renewal, the message whose lock was renewed."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.renewed: list[str] = []

    def receiver(
        self,
        *,
        prefetch: int = 0,
        sub_queue: SubQueue = SubQueue.Main,
        receive_mode: ReceiveMode = ReceiveMode.PeekLock,
    ) -> InMemoryReceiver:
        inner = super().receiver(prefetch=prefetch, sub_queue=sub_queue, receive_mode=receive_mode)
        renewed = self.renewed
        original = inner.renew_lock

        async def renew_lock(message: ReceivedMessage) -> datetime:
            renewed.append(message.message_id)
            return await original(message)

        inner.renew_lock = renew_lock  # type: ignore[method-assign]
        return inner


async def test_renew_message_lock_renews_the_calling_tasks_own_message() -> None:
    broker = RecordingBroker(lock_duration=60)
    state: dict[str, Any] = {"expiries": {}}
    app = Boilermaker(state, broker)
    state["app"] = app

    async def slow(state: dict[str, Any], n: int) -> None:
        # Interleave with the other running tasks, so "the last message received"
        # would be the wrong one for most calls.
        for _ in range(3):
            await asyncio.sleep(0.01 * (n % 3))
            state["expiries"].setdefault(n, []).append(await state["app"].renew_message_lock())

    app.register_async(slow)
    published = [await app.apply_async(slow, n) for n in range(6)]
    await app.run_until_idle(timeout=10, concurrency=6)

    assert sorted(broker.renewed) == sorted(str(t.task_id) for t in published for _ in range(3))
    assert all(len(v) == 3 and v[0] > datetime.now(UTC) for v in state["expiries"].values())


async def test_renew_message_lock_outside_a_task_says_so() -> None:
    app = Boilermaker({}, InMemoryBroker())
    with pytest.raises(RuntimeError, match="inside a task"):
        await app.renew_message_lock()


def test_graph_generators_of_1x() -> None:
    graph, tasks = graph_with_results(
        {
            "fetch": TaskStatus.Failure,
            "process": TaskStatus.Pending,
            "save": TaskStatus.Pending,
            "cleanup": TaskStatus.Pending,
            "fallback": TaskStatus.Pending,
        }
    )
    assert list(graph.generate_ready_tasks()) == []
    assert [t.function_name for t in graph.generate_failure_ready_tasks()] == ["cleanup"]
    assert list(graph.generate_all_failed_callback_task()) == []  # cleanup has yet to run
    graph.results[tasks["cleanup"].task_id].status = TaskStatus.Success
    assert [t.function_name for t in graph.generate_all_failed_callback_task()] == ["fallback"]
    graph.results[tasks["fallback"].task_id].status = TaskStatus.Scheduled
    assert [t.function_name for t in graph.generate_scheduled_tasks()] == ["fallback"]
    fresh, _ = graph_with_results({})
    assert len(list(fresh.generate_pending_results())) == 5
    assert [t.function_name for t in fresh.generate_ready_tasks()] == ["fetch"]


async def test_members_1x_had_and_this_version_replaces_warn_and_name_the_new_way() -> None:
    app = Boilermaker({}, InMemoryBroker())

    async def f(state: Any) -> None:
        return None

    app.register_async(f)
    with pytest.warns(DeprecationWarning, match="app.registry"):
        assert app.function_registry == {"f": f}
    with pytest.warns(DeprecationWarning, match="app.tracing.enabled"):
        assert app.otel_enabled is False
    with pytest.warns(DeprecationWarning, match="renew_message_lock"):
        assert Task.si("f").msg is None
    with (
        pytest.warns(DeprecationWarning, match="app.run"),
        pytest.raises(BoilermakerAppException, match="worker"),
    ):
        await app.message_handler(object(), object())
    with pytest.warns(DeprecationWarning, match="app.stop"):
        await app.signal_handler()

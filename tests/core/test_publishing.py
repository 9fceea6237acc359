"""Publishing tasks, batches and graphs onto the in-memory broker."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from boilermaker import Boilermaker, publishing
from boilermaker.broker import CALL_OVERHEAD as MESSAGE_OVERHEAD
from boilermaker.broker import (
    BrokerAuthenticationError,
    BrokerError,
)
from boilermaker.envelope import decode_task
from boilermaker.exceptions import (
    ArgumentNotSerializable,
    BoilermakerAppException,
    MessageTooLarge,
    PublishError,
    ResultsStoreRequired,
)
from boilermaker.memory import InMemoryBroker, InMemoryResultsStore
from boilermaker.retries import RetryPolicy
from boilermaker.task import Task, TaskGraphBuilder, TaskStatus
from tests.core.flaky_broker import FlakyBroker


async def process_data(state: Any, data_id: str, priority: str = "normal") -> None:
    return None


async def cleanup(state: Any) -> None:
    return None


@pytest.fixture
def broker() -> InMemoryBroker:
    return InMemoryBroker()


@pytest.fixture
def app(broker: InMemoryBroker) -> Boilermaker:
    app = Boilermaker({}, broker)
    app.register_many_async([process_data, cleanup])
    return app


@pytest.fixture(autouse=True)
def no_publish_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(publishing, "PUBLISH_BACKOFF", (0.0,))


async def peek_all(broker: InMemoryBroker) -> list[Any]:
    async with broker.receiver() as receiver:
        return await receiver.peek(1000)


# -- single tasks ---------------------------------------------------------------------------


async def test_apply_async_publishes_one_message(app: Boilermaker, broker: InMemoryBroker) -> None:
    task = await app.apply_async(process_data, "data_456", priority="high")
    (message,) = await peek_all(broker)
    assert message.message_id == task.task_id
    assert task.sequence_number == message.sequence_number
    assert isinstance(task.sequence_number, int)
    assert message.content_type == "application/json"
    assert message.application_properties["boilermaker_function"] == "process_data"
    assert message.application_properties["boilermaker_task_id"] == task.task_id
    sent = decode_task(message.body)
    assert sent == task
    assert (sent.args, sent.kwargs) == (["data_456"], {"priority": "high"})
    assert broker.send_calls == 1
    assert broker.counts().scheduled == 0


async def test_apply_async_by_name_and_with_a_policy(
    app: Boilermaker, broker: InMemoryBroker
) -> None:
    task = await app.apply_async("process_data", "x", policy=RetryPolicy.no_retry())
    (message,) = await peek_all(broker)
    assert decode_task(message.body).policy == RetryPolicy.no_retry()
    assert task.function_name == "process_data"


async def test_delay_schedules_the_message(app: Boilermaker, broker: InMemoryBroker) -> None:
    before = datetime.now(UTC)
    task = await app.apply_async(process_data, "later", delay=30)
    assert broker.counts().scheduled == 1
    assert broker.counts().active == 0
    (scheduled,) = broker.scheduled_messages()
    assert scheduled.message_id == task.task_id
    assert task.sequence_number == scheduled.sequence_number
    assert scheduled.scheduled_enqueue_time is not None
    due = scheduled.scheduled_enqueue_time - before
    assert timedelta(seconds=29) < due < timedelta(seconds=32)


async def test_publish_task_sets_sequence_number_and_unique_message_id(
    app: Boilermaker, broker: InMemoryBroker
) -> None:
    first = app.create_task(process_data, "a")
    second = app.create_task(process_data, "b")
    assert first.sequence_number is None
    assert await app.publish_task(first) is first
    await app.publish_task(second, unique_msg_id=f"{second.task_id}:2")
    assert first.sequence_number is not None
    assert second.sequence_number is not None
    assert second.sequence_number > first.sequence_number
    messages = await peek_all(broker)
    assert [m.message_id for m in messages] == [first.task_id, f"{second.task_id}:2"]


async def test_publish_task_carries_its_chain(app: Boilermaker, broker: InMemoryBroker) -> None:
    head = app.chain(
        app.create_task(process_data, "1"),
        app.create_task(process_data, "2"),
        on_failure=app.create_task(cleanup),
    )
    await app.publish_task(head)
    (message,) = await peek_all(broker)
    sent = decode_task(message.body)
    assert sent.on_success is not None
    assert sent.on_success.args == ["2"]
    assert sent.on_failure is not None
    assert sent.on_failure.function_name == "cleanup"


@pytest.mark.parametrize("delay", [-1, -0.001])
async def test_negative_delay_is_refused(
    app: Boilermaker, broker: InMemoryBroker, delay: float
) -> None:
    with pytest.raises(BoilermakerAppException, match="delay must be a number of seconds from 0"):
        await app.apply_async(process_data, "x", delay=delay)
    with pytest.raises(BoilermakerAppException, match="delay must be a number of seconds from 0"):
        await app.publish_many([app.create_task(process_data, "x")], delay=delay)
    assert broker.send_calls == 0


async def test_publish_attempts_must_be_positive(app: Boilermaker, broker: InMemoryBroker) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        await app.apply_async(process_data, "x", publish_attempts=0)
    assert broker.send_calls == 0


async def test_without_a_broker_publishing_is_an_error() -> None:
    app = Boilermaker({})
    app.register_async(process_data)
    with pytest.raises(BoilermakerAppException, match="no broker"):
        await app.apply_async(process_data, "x")


async def test_an_oversize_task_is_refused_with_size_and_limit() -> None:
    broker = InMemoryBroker(max_message_size=4096)
    app = Boilermaker({}, broker)
    app.register_async(process_data)
    with pytest.raises(MessageTooLarge) as info:
        await app.apply_async(process_data, "x" * 5000)
    error = info.value
    assert error.limit == 4096
    assert error.size > 5000 + MESSAGE_OVERHEAD
    assert f"is {error.size} bytes" in str(error)
    assert "maximum message size of 4096 bytes" in str(error)
    assert "process_data" in str(error)
    assert broker.send_calls == 0
    assert broker.counts().active == 0


async def test_the_default_limit_is_256_kb(app: Boilermaker, broker: InMemoryBroker) -> None:
    await app.apply_async(process_data, "x" * (200 * 1024))
    with pytest.raises(MessageTooLarge, match="262144 bytes"):
        await app.apply_async(process_data, "x" * (256 * 1024))
    assert broker.counts().active == 1


# -- batches --------------------------------------------------------------------------------


async def test_publish_many_uses_as_few_sends_as_the_size_limit_allows() -> None:
    limit = 4096
    flaky = FlakyBroker(InMemoryBroker(max_message_size=limit))
    app = Boilermaker({}, flaky)
    app.register_async(process_data)
    tasks = [app.create_task(process_data, f"item-{i:04d}") for i in range(40)]

    published = await app.publish_many(tasks)

    assert published == tasks
    budget = limit - MESSAGE_OVERHEAD
    sizes = [sum(m.size for m in call) for call in flaky.calls]
    assert all(size <= budget for size in sizes)
    # No two neighbouring calls could have been one: packing is as tight as the limit allows.
    for call, following in zip(flaky.calls, flaky.calls[1:], strict=False):
        assert sum(m.size for m in call) + following[0].size > budget
    each = flaky.calls[0][0].size
    assert len(flaky.calls) == math.ceil(len(tasks) / (budget // each))
    assert 1 < len(flaky.calls) < len(tasks)
    assert flaky.inner.send_calls == len(flaky.calls)
    # Order, message ids and sequence numbers are kept.
    sent = [m.message_id for call in flaky.calls for m in call]
    assert sent == [t.task_id for t in tasks]
    numbers = [t.sequence_number for t in tasks]
    assert all(isinstance(n, int) for n in numbers)
    assert numbers == sorted(numbers)  # type: ignore[type-var]


async def test_publish_many_in_one_send_when_it_fits(
    app: Boilermaker, broker: InMemoryBroker
) -> None:
    tasks = [app.create_task(process_data, str(i)) for i in range(100)]
    await app.publish_many(tasks, delay=5)
    assert broker.send_calls == 1
    assert broker.counts().scheduled == 100
    assert await app.publish_many([]) == []
    assert broker.send_calls == 1


async def test_apply_many_accepts_args_kwargs_and_pairs(
    app: Boilermaker, broker: InMemoryBroker
) -> None:
    tasks = await app.apply_many(
        process_data,
        [("a",), ["b", "high"], {"data_id": "c"}, (("d",), {"priority": "low"}), "data_5"],
    )
    assert [(t.args, t.kwargs) for t in tasks] == [
        (["a"], {}),
        (["b", "high"], {}),
        ([], {"data_id": "c"}),
        (["d"], {"priority": "low"}),
        (["data_5"], {}),  # a bare string is one argument, not a sequence of characters
    ]
    assert broker.send_calls == 1
    messages = await peek_all(broker)
    assert [m.message_id for m in messages] == [t.task_id for t in tasks]


async def test_apply_many_checks_every_call_before_sending(
    app: Boilermaker, broker: InMemoryBroker
) -> None:
    with pytest.raises(ArgumentNotSerializable, match=r"args\[0\]"):
        await app.apply_many(process_data, [("ok",), ({"bad": {1, 2}},)])
    with pytest.raises(TypeError, match="cannot be called"):
        await app.apply_many(process_data, [("ok",), ("a", "b", "c")])
    assert broker.send_calls == 0


async def test_a_batch_with_one_oversize_task_sends_nothing() -> None:
    broker = InMemoryBroker(max_message_size=4096)
    app = Boilermaker({}, broker)
    app.register_async(process_data)
    with pytest.raises(MessageTooLarge):
        await app.apply_many(process_data, [("small",), ("x" * 5000,), ("small",)])
    assert broker.send_calls == 0


# -- publish attempts -----------------------------------------------------------------------


async def test_transient_broker_errors_are_retried_up_to_publish_attempts() -> None:
    flaky = FlakyBroker(InMemoryBroker(), [BrokerError("busy"), BrokerError("busy")])
    app = Boilermaker({}, flaky)
    app.register_async(process_data)
    task = await app.apply_async(process_data, "x", publish_attempts=3)
    assert len(flaky.calls) == 3
    assert task.sequence_number is not None
    assert flaky.inner.counts().active == 1


async def test_transient_errors_past_the_attempts_raise_publish_error() -> None:
    flaky = FlakyBroker(InMemoryBroker(), [BrokerError("busy")] * 3)
    app = Boilermaker({}, flaky)
    app.register_async(process_data)
    with pytest.raises(PublishError, match="after 2 attempt") as info:
        await app.apply_async(process_data, "x", publish_attempts=2)
    assert isinstance(info.value.__cause__, BrokerError)
    assert len(flaky.calls) == 2
    assert flaky.inner.counts().active == 0


async def test_a_single_attempt_is_the_default() -> None:
    flaky = FlakyBroker(InMemoryBroker(), [BrokerError("busy")])
    app = Boilermaker({}, flaky)
    app.register_async(process_data)
    with pytest.raises(PublishError):
        await app.apply_async(process_data, "x")
    assert len(flaky.calls) == 1


async def test_permanent_broker_errors_are_not_retried() -> None:
    flaky = FlakyBroker(InMemoryBroker(), [BrokerAuthenticationError("denied")])
    app = Boilermaker({}, flaky)
    app.register_async(process_data)
    with pytest.raises(PublishError, match="denied"):
        await app.apply_async(process_data, "x", publish_attempts=5)
    assert len(flaky.calls) == 1


async def test_other_errors_are_not_retried_or_wrapped() -> None:
    flaky = FlakyBroker(InMemoryBroker(), [RuntimeError("bug in adapter")])
    app = Boilermaker({}, flaky)
    app.register_async(process_data)
    with pytest.raises(RuntimeError, match="bug in adapter"):
        await app.apply_async(process_data, "x", publish_attempts=5)
    assert len(flaky.calls) == 1


# -- graphs ---------------------------------------------------------------------------------


def two_root_graph(app: Boilermaker) -> tuple[Any, list[Task]]:
    a = app.create_task(process_data, "a")
    b = app.create_task(process_data, "b")
    join = app.create_task(process_data, "join")
    handler = app.create_task(cleanup)
    graph = TaskGraphBuilder().parallel(a, b).then(join).on_failure(a.task_id, handler).build()
    return graph, [a, b]


async def test_publish_graph_needs_a_results_store(app: Boilermaker) -> None:
    graph, _ = two_root_graph(app)
    with pytest.raises(ResultsStoreRequired, match="results_storage"):
        await app.publish_graph(graph)
    assert isinstance(ResultsStoreRequired("x"), BoilermakerAppException)


async def test_publish_graph_takes_only_graphs(broker: InMemoryBroker) -> None:
    app = Boilermaker({}, broker, results_storage=InMemoryResultsStore())
    with pytest.raises(BoilermakerAppException, match="takes a TaskGraph"):
        await app.publish_graph(Task.si("f"))  # type: ignore[arg-type]


async def test_publish_graph_publishes_only_the_roots(broker: InMemoryBroker) -> None:
    store = InMemoryResultsStore()
    app = Boilermaker({}, broker, results_storage=store)
    app.register_many_async([process_data, cleanup])
    graph, roots = two_root_graph(app)
    assert await app.publish_graph(graph) is graph
    messages = await peek_all(broker)
    assert sorted(m.message_id for m in messages) == sorted(r.task_id for r in roots)
    for message in messages:
        assert decode_task(message.body).graph_id == graph.graph_id
        assert message.application_properties["boilermaker_graph_id"] == graph.graph_id
    progress = await app.graph_progress(graph.graph_id)
    assert progress is not None
    for root in roots:
        assert progress.statuses[root.task_id] is TaskStatus.Scheduled
    others = set(graph.tasks) - {r.task_id for r in roots}
    assert {progress.statuses[t] for t in others} == {TaskStatus.Pending}


async def test_failed_root_publish_raises_and_a_second_call_finishes_once() -> None:
    flaky = FlakyBroker(InMemoryBroker(), [BrokerError("namespace busy")])
    store = InMemoryResultsStore()
    app = Boilermaker({}, flaky, results_storage=store)
    app.register_many_async([process_data, cleanup])
    graph, roots = two_root_graph(app)

    with pytest.raises(PublishError, match="namespace busy"):
        await app.publish_graph(graph)
    assert flaky.inner.counts().active == 0

    await app.publish_graph(graph)
    await app.publish_graph(graph)  # a third call has nothing left to do

    messages = await peek_all(flaky.inner)
    assert sorted(m.message_id for m in messages) == sorted(r.task_id for r in roots)
    assert flaky.inner.sent_count == len(roots)
    progress = await app.graph_progress(graph.graph_id)
    assert progress is not None
    assert {progress.statuses[r.task_id] for r in roots} == {TaskStatus.Scheduled}


async def test_republishing_a_graph_id_with_other_tasks_is_refused(
    broker: InMemoryBroker,
) -> None:
    app = Boilermaker({}, broker, results_storage=InMemoryResultsStore())
    app.register_many_async([process_data, cleanup])
    graph, _ = two_root_graph(app)
    await app.publish_graph(graph)
    other = TaskGraphBuilder(graph_id=graph.graph_id).add(app.create_task(cleanup)).build()
    with pytest.raises(ValueError, match="already published with different tasks"):
        await app.publish_graph(other)
    assert broker.sent_count == 2


async def test_partly_failed_root_publish_is_not_duplicated_by_the_second_call() -> None:
    inner = InMemoryBroker(max_message_size=2048)
    flaky = FlakyBroker(inner)
    flaky.fail_on_call[2] = BrokerError("connection reset")
    app = Boilermaker({}, flaky, results_storage=InMemoryResultsStore())
    app.register_async(process_data)
    roots = [app.create_task(process_data, f"root-{i}") for i in range(4)]
    graph = TaskGraphBuilder().parallel(roots).build()

    with pytest.raises(PublishError):
        await app.publish_graph(graph)
    assert 0 < inner.sent_count < len(roots)  # the first batch went out

    await app.publish_graph(graph)
    messages = await peek_all(inner)
    assert sorted(m.message_id for m in messages) == sorted(r.task_id for r in roots)


async def test_close_closes_broker_and_store(broker: InMemoryBroker) -> None:
    closed: list[str] = []

    class Store(InMemoryResultsStore):
        async def close(self) -> None:
            closed.append("store")

    app = Boilermaker({}, broker, results_storage=Store())
    await app.close()
    assert broker.closed
    assert closed == ["store"]


def test_published_task_bodies_are_compact_json(app: Boilermaker) -> None:
    task = app.create_task(process_data, "x")
    body = app.publisher.to_message(publishing.Publication(task)).body
    assert b": " not in body
    assert json.loads(body)["task_id"] == task.task_id


async def test_with_tracing_a_batch_with_one_oversize_task_sends_nothing() -> None:
    broker = InMemoryBroker(max_message_size=4096)
    app = Boilermaker({}, broker, enable_opentelemetry=True)
    app.register_async(process_data)
    with pytest.raises(MessageTooLarge):
        await app.apply_many(process_data, [("small",), ("x" * 5000,), ("small",)])
    assert broker.send_calls == 0
    tasks = await app.apply_many(process_data, [("a",), ("b",)])
    assert [t.sequence_number for t in tasks] == [1, 2]
    assert [m.message_id for m in await peek_all(broker)] == [t.task_id for t in tasks]

"""Users' middleware, time limits, and a worker built from its parts without an app."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from boilermaker import Boilermaker, RetryPolicy
from boilermaker.broker import PropertyValue
from boilermaker.memory import InMemoryBroker, InMemoryResultsStore
from boilermaker.publishing import Publication
from boilermaker.registry import Registry
from boilermaker.task import Task, TaskStatus
from boilermaker.worker import (
    FOLLOW_UP_FAILED,
    PROCESSING_ERROR,
    Action,
    Kind,
    MessageContext,
    Middleware,
    Outcome,
    Worker,
)


class CountAndTag(Middleware):
    """Counts runs per function and tags every published message with a tenant."""

    def __init__(self) -> None:
        self.started: Counter[str] = Counter()
        self.settled: list[tuple[str, Action]] = []
        self.events: list[str] = []

    async def on_worker_start(self, worker: Worker) -> None:
        self.events.append("start")

    async def on_worker_stop(self, worker: Worker) -> None:
        self.events.append("stop")

    async def before_task(self, ctx: MessageContext) -> Outcome | None:
        assert ctx.task is not None
        self.started[ctx.task.function_name] += 1
        ctx.notes["count-and-tag"] = ctx.message.application_properties.get("tenant")
        return None

    async def after_settle(self, ctx: MessageContext) -> None:
        assert ctx.task is not None
        assert ctx.verdict is not None
        self.settled.append((ctx.notes.get("count-and-tag"), ctx.verdict.action))

    def before_publish(self, task: Task, properties: dict[str, PropertyValue]) -> None:
        properties["tenant"] = "acme"


class ReportExceptions(Middleware):
    """What an error tracker would do: capture each exception with its task."""

    def __init__(self) -> None:
        self.reported: list[tuple[str, str, int]] = []
        self.dead_letters: list[str | None] = []

    async def after_task(self, ctx: MessageContext, outcome: Outcome) -> Outcome | None:
        if outcome.error is not None:
            assert ctx.task is not None
            self.reported.append(
                (ctx.task.function_name, repr(outcome.error), ctx.task.attempts.attempts)
            )
        return None

    async def on_dead_letter(self, ctx: MessageContext) -> None:
        assert ctx.verdict is not None
        self.dead_letters.append(ctx.verdict.reason)


async def ok(state: dict[str, Any], n: int) -> int:
    state["ok"] = state.get("ok", 0) + 1
    return n


async def broken(state: dict[str, Any]) -> None:
    raise LookupError("no such customer")


async def test_user_middleware_counts_tags_and_reports() -> None:
    counter, reporter = CountAndTag(), ReportExceptions()
    broker = InMemoryBroker()
    app = Boilermaker({}, broker, middleware=[counter])
    app.add_middleware(reporter)
    app.register_async(ok)
    app.register_async(broken, policy=RetryPolicy.no_retry())
    for n in range(3):
        await app.apply_async(ok, n)
    await app.apply_async(broken)
    await app.run_until_idle(timeout=10)

    assert counter.started == Counter(ok=3, broken=1)
    # Published with the tag, read back by the middleware from the received message.
    assert sorted(counter.settled, key=str) == sorted(
        [("acme", Action.COMPLETE)] * 3 + [("acme", Action.DEAD_LETTER)], key=str
    )
    assert counter.events == ["start", "stop"]
    assert reporter.reported == [("broken", "LookupError('no such customer')", 1)]
    assert reporter.dead_letters == ["TaskFailed"]


async def test_before_task_may_refuse_to_run_a_task() -> None:
    class OnlyEven(Middleware):
        async def before_task(self, ctx: MessageContext) -> Outcome | None:
            assert ctx.task is not None
            if ctx.task.args[0] % 2:
                return Outcome(Kind.DUPLICATE, description="odd numbers are not run")
            return None

    state: dict[str, Any] = {}
    app = Boilermaker(state, InMemoryBroker(), middleware=[OnlyEven()])
    app.register_async(ok)
    for n in range(4):
        await app.apply_async(ok, n)
    worker = await app.run_until_idle(timeout=10)
    assert state["ok"] == 2
    assert worker.stats.duplicates_skipped == 2


async def test_a_middleware_bug_dead_letters_with_its_hook_named() -> None:
    class Broken(Middleware):
        async def on_success(self, ctx: MessageContext) -> None:
            raise KeyError("tenant")

    broker = InMemoryBroker()
    app = Boilermaker({}, broker, middleware=[Broken()])
    app.register_async(ok)
    await app.apply_async(ok, 1)
    worker = await app.run_until_idle(timeout=10)
    (letter,) = broker.dead_letters()
    assert letter.dead_letter_reason == FOLLOW_UP_FAILED
    assert letter.dead_letter_description == "on_success: KeyError: 'tenant'"
    assert worker.stats.by_reason == {FOLLOW_UP_FAILED: 1}


def test_middleware_must_be_middleware() -> None:
    with pytest.raises(TypeError, match="Middleware"):
        Boilermaker({}, InMemoryBroker(), middleware=[object()])  # type: ignore[list-item]


# -- time limits --------------------------------------------------------------------------


async def test_a_slow_task_is_cancelled_retried_then_dead_lettered() -> None:
    state: dict[str, Any] = {"runs": 0, "cancelled": 0}
    broker = InMemoryBroker()
    app = Boilermaker(state, broker)

    async def slow(state: dict[str, Any]) -> None:
        state["runs"] += 1
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            state["cancelled"] += 1
            raise

    app.register_async(slow, policy=RetryPolicy(max_tries=2, delay=0), timeout=0.2)
    await app.apply_async(slow)
    worker = await app.run_until_idle(timeout=10)

    assert state == {"runs": 2, "cancelled": 2}
    assert worker.stats.retried == 1
    (letter,) = broker.dead_letters()
    assert letter.dead_letter_reason == PROCESSING_ERROR
    assert letter.dead_letter_description == (
        "retries exhausted after 2 attempt(s): TimeLimitExceeded: the task ran past its "
        "time limit of 0.2s"
    )


async def test_the_default_time_limit_comes_from_the_settings() -> None:
    state: dict[str, Any] = {"runs": 0}
    broker = InMemoryBroker()
    app = Boilermaker(state, broker)

    async def slow(state: dict[str, Any]) -> None:
        state["runs"] += 1
        await asyncio.sleep(30)

    app.register_async(slow, policy=RetryPolicy.no_retry())
    await app.apply_async(slow)
    await app.run_until_idle(timeout=10, task_timeout=0.1)
    (letter,) = broker.dead_letters()
    assert "time limit of 0.1s" in (letter.dead_letter_description or "")


async def test_a_task_raising_timeout_error_itself_is_an_ordinary_failure() -> None:
    broker = InMemoryBroker()
    app = Boilermaker({}, broker)

    async def gives_up(state: Any) -> None:
        raise TimeoutError("upstream did not answer")

    app.register_async(gives_up, policy=RetryPolicy.no_retry(), timeout=5)
    await app.apply_async(gives_up)
    await app.run_until_idle(timeout=10)
    (letter,) = broker.dead_letters()
    assert letter.dead_letter_reason == "TaskFailed"
    assert letter.dead_letter_description == "TimeoutError: upstream did not answer"


@pytest.mark.parametrize("bad", [0, -1, "5", True])
def test_timeouts_are_positive_numbers(bad: Any) -> None:
    app = Boilermaker({}, InMemoryBroker())
    with pytest.raises(ValueError, match="timeout"):
        app.register_async(ok, timeout=bad)


async def test_lock_renewal_lasts_as_long_as_the_time_limit() -> None:
    # A 1 s task with a 2 s limit under 0.3 s locks and a 0.5 s renewal limit:
    # the lock is renewed past max_lock_renewal, up to the task's own limit.
    state: dict[str, Any] = {"runs": 0}
    broker = InMemoryBroker(lock_duration=0.3)
    app = Boilermaker(state, broker)

    async def steady(state: dict[str, Any]) -> None:
        state["runs"] += 1
        await asyncio.sleep(1.0)

    app.register_async(steady, timeout=2)
    await app.apply_async(steady)
    worker = await app.run_until_idle(timeout=10, max_lock_renewal=0.5)
    assert state["runs"] == 1
    assert worker.stats.succeeded == 1
    assert worker.stats.locks_lost == 0
    assert worker.stats.lock_renewals >= 2


# -- a worker without an app --------------------------------------------------------------


async def test_a_worker_built_from_its_parts() -> None:
    broker, store = InMemoryBroker(), InMemoryResultsStore()
    registry = Registry()
    registry.register(ok)
    counter = CountAndTag()
    worker = Worker(
        broker,
        registry,
        state={},
        results_store=store,
        middleware=[counter],
    )
    # Publishing needs no app either: the worker's publisher is on the same broker.
    task = Task.si(ok, 41)
    await worker.publisher.publish([Publication(task)])
    await worker.run_until_idle(timeout=10)

    assert worker.stats.succeeded == 1
    assert counter.started == Counter(ok=1)
    record = await store.load_task_result(task.task_id)
    assert record is not None
    assert record.status is TaskStatus.Success
    assert record.result == 41


def test_a_worker_refuses_a_publisher_on_another_broker() -> None:
    from boilermaker.publishing import Publisher
    from boilermaker.tracing import Tracing

    elsewhere = Publisher(InMemoryBroker(), Tracing(False))
    with pytest.raises(ValueError, match="another broker"):
        Worker(InMemoryBroker(), Registry(), publisher=elsewhere)


async def test_a_graph_task_on_a_worker_without_a_store_is_refused_at_once() -> None:
    from boilermaker.task import TaskGraphBuilder

    store = InMemoryResultsStore()
    broker = InMemoryBroker()
    publishing = Boilermaker({}, broker, results_storage=store)
    publishing.register_async(ok)
    graph = TaskGraphBuilder().add(publishing.create_task(ok, 1)).build()
    await publishing.publish_graph(graph)

    storeless = Boilermaker({}, broker)
    storeless.register_async(ok)
    await storeless.run_until_idle(timeout=10)
    (letter,) = broker.dead_letters()
    assert letter.dead_letter_reason == "ExpectationFailed"
    assert "no results store" in (letter.dead_letter_description or "")
    assert letter.delivery_count <= 1


async def test_only_middleware_that_override_a_hook_are_called_for_it() -> None:
    from boilermaker.worker.middleware import MiddlewareStack

    calls: list[str] = []

    class OnSuccess(Middleware):
        async def on_success(self, ctx: MessageContext) -> None:
            calls.append("class")

    class Quiet(Middleware):
        pass

    async def on_success(ctx: MessageContext) -> None:
        calls.append("instance")

    patched = Quiet()
    patched.on_success = on_success  # type: ignore[method-assign]
    first, quiet = OnSuccess(), Quiet()
    stack = MiddlewareStack([first, quiet, patched])

    assert stack.with_hook("on_success") == [first, patched]
    assert stack.with_hook("after_settle") == []
    broker = InMemoryBroker()
    app = Boilermaker({}, broker)

    @app.task()
    async def noop(state: Any) -> None:
        return None

    await app.apply_async(noop)
    (message,) = await broker.receiver().receive(1, 1)
    await stack.run("on_success", MessageContext(message, state={}))
    assert calls == ["class", "instance"]

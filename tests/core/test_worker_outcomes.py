"""How the worker settles each outcome: dead-letter taxonomy, retries, callbacks, acks, results."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import pytest

from boilermaker import Boilermaker, RetryException, RetryPolicy, Task, TaskFailureResult
from boilermaker.broker import MessageLockLost, OutgoingMessage, ReceivedMessage
from boilermaker.envelope import decode_task
from boilermaker.exceptions import ResultNotReady
from boilermaker.memory import InMemoryBroker, InMemoryReceiver, InMemoryResultsStore, QueueCounts
from boilermaker.task import TaskStatus
from boilermaker.worker import (
    EXPECTATION_FAILED,
    INVALID_TASK_FORMAT,
    PROCESSING_ERROR,
    TASK_FAILED,
    Worker,
)

EMPTY = QueueCounts(active=0, scheduled=0, locked=0, dead_lettered=0)
FAST = RetryPolicy(max_tries=2, delay=0)


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)


async def run_until(
    app: Boilermaker, predicate: Callable[[Worker], bool], **settings: Any
) -> Worker:
    """Run a worker until ``predicate(worker)`` holds, then stop it gracefully."""
    worker = app.worker(install_signal_handlers=False, receive_wait=0.05, **settings)
    runner = asyncio.create_task(worker.run())
    try:
        await wait_until(lambda: predicate(worker) or runner.done())
    finally:
        worker.stop()
        await runner
    return worker


class RecordingReceiver:
    """Delegates to an in-memory receiver, logging every settlement."""

    def __init__(
        self, log: list[tuple[str, str]], inner: InMemoryReceiver, broker: RecordingBroker
    ) -> None:
        self.log = log
        self.inner = inner
        self.broker = broker

    async def receive(self, max_messages: int, max_wait: float) -> list[ReceivedMessage]:
        return await self.inner.receive(max_messages, max_wait)

    async def complete(self, message: ReceivedMessage) -> None:
        self.log.append(("complete", message.message_id))
        await self.inner.complete(message)

    async def abandon(self, message: ReceivedMessage) -> None:
        self.log.append(("abandon", message.message_id))
        await self.inner.abandon(message)

    async def dead_letter(self, message: ReceivedMessage, reason: str, description: str) -> None:
        self.log.append(("dead_letter", message.message_id))
        await self.inner.dead_letter(message, reason, description)

    async def renew_lock(self, message: ReceivedMessage) -> datetime:
        if self.broker.refuse_renewals:
            raise MessageLockLost(f"lock of {message.message_id} was taken over")
        return await self.inner.renew_lock(message)

    async def peek(
        self, max_messages: int, from_sequence_number: int | None = None
    ) -> list[ReceivedMessage]:
        return await self.inner.peek(max_messages, from_sequence_number)

    async def close(self) -> None:
        await self.inner.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class RecordingBroker(InMemoryBroker):
    """An in-memory broker that logs sends and settlements in order."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.log: list[tuple[str, str]] = []
        #: Make every lock renewal fail (the broker took the lock back).
        self.refuse_renewals = False

    async def send(self, messages: Sequence[OutgoingMessage]) -> list[int | None]:
        self.log.extend(("send", m.message_id) for m in messages)
        return await super().send(messages)

    def receiver(self, **options: Any) -> RecordingReceiver:  # type: ignore[override]
        return RecordingReceiver(self.log, super().receiver(**options), self)


def new_app(
    state: Any = None, store: InMemoryResultsStore | None = None, **broker_options: Any
) -> tuple[Boilermaker, RecordingBroker]:
    broker = RecordingBroker(**broker_options)
    app = Boilermaker(state if state is not None else {}, broker, results_storage=store)
    return app, broker


def only_dead_letter(broker: InMemoryBroker) -> ReceivedMessage:
    (message,) = broker.dead_letters()
    return message


# -- dead-letter taxonomy -------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"this is not json", id="not-json"),
        pytest.param(b"\xff\xfe\x00", id="not-utf8"),
        pytest.param(b'{"hello": "world"}', id="json-not-envelope"),
        pytest.param(b"[1, 2, 3]", id="json-array"),
        pytest.param(b'{"boilermaker": "9.0", "task": {"function_name": "x"}}', id="unknown-major"),
        pytest.param(b'{"boilermaker": "2.0", "task": {"payload": 3}}', id="invalid-task"),
    ],
)
async def test_poison_body_is_dead_lettered_as_invalid_task_format(body: bytes) -> None:
    app, broker = new_app()
    await broker.send([OutgoingMessage(body=body, message_id="poison")])
    worker = await app.run_until_idle(timeout=5)

    message = only_dead_letter(broker)
    assert message.dead_letter_reason == INVALID_TASK_FORMAT
    assert message.dead_letter_description
    assert message.delivery_count == 0, "a poison message must not be retried"
    assert worker.stats.by_reason == {INVALID_TASK_FORMAT: 1}
    assert broker.counts() == QueueCounts(active=0, scheduled=0, locked=0, dead_lettered=1)


async def test_poison_message_does_not_stop_the_worker() -> None:
    state = {"runs": 0}
    app, broker = new_app(state)

    @app.task()
    async def fine(state: dict[str, int]) -> None:
        state["runs"] += 1

    await broker.send([OutgoingMessage(body=b"garbage", message_id="poison")])
    await app.apply_async(fine)
    await app.run_until_idle(timeout=5)
    assert state["runs"] == 1
    assert broker.counts().dead_lettered == 1


async def test_unregistered_function_is_dead_lettered_as_expectation_failed() -> None:
    app, broker = new_app()

    @app.task()
    async def known(state: Any) -> None:
        return None

    await app.publish_task(Task.si("nobody_registered_this"))
    await app.run_until_idle(timeout=5)

    message = only_dead_letter(broker)
    assert message.dead_letter_reason == EXPECTATION_FAILED
    assert "nobody_registered_this" in (message.dead_letter_description or "")


async def test_exception_is_dead_lettered_as_task_failed_with_type_and_message() -> None:
    app, broker = new_app()

    @app.task(policy=RetryPolicy(max_tries=5, delay=0))
    async def explode(state: Any) -> None:
        raise ValueError("boom")

    task = await app.apply_async(explode)
    worker = await app.run_until_idle(timeout=5)

    message = only_dead_letter(broker)
    assert message.dead_letter_reason == TASK_FAILED
    assert message.dead_letter_description == "ValueError: boom"
    assert message.message_id == task.task_id
    # A plain exception is a failure, never a retry.
    assert worker.stats.received == 1
    assert worker.stats.retried == 0


async def test_task_failed_description_is_bounded() -> None:
    app, broker = new_app()

    @app.task()
    async def verbose(state: Any) -> None:
        raise RuntimeError("x" * 10_000)

    await app.apply_async(verbose)
    worker = await app.run_until_idle(timeout=5)

    description = only_dead_letter(broker).dead_letter_description or ""
    assert description.startswith("RuntimeError: xxx")
    assert len(description) <= worker.settings.description_limit < 10_000
    assert "truncated" in description


async def test_task_failure_result_counts_as_failure() -> None:
    state = {"handled": 0}
    app, broker = new_app(state)

    @app.task()
    async def soft_fail(state: dict[str, int]) -> TaskFailureResult:
        return TaskFailureResult("upstream said no")

    @app.task()
    async def handler(state: dict[str, int]) -> None:
        state["handled"] += 1

    task = app.create_task(soft_fail)
    task.on_failure = app.create_task(handler)
    await app.publish_task(task)
    worker = await app.run_until_idle(timeout=5)

    message = only_dead_letter(broker)
    assert message.dead_letter_reason == TASK_FAILED
    assert "upstream said no" in (message.dead_letter_description or "")
    assert worker.stats.succeeded == 1  # the handler
    assert worker.stats.failed == 1
    assert state["handled"] == 1


async def test_task_failure_result_class_counts_as_failure() -> None:
    app, broker = new_app()

    @app.task()
    async def soft_fail(state: Any) -> type[TaskFailureResult]:
        return TaskFailureResult

    await app.apply_async(soft_fail)
    await app.run_until_idle(timeout=5)
    assert only_dead_letter(broker).dead_letter_reason == TASK_FAILED


@pytest.mark.parametrize("exhaust", [False, True], ids=["failure", "exhaustion"])
async def test_should_dead_letter_false_completes_instead(exhaust: bool) -> None:
    app, broker = new_app()

    @app.task(should_dead_letter=False, policy=FAST)
    async def fails(state: Any) -> None:
        if exhaust:
            raise RetryException("again")
        raise ValueError("nope")

    await app.apply_async(fails)
    worker = await app.run_until_idle(timeout=5)

    assert broker.counts() == EMPTY
    assert worker.stats.dead_lettered == 0
    assert worker.stats.failed == 1
    assert broker.log[-1][0] == "complete"


# -- retries ---------------------------------------------------------------------------


async def test_retry_exception_schedules_a_new_message_and_completes_the_original() -> None:
    app, broker = new_app()

    @app.task(policy=RetryPolicy(max_tries=3, delay=30))
    async def later(state: Any) -> None:
        raise RetryException("come back later")

    task = await app.apply_async(later)
    before = datetime.now(UTC)
    await run_until(app, lambda w: w.stats.retried == 1)

    (retry,) = broker.scheduled_messages()
    assert retry.message_id == f"{task.task_id}:1"
    assert retry.scheduled_enqueue_time is not None
    delay = (retry.scheduled_enqueue_time - before).total_seconds()
    assert 29 <= delay <= 31, f"scheduled {delay}s ahead, policy says 30s"
    # The retry carries the attempt count so far; the original is gone.
    retried = decode_task(retry.body)
    assert retried.task_id == task.task_id
    assert retried.attempts.attempts == 1
    assert broker.log == [
        ("send", task.task_id),
        ("send", f"{task.task_id}:1"),
        ("complete", task.task_id),
    ]
    assert broker.counts() == QueueCounts(active=0, scheduled=1, locked=0, dead_lettered=0)


async def test_retries_exhausted_is_decided_at_failure_time() -> None:
    state = {"runs": 0}
    app, broker = new_app(state)

    @app.task(policy=RetryPolicy(max_tries=2, delay=0))
    async def always_retry(state: dict[str, int]) -> None:
        state["runs"] += 1
        raise RetryException("still broken")

    task = await app.apply_async(always_retry)
    worker = await app.run_until_idle(timeout=5)

    assert state["runs"] == 2
    assert worker.stats.received == 2, "an extra delivery was needed to notice exhaustion"
    message = only_dead_letter(broker)
    assert message.dead_letter_reason == PROCESSING_ERROR
    assert message.message_id == f"{task.task_id}:1"
    assert broker.counts() == QueueCounts(active=0, scheduled=0, locked=0, dead_lettered=1)


async def test_retry_exception_policy_replaces_the_tasks_policy() -> None:
    state = {"runs": 0}
    app, broker = new_app(state)

    @app.task(policy=RetryPolicy(max_tries=10, delay=0))
    async def rate_limited(state: dict[str, int]) -> None:
        state["runs"] += 1
        raise RetryException("slow down", policy=RetryPolicy(max_tries=3, delay=0))

    await app.apply_async(rate_limited)
    await app.run_until_idle(timeout=5)

    assert state["runs"] == 3
    message = only_dead_letter(broker)
    assert message.dead_letter_reason == PROCESSING_ERROR
    assert decode_task(message.body).policy == RetryPolicy(max_tries=3, delay=0)


async def test_retry_then_success_completes_everything() -> None:
    state = {"runs": 0}
    app, broker = new_app(state)

    @app.task(policy=RetryPolicy(max_tries=5, delay=0))
    async def second_time_lucky(state: dict[str, int]) -> str:
        state["runs"] += 1
        if state["runs"] == 1:
            raise RetryException("once more")
        return "ok"

    await app.apply_async(second_time_lucky)
    worker = await app.run_until_idle(timeout=5)
    assert state["runs"] == 2
    assert worker.stats.succeeded == 1
    assert broker.counts() == EMPTY


# -- callbacks and acknowledgement ---------------------------------------------------------


@pytest.mark.parametrize("exhaust", [False, True], ids=["failure", "exhaustion"])
async def test_on_failure_runs_on_failure_and_on_exhaustion(exhaust: bool) -> None:
    state = {"runs": 0, "handled": []}
    app, broker = new_app(state)

    @app.task(policy=RetryPolicy(max_tries=3, delay=0))
    async def fragile(state: dict[str, Any]) -> None:
        state["runs"] += 1
        if exhaust:
            raise RetryException("again")
        raise KeyError("missing")

    @app.task()
    async def cleanup(state: dict[str, Any], why: str) -> None:
        state["handled"].append(why)

    task = app.create_task(fragile)
    task.on_failure = app.create_task(cleanup, "fragile")
    await app.publish_task(task)
    await app.run_until_idle(timeout=5)

    assert state["runs"] == (3 if exhaust else 1)
    assert state["handled"] == ["fragile"], "on_failure must run exactly once"
    reason = PROCESSING_ERROR if exhaust else TASK_FAILED
    assert only_dead_letter(broker).dead_letter_reason == reason


async def test_on_success_runs_after_success_and_is_published_before_settling() -> None:
    state: dict[str, list[str]] = {"order": []}
    app, broker = new_app(state)

    @app.task()
    async def first(state: dict[str, list[str]]) -> None:
        state["order"].append("first")

    @app.task()
    async def second(state: dict[str, list[str]]) -> None:
        state["order"].append("second")

    head = app.create_task(first)
    tail = app.create_task(second)
    head >> tail
    await app.publish_task(head)
    await app.run_until_idle(timeout=5)

    assert state["order"] == ["first", "second"]
    assert broker.log == [
        ("send", head.task_id),
        ("send", tail.task_id),
        ("complete", head.task_id),
        ("complete", tail.task_id),
    ]


async def test_on_success_does_not_run_when_the_task_fails() -> None:
    state: dict[str, list[str]] = {"order": []}
    app, broker = new_app(state)

    @app.task()
    async def first(state: dict[str, list[str]]) -> None:
        raise ValueError("no")

    @app.task()
    async def second(state: dict[str, list[str]]) -> None:
        state["order"].append("second")

    await app.publish_task(app.chain(app.create_task(first), app.create_task(second)))
    await app.run_until_idle(timeout=5)
    assert state["order"] == []
    assert broker.counts().dead_lettered == 1


async def test_acks_early_completes_before_running() -> None:
    app, broker = new_app()
    seen: list[list[tuple[str, str]]] = []

    @app.task(acks_late=False)
    async def early(state: Any) -> None:
        seen.append(list(broker.log))

    task = await app.apply_async(early)
    await app.run_until_idle(timeout=5)
    assert seen == [[("send", task.task_id), ("complete", task.task_id)]]
    assert broker.counts() == EMPTY


async def test_acks_early_failure_is_neither_dead_lettered_nor_redelivered() -> None:
    state = {"runs": 0}
    app, broker = new_app(state)

    @app.task(acks_late=False)
    async def early_fail(state: dict[str, int]) -> None:
        state["runs"] += 1
        raise ValueError("lost for good")

    await app.apply_async(early_fail)
    worker = await app.run_until_idle(timeout=5)
    assert state["runs"] == 1
    assert worker.stats.received == 1
    assert broker.counts() == EMPTY
    assert [op for op, _ in broker.log] == ["send", "complete"]


# -- locks -------------------------------------------------------------------------------


async def test_lost_lock_is_logged_with_the_task_id_and_the_worker_keeps_going(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="boilermaker.app")
    state: dict[str, Any] = {"runs": 0, "after": 0}
    app, broker = new_app(state, lock_duration=0.3)
    broker.refuse_renewals = True

    @app.task()
    async def long_first_time(state: dict[str, Any]) -> None:
        state["runs"] += 1
        if state["runs"] == 1:
            await asyncio.sleep(1.0)

    @app.task()
    async def afterwards(state: dict[str, Any]) -> None:
        state["after"] += 1

    task = await app.apply_async(long_first_time)
    worker = app.worker(install_signal_handlers=False, receive_wait=0.05, concurrency=4)
    runner = asyncio.create_task(worker.run())
    try:
        await wait_until(lambda: worker.stats.locks_lost >= 1)
        await app.apply_async(afterwards)
        await wait_until(lambda: state["after"] == 1 and state["runs"] == 2)
    finally:
        worker.stop()
        await runner

    # The lock lapsed, so the message came back and ran again.
    assert state["runs"] == 2
    lost = [r.getMessage() for r in caplog.records if "ost the lock" in r.getMessage()]
    assert lost
    assert all(task.task_id in m for m in lost)


async def test_a_task_outliving_lock_renewal_is_cancelled_before_its_lock_lapses(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="boilermaker.app")
    state: dict[str, Any] = {"runs": 0, "running": 0, "most": 0}
    app, broker = new_app(state, lock_duration=0.3)

    @app.task(policy=RetryPolicy(max_tries=2, delay=0))
    async def long_first_time(state: dict[str, Any]) -> None:
        state["runs"] += 1
        state["running"] += 1
        state["most"] = max(state["most"], state["running"])
        try:
            if state["runs"] == 1:
                await asyncio.sleep(2.0)
        finally:
            state["running"] -= 1

    task = await app.apply_async(long_first_time)
    worker = await run_until(
        app, lambda w: w.stats.succeeded == 1, max_lock_renewal=0.5, concurrency=4
    )

    assert state["runs"] == 2
    assert state["most"] == 1, "the message ran twice at once"
    assert worker.stats.locks_lost == 0
    assert worker.stats.retried == 1
    cancelled = [r.getMessage() for r in caplog.records if "was cancelled" in r.getMessage()]
    assert len(cancelled) == 1
    assert task.task_id in cancelled[0]
    assert "lock renewal limit of 0.5s" in cancelled[0]
    assert ("send", f"{task.task_id}:1") in broker.log


async def test_warning_is_logged_when_a_task_nears_max_lock_renewal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="boilermaker.app")
    state = {"runs": 0}
    app, broker = new_app(state, lock_duration=0.4)

    @app.task()
    async def nearly_too_long(state: dict[str, int]) -> None:
        state["runs"] += 1
        await asyncio.sleep(0.95)

    task = await app.apply_async(nearly_too_long)
    worker = await app.run_until_idle(timeout=10, max_lock_renewal=1.0)

    nearing = [r for r in caplog.records if "nearing the lock renewal limit" in r.getMessage()]
    assert len(nearing) == 1
    assert nearing[0].levelno == logging.WARNING
    assert task.task_id in nearing[0].getMessage()
    assert state["runs"] == 1
    assert worker.stats.locks_lost == 0
    assert broker.counts() == EMPTY


# -- results -----------------------------------------------------------------------------


async def test_get_result_returns_a_standalone_tasks_value() -> None:
    store = InMemoryResultsStore()
    app, _broker = new_app(store=store)

    @app.task()
    async def add(state: Any, a: int, b: int) -> dict[str, int]:
        await asyncio.sleep(0.1)
        return {"sum": a + b}

    task = await app.apply_async(add, 2, 3)
    with pytest.raises(ResultNotReady):
        await app.get_result(task, timeout=0)
    _worker, result = await asyncio.gather(
        app.run_until_idle(timeout=5), app.get_result(task, timeout=5)
    )
    assert result.status is TaskStatus.Success
    assert result.result == {"sum": 5}
    assert result.task_id == task.task_id
    assert (await app.get_result(str(task.task_id))).result == {"sum": 5}


async def test_non_json_result_fails_the_task_with_a_clear_error() -> None:
    state = {"runs": 0}
    store = InMemoryResultsStore()
    app, broker = new_app(state, store=store)

    @app.task()
    async def returns_object(state: dict[str, int]) -> object:
        state["runs"] += 1
        return object()

    task = await app.apply_async(returns_object)
    await app.run_until_idle(timeout=5)

    assert state["runs"] == 1, "the task was redelivered"
    message = only_dead_letter(broker)
    assert message.dead_letter_reason == TASK_FAILED
    assert "not JSON-serializable" in (message.dead_letter_description or "")
    result = await app.get_result(task)
    assert result.status is TaskStatus.Failure
    assert result.errors
    assert "not JSON-serializable" in result.errors[0]


async def test_acks_early_task_longer_than_the_lock_reports_no_lost_lock(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="boilermaker.app")
    state = {"runs": 0}
    app, broker = new_app(state, lock_duration=0.3)

    @app.task(acks_late=False)
    async def early_and_slow(state: dict[str, int]) -> None:
        state["runs"] += 1
        await asyncio.sleep(0.8)

    await app.apply_async(early_and_slow)
    worker = await app.run_until_idle(timeout=5)
    assert state["runs"] == 1
    assert worker.stats.locks_lost == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert broker.counts() == EMPTY


class SlowStore(InMemoryResultsStore):
    """Takes 0-20 ms per write, like a network service (seeded)."""

    def __init__(self) -> None:
        super().__init__()
        self.random = random.Random(3)

    async def write(self, name: str, data: bytes, **options: Any) -> str:  # type: ignore[override]
        await asyncio.sleep(self.random.random() * 0.02)
        return await super().write(name, data, **options)


async def test_stored_result_of_a_retried_task_is_its_final_outcome() -> None:
    # A zero-delay retry may run and finish before the first attempt's
    # bookkeeping is written; the final result must not be overwritten.
    state: dict[str, int] = {}
    app, _broker = new_app(state, store=SlowStore())

    @app.task(policy=RetryPolicy(max_tries=3, delay=0))
    async def once_more(state: dict[str, int], i: int) -> int:
        state[str(i)] = state.get(str(i), 0) + 1
        if state[str(i)] == 1:
            raise RetryException("again")
        return i

    tasks = await app.apply_many(once_more, [(i,) for i in range(20)])
    await app.run_until_idle(timeout=10, concurrency=64)
    assert set(state.values()) == {2}
    for task in tasks:
        result = await app.get_result(task, timeout=0)
        assert result.status is TaskStatus.Success
        assert result.result == int(task.args[0])

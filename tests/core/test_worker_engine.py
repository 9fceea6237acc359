"""The worker loop on the in-memory broker: concurrency, lock renewal, shutdown, draining."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from typing import Any

import pytest

from boilermaker import Boilermaker, RetryException, RetryPolicy
from boilermaker.memory import InMemoryBroker, QueueCounts
from boilermaker.worker import Worker

EMPTY = QueueCounts(active=0, scheduled=0, locked=0, dead_lettered=0)


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``predicate`` until true; fail the test if it never is."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)


def new_app(state: Any, **broker_options: Any) -> tuple[Boilermaker, InMemoryBroker]:
    broker = InMemoryBroker(**broker_options)
    return Boilermaker(state, broker), broker


async def test_task_longer_than_lock_duration_completes_once_without_redelivery() -> None:
    state = {"runs": 0}
    app, broker = new_app(state, lock_duration=0.5)

    async def slow(state: dict[str, int]) -> None:
        state["runs"] += 1
        await asyncio.sleep(2)

    app.register_async(slow)
    await app.apply_async(slow)
    worker = await app.run_until_idle(timeout=15)

    assert state["runs"] == 1
    assert worker.stats.received == 1, "the message was redelivered"
    assert worker.stats.succeeded == 1
    assert worker.stats.locks_lost == 0
    # 2 s of work under a 0.5 s lock renewed at half-life: several renewals.
    assert worker.stats.lock_renewals >= 3
    assert broker.counts() == EMPTY


async def test_hundred_tasks_at_concurrency_ten_run_at_most_ten_at_once_and_reach_ten() -> None:
    state = {"running": 0, "peak": 0, "done": 0}
    app, broker = new_app(state)

    async def work(state: dict[str, int], i: int) -> int:
        state["running"] += 1
        state["peak"] = max(state["peak"], state["running"])
        await asyncio.sleep(0.02)
        state["running"] -= 1
        state["done"] += 1
        return i

    app.register_async(work)
    await app.apply_many(work, [(i,) for i in range(100)])
    worker = await app.run_until_idle(timeout=30, concurrency=10)

    assert state["done"] == 100
    assert state["peak"] == 10
    assert worker.stats.max_in_flight == 10
    assert broker.counts() == EMPTY


async def test_loop_never_blocks_on_one_slow_task() -> None:
    fast_done = asyncio.Event()
    state: dict[str, Any] = {"fast": 0, "slow_saw_fast_finish": False}
    app, broker = new_app(state)

    async def slow(state: dict[str, Any]) -> None:
        # Finishes only once every fast task is done; if the loop waited on this
        # task, the fast ones would never run and this would time out.
        await asyncio.wait_for(fast_done.wait(), 10)
        state["slow_saw_fast_finish"] = True

    async def fast(state: dict[str, Any]) -> None:
        state["fast"] += 1
        if state["fast"] == 30:
            fast_done.set()

    app.register_many_async([slow, fast])
    await app.apply_async(slow)
    await app.apply_many(fast, [() for _ in range(30)])
    worker = await app.run_until_idle(timeout=15, concurrency=4)

    assert state["slow_saw_fast_finish"] is True
    assert state["fast"] == 30
    assert worker.stats.failed == 0
    assert broker.counts() == EMPTY


def _sleepers(app: Boilermaker, state: dict[str, Any], seconds: float) -> Any:
    async def sleeper(state: dict[str, Any], i: int) -> None:
        state["started"].add(i)
        await asyncio.sleep(seconds)
        state["finished"].append(i)

    app.register_async(sleeper)
    return sleeper


async def _rerun_and_check_none_lost(app: Boilermaker, broker: InMemoryBroker, n: int) -> None:
    state = app.state
    await app.run_until_idle(timeout=20, concurrency=n)
    assert set(state["finished"]) == set(range(n)), "a task never ran to completion"
    assert broker.counts() == EMPTY


async def test_stop_with_no_grace_abandons_in_flight_messages_and_none_are_lost() -> None:
    state: dict[str, Any] = {"started": set(), "finished": []}
    app, broker = new_app(state, lock_duration=30)
    sleeper = _sleepers(app, state, 0.5)
    await app.apply_many(sleeper, [(i,) for i in range(10)])

    worker = app.worker(concurrency=5, shutdown_grace=0, install_signal_handlers=False)
    runner = asyncio.create_task(worker.run())
    await wait_until(lambda: len(state["started"]) == 5)
    worker.stop()
    await runner

    assert state["finished"] == []
    assert worker.stats.abandoned == 5
    # Abandoned messages are available again at once (the lock is 30 s).
    assert broker.counts() == QueueCounts(active=10, scheduled=0, locked=0, dead_lettered=0)
    await _rerun_and_check_none_lost(app, broker, 10)


async def test_cancelling_the_run_task_abandons_in_flight_messages_at_once() -> None:
    state: dict[str, Any] = {"started": set(), "finished": []}
    app, broker = new_app(state, lock_duration=30)
    sleeper = _sleepers(app, state, 1)
    await app.apply_many(sleeper, [(i,) for i in range(8)])

    # A long grace period: cancellation must not wait for it.
    worker = app.worker(concurrency=4, shutdown_grace=60, install_signal_handlers=False)
    runner = asyncio.create_task(worker.run())
    await wait_until(lambda: len(state["started"]) == 4)
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner

    assert state["finished"] == [], "cancelled tasks kept running to completion"
    assert worker.in_flight == 0
    assert broker.counts() == QueueCounts(active=8, scheduled=0, locked=0, dead_lettered=0)
    await _rerun_and_check_none_lost(app, broker, 8)


async def test_cancelled_worker_leaves_no_receive_behind() -> None:
    app, broker = new_app({}, lock_duration=30)

    @app.task()
    async def noop(state: Any) -> None:
        return None

    worker = app.worker(receive_wait=5, install_signal_handlers=False)
    runner = asyncio.create_task(worker.run())
    await asyncio.sleep(0.1)  # the worker now waits in receive
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    await app.apply_async(noop)
    await asyncio.sleep(0.05)
    # Nobody is running, so nobody may hold the new message's lock.
    assert broker.counts() == QueueCounts(active=1, scheduled=0, locked=0, dead_lettered=0)


async def test_grace_period_lets_short_tasks_finish() -> None:
    state: dict[str, Any] = {"started": set(), "finished": []}
    app, broker = new_app(state, lock_duration=30)
    sleeper = _sleepers(app, state, 0.3)
    await app.apply_many(sleeper, [(i,) for i in range(8)])

    worker = app.worker(concurrency=4, shutdown_grace=10, install_signal_handlers=False)
    runner = asyncio.create_task(worker.run())
    await wait_until(lambda: len(state["started"]) == 4)
    worker.stop()
    await runner

    assert sorted(state["finished"]) == sorted(state["started"])
    assert len(state["finished"]) == 4
    assert worker.stats.abandoned == 0
    # The four never received are still there; nothing is locked.
    assert broker.counts() == QueueCounts(active=4, scheduled=0, locked=0, dead_lettered=0)


def _handler_installed(sig: signal.Signals = signal.SIGTERM) -> bool:
    """Whether asyncio (not Python's default) handles ``sig`` right now."""
    return signal.getsignal(sig) not in (
        signal.SIG_DFL,
        signal.SIG_IGN,
        signal.default_int_handler,
        None,
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_stops_the_worker_gracefully(
    sig: signal.Signals, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="boilermaker.app")
    state: dict[str, Any] = {"started": set(), "finished": []}
    app, broker = new_app(state, lock_duration=30)
    sleeper = _sleepers(app, state, 0.3)
    await app.apply_many(sleeper, [(i,) for i in range(6)])

    runner = asyncio.create_task(
        app.run(concurrency=3, shutdown_grace=10, install_signal_handlers=True)
    )
    await wait_until(lambda: len(state["started"]) == 3)
    assert _handler_installed(sig), f"the worker did not install a {sig.name} handler"
    os.kill(os.getpid(), sig)
    await asyncio.wait_for(runner, 10)

    assert len(state["finished"]) == 3
    assert broker.counts() == QueueCounts(active=3, scheduled=0, locked=0, dead_lettered=0)
    assert any(f"Received {sig.name}" in r.getMessage() for r in caplog.records)
    assert not _handler_installed(sig), f"the {sig.name} handler was left installed"


async def test_second_sigterm_skips_the_grace_period(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="boilermaker.app")
    state: dict[str, Any] = {"started": set(), "finished": []}
    app, broker = new_app(state, lock_duration=30)
    sleeper = _sleepers(app, state, 30)
    await app.apply_many(sleeper, [(i,) for i in range(3)])

    runner = asyncio.create_task(
        app.run(concurrency=3, shutdown_grace=60, install_signal_handlers=True)
    )
    await wait_until(lambda: len(state["started"]) == 3)
    assert _handler_installed()
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.sleep(0.2)
    assert not runner.done(), "the first signal should wait for in-flight tasks"
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(runner, 10)

    assert state["finished"] == []
    assert broker.counts() == QueueCounts(active=3, scheduled=0, locked=0, dead_lettered=0)
    assert any("again" in r.getMessage() for r in caplog.records)


async def test_run_until_idle_drains_scheduled_retries() -> None:
    state = {"runs": 0}
    app, broker = new_app(state)

    @app.task(policy=RetryPolicy(max_tries=3, delay=1))
    async def flaky(state: dict[str, int]) -> str:
        state["runs"] += 1
        if state["runs"] < 3:
            raise RetryException("not yet")
        return "ok"

    await app.apply_async(flaky)
    worker = await app.run_until_idle(timeout=15)

    assert state["runs"] == 3
    assert worker.stats.retried == 2
    assert worker.stats.succeeded == 1
    assert broker.counts() == EMPTY


async def test_run_until_idle_times_out_when_the_queue_never_drains() -> None:
    app, broker = new_app({})

    @app.task(policy=RetryPolicy(max_tries=5, delay=60))
    async def later(state: Any) -> None:
        raise RetryException("wait a minute")

    await app.apply_async(later)
    with pytest.raises(TimeoutError):
        await app.run_until_idle(timeout=0.5)
    assert broker.counts().scheduled == 1


def test_worker_needs_a_broker() -> None:
    from boilermaker.exceptions import BoilermakerAppException

    with pytest.raises(BoilermakerAppException, match="needs a broker"):
        Boilermaker({}).worker()
    with pytest.raises(TypeError, match="needs a broker"):
        Worker(object(), Boilermaker({}).registry)  # type: ignore[arg-type]


async def test_worker_stops_on_a_permanent_receive_error() -> None:
    from boilermaker.broker import BrokerAuthenticationError

    class RevokedBroker(InMemoryBroker):
        def receiver(self, **kwargs):  # type: ignore[no-untyped-def]
            inner = super().receiver(**kwargs)

            async def refuse(max_messages: int, max_wait: float) -> list:  # type: ignore[type-arg]
                raise BrokerAuthenticationError("credentials revoked")

            inner.receive = refuse  # type: ignore[method-assign]
            return inner

    app = Boilermaker({}, RevokedBroker())
    worker = app.worker(install_signal_handlers=False)
    with pytest.raises(BrokerAuthenticationError, match="revoked"):
        await asyncio.wait_for(worker.run(), timeout=5)


async def test_a_message_whose_lock_lapsed_in_the_buffer_is_skipped_not_run_twice(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A prefetched message can sit in the client's buffer past its lock while
    # every slot is busy; the broker redelivers it meanwhile. Only one copy may run.
    from boilermaker.memory import InMemoryReceiver

    state = {"runs": 0}
    app, broker = new_app(state, lock_duration=0.3)

    @app.task()
    async def once(state: dict[str, int]) -> None:
        state["runs"] += 1

    real_receive = InMemoryReceiver.receive
    held = {"done": False}

    async def buffered_too_long(self: InMemoryReceiver, max_messages: int, max_wait: float) -> Any:
        got = await real_receive(self, max_messages, max_wait)
        if got and not held["done"]:
            held["done"] = True
            await asyncio.sleep(0.6)  # the lock (0.3 s) lapses meanwhile
        return got

    monkeypatch.setattr(InMemoryReceiver, "receive", buffered_too_long)
    caplog.set_level(logging.WARNING, logger="boilermaker.app")
    await app.apply_async(once)
    worker = await app.run_until_idle(timeout=10)

    assert state["runs"] == 1
    assert worker.stats.received == 1, "the lapsed copy was handed to the task runner"
    assert worker.stats.locks_lost == 1
    assert worker.stats.succeeded == 1
    assert any("lock lapsed" in r.getMessage() for r in caplog.records)
    assert broker.counts() == EMPTY


async def test_the_next_task_starts_while_the_last_settlement_is_confirmed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A slot is handed back once only settling is left, so at concurrency 1 the
    # next function runs while the broker confirms the last complete; functions
    # still never overlap, and the worker waits for every settlement to finish.
    from boilermaker.memory import InMemoryReceiver

    state: dict[str, Any] = {"running": 0, "peak": 0, "order": []}
    app, broker = new_app(state)

    @app.task()
    async def step(state: dict[str, Any], n: int) -> None:
        state["running"] += 1
        state["peak"] = max(state["peak"], state["running"])
        state["order"].append(("ran", n))
        await asyncio.sleep(0.01)
        state["running"] -= 1

    real_complete = InMemoryReceiver.complete
    first_confirmed = asyncio.Event()

    async def slow_first_complete(self: InMemoryReceiver, message: Any) -> None:
        if not first_confirmed.is_set():
            # Held until the second task has run: without the early hand-back the
            # worker would wait here and never start it.
            await wait_until(lambda: ("ran", 1) in state["order"])
            await real_complete(self, message)
            state["order"].append(("confirmed", 0))
            first_confirmed.set()
            return
        await real_complete(self, message)

    monkeypatch.setattr(InMemoryReceiver, "complete", slow_first_complete)
    for n in range(3):
        await app.apply_async(step, n)
    worker = await app.run_until_idle(timeout=10, concurrency=1)

    assert state["order"][:3] == [("ran", 0), ("ran", 1), ("confirmed", 0)]
    assert state["peak"] == 1, "two functions ran at once at concurrency 1"
    assert worker.stats.succeeded == 3
    assert worker.stats.max_in_flight == 1
    assert broker.counts() == EMPTY


async def test_stopping_waits_for_a_settlement_still_being_confirmed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from boilermaker.memory import InMemoryReceiver

    app, broker = new_app({})
    settled = asyncio.Event()

    @app.task()
    async def quick(state: Any) -> None:
        return None

    real_complete = InMemoryReceiver.complete

    async def slow_complete(self: InMemoryReceiver, message: Any) -> None:
        await asyncio.sleep(0.3)
        await real_complete(self, message)
        settled.set()

    monkeypatch.setattr(InMemoryReceiver, "complete", slow_complete)
    await app.apply_async(quick)
    worker = app.worker(concurrency=1, install_signal_handlers=False)
    running = asyncio.create_task(worker.run())
    await wait_until(lambda: worker.stats.succeeded == 0 and worker.in_flight == 1)
    await asyncio.sleep(0.05)  # the task has run; its complete is pending
    worker.stop()
    await running

    assert settled.is_set(), "the worker stopped before the settlement was confirmed"
    assert worker.stats.succeeded == 1
    assert worker.stats.abandoned == 0
    assert broker.counts() == EMPTY


def buffering_receiver(monkeypatch: pytest.MonkeyPatch, takers: list[str]) -> None:
    """Make the in-memory receiver prefetch: a receive locks up to five messages, hands
    out one and buffers the rest for ``take_prefetched``, which records who took."""
    from boilermaker.memory import InMemoryReceiver

    real_receive = InMemoryReceiver.receive

    async def receive(self: Any, max_messages: int, max_wait: float) -> list[Any]:
        got = await real_receive(self, max(max_messages, 5), max_wait)
        self.buffered = [*getattr(self, "buffered", []), *got[1:]]
        return got[:1]

    def take_prefetched(self: Any, max_messages: int) -> list[Any]:
        buffered = getattr(self, "buffered", [])
        taken, self.buffered = buffered[:max_messages], buffered[max_messages:]
        if taken:
            task = asyncio.current_task()
            takers.append(task.get_coro().__qualname__ if task is not None else "?")  # type: ignore[union-attr]
        return taken

    monkeypatch.setattr(InMemoryReceiver, "receive", receive)
    monkeypatch.setattr(InMemoryReceiver, "take_prefetched", take_prefetched, raising=False)


async def test_a_freed_slot_takes_the_next_buffered_message_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The handling task that gives its slot back starts the next buffered message
    # itself: the receive loop is not woken for it.
    takers: list[str] = []
    buffering_receiver(monkeypatch, takers)
    state: dict[str, Any] = {"running": 0, "peak": 0, "ran": []}
    app, broker = new_app(state)

    @app.task()
    async def step(state: dict[str, Any], n: int) -> None:
        state["running"] += 1
        state["peak"] = max(state["peak"], state["running"])
        await asyncio.sleep(0.005)
        state["ran"].append(n)
        state["running"] -= 1

    for n in range(5):
        await app.apply_async(step, n)
    worker = await app.run_until_idle(timeout=10, concurrency=1)

    assert state["ran"] == [0, 1, 2, 3, 4]
    assert state["peak"] == 1
    assert takers == ["TaskRunner.handle"] * 4
    assert worker.stats.succeeded == 5
    assert broker.counts() == EMPTY


async def test_a_stopping_worker_takes_no_more_buffered_messages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    takers: list[str] = []
    buffering_receiver(monkeypatch, takers)
    app, broker = new_app({})
    ran: list[int] = []
    holder: dict[str, Worker] = {}

    @app.task()
    async def step(state: Any, n: int) -> None:
        ran.append(n)
        holder["worker"].stop()

    for n in range(3):
        await app.apply_async(step, n)
    worker = app.worker(concurrency=1, install_signal_handlers=False)
    holder["worker"] = worker
    await asyncio.wait_for(worker.run(), 10)

    assert ran == [0]
    assert takers == []
    assert worker.stats.succeeded == 1
    assert broker.counts().active + broker.counts().locked == 2  # back once their locks lapse

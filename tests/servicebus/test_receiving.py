"""Receiving through ``AzureServiceBus`` on the emulator: prefetch, concurrency, lock renewal."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import SecretStr

from boilermaker import Boilermaker
from boilermaker.broker import OutgoingMessage, ReceivedMessage
from boilermaker.config import Config
from boilermaker.emulator import QueueCounts, ServiceBusEmulator
from boilermaker.service_bus import AzureServiceBus, ServiceBusQueueReceiver
from boilermaker.service_bus import receiver as receiver_module
from tests.contracts.broker_contract import receive_n
from tests.servicebus.conftest import until


class RecordingBroker(AzureServiceBus):
    """``AzureServiceBus`` that keeps the receivers it hands out, to inspect them."""

    receivers: list[ServiceBusQueueReceiver]

    def receiver(self, **kwargs: Any) -> ServiceBusQueueReceiver:
        made = super().receiver(**kwargs)
        self.receivers = [*getattr(self, "receivers", []), made]
        return made


async def test_worker_prefetch_is_sized_from_its_concurrency(
    new_queue: Callable[..., str], servicebus_emulator: ServiceBusEmulator
) -> None:
    queue = new_queue()
    config = Config(
        service_bus_connection_string=SecretStr(servicebus_emulator.connection_string),
        service_bus_queue_name=queue,
        concurrency=3,
        shutdown_grace_seconds=0,
    )
    broker = RecordingBroker.from_config(config)
    assert isinstance(broker, RecordingBroker)
    release = asyncio.Event()
    started: list[int] = []

    async def hold(state: object, n: int) -> None:
        started.append(n)
        await release.wait()

    app = Boilermaker({}, service_bus_client=broker)
    app.register_async(hold)
    await app.apply_many(hold, [(i,) for i in range(30)])
    worker = app.worker(install_signal_handlers=False)
    assert worker.settings.concurrency == 3
    assert worker.settings.effective_prefetch == 6
    running = asyncio.create_task(worker.run())
    try:
        deadline = time.monotonic() + 10
        while len(started) < 3:
            assert time.monotonic() < deadline, "the worker did not start 3 tasks"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # let the link fill its prefetch buffer
        (receiver,) = broker.receivers
        assert receiver.prefetch == 6
        locked = servicebus_emulator.counts(queue).locked
        # Running tasks plus a bounded buffer (the SDK flows prefetch + 1 credits),
        # not the whole queue.
        assert 3 < locked <= 3 + 6 + 1, locked
        assert len(started) == 3
    finally:
        release.set()
        worker.stop()
        await running
        await broker.close()


async def test_fifty_concurrent_renewals_and_completes_on_one_receiver(
    new_queue: Callable[..., str],
    make_broker: Callable[..., AzureServiceBus],
    servicebus_emulator: ServiceBusEmulator,
) -> None:
    queue = new_queue(lock_duration=30)
    broker = make_broker(queue)
    await broker.send([OutgoingMessage(b"{}", f"m-{i}") for i in range(100)])
    async with broker.receiver(prefetch=20) as receiver:
        got = await receive_n(receiver, 100)
        assert len({m.message_id for m in got}) == 100
        first, second = got[:50], got[50:]
        before = {m.message_id: m.locked_until for m in first}
        await asyncio.sleep(0.3)  # so a renewed lock visibly ends later

        started = time.monotonic()
        renewed = await asyncio.gather(*(receiver.renew_lock(m) for m in first))
        for message, until in zip(first, renewed, strict=True):
            original = before[message.message_id]
            assert original is not None
            assert isinstance(until, datetime)
            assert until > original
            assert message.locked_until == until
        await asyncio.gather(*(receiver.complete(m) for m in first))

        # Renewals, completes and abandons all at once.
        ops: list[Awaitable[object]] = [receiver.renew_lock(m) for m in second[:25]]
        ops += [receiver.complete(m) for m in second[25:40]]
        ops += [receiver.abandon(m) for m in second[40:]]
        await asyncio.gather(*ops)
        await asyncio.gather(*(receiver.complete(m) for m in second[:25]))
        elapsed = time.monotonic() - started
        assert elapsed < 10, f"150 concurrent operations took {elapsed:.1f}s"

        again = await receive_n(receiver, 10)
        assert sorted(m.message_id for m in again) == sorted(m.message_id for m in second[40:])
        assert all(m.delivery_count == 1 for m in again)
        await asyncio.gather(*(receiver.complete(m) for m in again))
    assert servicebus_emulator.counts(queue) == QueueCounts(0, 0, 0, 0, 0)


async def test_a_task_longer_than_the_lock_runs_once(
    new_queue: Callable[..., str],
    make_broker: Callable[..., AzureServiceBus],
    servicebus_emulator: ServiceBusEmulator,
) -> None:
    lock = 0.8
    queue = new_queue(lock_duration=lock, max_delivery_count=5)
    broker = make_broker(queue)
    runs: Counter[int] = Counter()

    async def slow(state: object, n: int) -> None:
        runs[n] += 1
        await asyncio.sleep(lock * 3)

    app = Boilermaker({}, service_bus_client=broker)
    app.register_async(slow)
    await app.apply_many(slow, [(1,), (2,)])
    worker = await app.run_until_idle(timeout=20, concurrency=2)
    assert runs == {1: 1, 2: 1}
    assert worker.stats.succeeded == 2
    assert worker.stats.lock_renewals >= 4
    assert worker.stats.locks_lost == 0
    assert servicebus_emulator.counts(queue) == QueueCounts(0, 0, 0, 0, 0)


async def test_worker_completes_1x_readiness_messages_silently(
    new_queue: Callable[..., str],
    make_broker: Callable[..., AzureServiceBus],
    servicebus_emulator: ServiceBusEmulator,
) -> None:
    from azure.servicebus import ServiceBusMessage
    from azure.servicebus.aio import ServiceBusClient

    queue = new_queue()
    broker = make_broker(queue)
    ran: list[int] = []

    async def work(state: object, n: int) -> None:
        ran.append(n)

    app = Boilermaker({}, service_bus_client=broker)
    app.register_async(work)
    # What boilermaker 1.x's connection pool (aio-azure-clients-toolbox) left in the
    # queue: its readiness check schedules "Connection established" for now.
    async with (
        ServiceBusClient.from_connection_string(servicebus_emulator.connection_string) as client,
        client.get_queue_sender(queue) as sender,
    ):
        await sender.schedule_messages(
            ServiceBusMessage("Connection established"), datetime.now(UTC)
        )
        await sender.send_messages(ServiceBusMessage(b"Connection established"))
    await app.apply_async(work, 7)
    worker = await app.run_until_idle(timeout=15, concurrency=4)
    assert ran == [7]
    assert worker.stats.control_messages == 2
    assert worker.stats.succeeded == 1
    assert worker.stats.dead_lettered == 0
    assert worker.stats.failed == 0
    # Nothing left over, and nothing dead-lettered.
    assert servicebus_emulator.counts(queue) == QueueCounts(0, 0, 0, 0, 0)


def _ids(messages: list[ReceivedMessage]) -> list[str]:
    return [m.message_id for m in messages]


async def test_received_messages_carry_lock_and_enqueue_times(
    new_queue: Callable[..., str], make_broker: Callable[..., AzureServiceBus]
) -> None:
    queue = new_queue(lock_duration=20)
    broker = make_broker(queue)
    before = datetime.now(UTC)
    await broker.send([OutgoingMessage(b"{}", "timed")])
    async with broker.receiver() as receiver:
        (got,) = await receive_n(receiver, 1)
        assert _ids([got]) == ["timed"]
        assert got.enqueued_time is not None
        assert got.enqueued_time.tzinfo is not None
        assert abs((got.enqueued_time - before).total_seconds()) < 5
        assert got.locked_until is not None
        assert 10 < (got.locked_until - datetime.now(UTC)).total_seconds() <= 21
        assert got.sequence_number > 0
        await receiver.complete(got)


async def test_a_receiver_hands_out_what_arrives_between_receives_and_grants_credit_ahead(
    new_queue: Callable[..., str],
    make_broker: Callable[..., AzureServiceBus],
    servicebus_emulator: ServiceBusEmulator,
) -> None:
    # Prefetched messages that arrive between receive calls are handed out without
    # one. The SDK grants credit again only inside a receive that finds the buffer
    # empty; a worker's receiver grants it as soon as the buffer is taken, so its
    # tasks never wait on a receive while work is queued.
    queue = new_queue(lock_duration=30)
    broker = make_broker(queue)

    async def locked(count: int) -> None:
        await until(
            lambda: servicebus_emulator.counts(queue).locked >= count,
            10,
            f"the service to lock {count} messages",
        )

    await broker.send([OutgoingMessage(b"{}", "first")])
    async with broker.receiver(prefetch=4) as receiver:
        (first,) = await receive_n(receiver, 1)  # the link now has credit for 3 more
        assert receiver.counters.receives >= 1
        receives = receiver.counters.receives

        await broker.send([OutgoingMessage(b"{}", f"later-{i}") for i in range(3)])
        await locked(4)  # delivered onto the link; nobody is receiving
        await receiver.complete(first)  # reading its outcome reads the deliveries too
        later = receiver.take_prefetched(10)
        assert sorted(_ids(later)) == ["later-0", "later-1", "later-2"]
        assert all(m.delivery_count == 0 for m in later)
        assert servicebus_emulator.counts(queue) == QueueCounts(
            active=0, scheduled=0, locked=3, deferred=0, dead_lettered=0
        )

        # Credit for what was taken goes out without a receive call.
        await broker.send([OutgoingMessage(b"{}", f"more-{i}") for i in range(2)])
        await locked(5)  # only the credit granted for what was taken lets them come
        await receiver.complete(later[0])
        more: list[ReceivedMessage] = []
        for message in later[1:]:
            await receiver.complete(message)
            more += receiver.take_prefetched(10)
        assert sorted(_ids(more)) == ["more-0", "more-1"]
        assert receiver.counters.receives == receives, "a receive call was needed"
        for message in more:
            await receiver.complete(message)
    assert servicebus_emulator.counts(queue) == QueueCounts(
        active=0, scheduled=0, locked=0, deferred=0, dead_lettered=0
    )


async def test_a_settlement_queued_during_a_wait_for_messages_is_not_held_back_by_it(
    new_queue: Callable[..., str],
    make_broker: Callable[..., AzureServiceBus],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # On an empty queue the driver waits for messages in slices; with a slice as
    # long as the whole receive, a complete queued meanwhile would wait all of it.
    # It ends the wait instead, goes out, and the receive waits on.
    monkeypatch.setattr(receiver_module, "RECEIVE_SLICE", 60.0)
    queue = new_queue(lock_duration=30)
    broker = make_broker(queue)
    await broker.send([OutgoingMessage(b"{}", f"m{i}") for i in range(2)])
    async with broker.receiver(prefetch=4) as receiver:
        first, second = await receive_n(receiver, 2)
        waiting = asyncio.create_task(receiver.receive(1, 60))
        await asyncio.sleep(0.2)  # the driver is now waiting on the empty link
        assert not waiting.done()
        await asyncio.wait_for(receiver.complete(first), 10)
        assert not waiting.done()
        # A complete and a receive queued in one turn: the outcome is read before
        # the receive starts waiting, not after it.
        completing = asyncio.create_task(receiver.complete(second))
        waiting_again = asyncio.create_task(receiver.receive(1, 60))
        await asyncio.wait_for(completing, 10)
        assert not waiting_again.done()
        # A message that arrives ends the wait, as before.
        await broker.send([OutgoingMessage(b"{}", "late")])
        (late,) = await asyncio.wait_for(waiting_again, 10)
        assert late.message_id == "late"
        await receiver.complete(late)
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
    assert receiver.counters.settlements == 3

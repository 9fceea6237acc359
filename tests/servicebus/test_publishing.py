"""Publishing through ``AzureServiceBus`` on the emulator: what lands, how, and how it fails."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import pytest

from boilermaker import Boilermaker, MessageTooLarge, PublishError
from boilermaker.broker import (
    BrokerAuthenticationError,
    BrokerError,
    BrokerMessageSizeExceeded,
    OutgoingMessage,
)
from boilermaker.emulator import QueueCounts, QueueSettings, ServiceBusEmulator
from boilermaker.envelope import decode_task
from boilermaker.service_bus import AzureServiceBus, EntityNotFound
from boilermaker.servicebus_publisher import ServiceBusPublisher
from tests.servicebus.conftest import sdk_leaks_dead_sockets, transfers, wrong_key

PublishingBroker = AzureServiceBus | ServiceBusPublisher


async def noop(state: object, n: int = 0, blob: str = "") -> None:
    return None


def app_for(broker: PublishingBroker) -> Boilermaker:
    app = Boilermaker({}, service_bus_client=broker)
    app.register_async(noop)
    return app


async def test_publishing_leaves_no_readiness_message_in_the_queue(
    new_queue: Callable[..., str],
    make_broker: Callable[..., AzureServiceBus],
    servicebus_emulator: ServiceBusEmulator,
) -> None:
    queue = new_queue()
    broker = make_broker(queue)
    app = app_for(broker)
    published = [await app.apply_async(noop, i) for i in range(3)]
    published += await app.apply_many(noop, [(i,) for i in range(3, 10)])
    assert servicebus_emulator.counts(queue) == QueueCounts(10, 0, 0, 0, 0)
    async with broker.receiver() as receiver:
        peeked = await receiver.peek(50)
    assert len(peeked) == 10
    assert sorted(str(decode_task(m.body).task_id) for m in peeked) == sorted(
        str(t.task_id) for t in published
    )


async def test_immediate_publish_is_a_plain_send_and_a_delayed_one_is_scheduled(
    new_queue: Callable[..., str],
    make_broker: Callable[..., AzureServiceBus],
    servicebus_emulator: ServiceBusEmulator,
) -> None:
    queue = new_queue()
    broker = make_broker(queue)
    app = app_for(broker)
    now = await app.apply_async(noop, 1)
    assert now.sequence_number is None
    assert broker.sender.transfers == 1
    assert broker.sender.schedule_calls == 0
    assert servicebus_emulator.counts(queue) == QueueCounts(1, 0, 0, 0, 0)

    later = await app.apply_async(noop, 2, delay=60)
    assert isinstance(later.sequence_number, int)
    assert later.sequence_number > 0
    assert broker.sender.schedule_calls == 1
    assert broker.sender.transfers == 1
    assert servicebus_emulator.counts(queue) == QueueCounts(1, 1, 0, 0, 0)

    # Scheduled and cancellable by its sequence number, as Service Bus promises.
    await broker.cancel_scheduled([later.sequence_number])
    assert servicebus_emulator.counts(queue) == QueueCounts(1, 0, 0, 0, 0)


async def test_batch_publish_packs_many_tasks_into_few_transfers(
    new_queue: Callable[..., str],
    make_broker: Callable[..., AzureServiceBus],
    servicebus_emulator: ServiceBusEmulator,
) -> None:
    queue = new_queue()
    broker = make_broker(queue)
    app = app_for(broker)
    tasks = await app.apply_many(noop, [(i,) for i in range(300)])
    assert len(tasks) == 300
    assert 1 <= broker.sender.transfers <= 3
    assert broker.sender.schedule_calls == 0
    assert servicebus_emulator.counts(queue).active == 300


# The tests taking ``publishing_broker_class`` run on the worker transport and on
# core's light publisher: both must batch, fail and refuse alike.


async def test_batches_are_bounded_by_the_queues_own_size_limit(
    new_queue: Callable[..., str],
    make_broker: Callable[..., PublishingBroker],
    servicebus_emulator: ServiceBusEmulator,
    publishing_broker_class: type[PublishingBroker],
) -> None:
    # The broker is configured for 256 KB; the queue takes 64 KB per transfer.
    queue = new_queue(max_message_size=64 * 1024)
    broker = make_broker(queue, publishing_broker_class)
    app = app_for(broker)
    await app.apply_many(noop, [(i, "x" * 20_000) for i in range(8)])
    assert transfers(broker) >= 3
    assert servicebus_emulator.counts(queue).active == 8


async def test_wrong_key_fails_fast_and_is_not_retried(
    new_queue: Callable[..., str],
    servicebus_emulator: ServiceBusEmulator,
    caplog: pytest.LogCaptureFixture,
    publishing_broker_class: type[PublishingBroker],
) -> None:
    queue = new_queue()
    broker = publishing_broker_class.from_connection_string(
        wrong_key(servicebus_emulator.connection_string), queue
    )
    app = app_for(broker)
    started = time.monotonic()
    try:
        with (
            caplog.at_level(logging.WARNING, logger="boilermaker"),
            pytest.raises(PublishError, match=r"after 1 attempt\(s\)") as caught,
        ):
            await app.apply_async(noop, 1, publish_attempts=3)
    finally:
        await broker.close()
    elapsed = time.monotonic() - started
    assert elapsed < 5, f"a wrong key took {elapsed:.1f}s to report"
    cause = caught.value.__cause__
    assert isinstance(cause, BrokerAuthenticationError)
    assert cause.transient is False
    assert not [r for r in caplog.records if "Publish attempt" in r.getMessage()]
    assert servicebus_emulator.counts(queue).active == 0


async def test_oversize_task_is_refused_before_sending(
    new_queue: Callable[..., str],
    make_broker: Callable[..., PublishingBroker],
    servicebus_emulator: ServiceBusEmulator,
    publishing_broker_class: type[PublishingBroker],
) -> None:
    queue = new_queue()
    broker = make_broker(queue, publishing_broker_class)
    app = app_for(broker)
    with pytest.raises(MessageTooLarge) as caught:
        await app.apply_async(noop, 1, "x" * broker.max_message_size)
    assert caught.value.limit == broker.max_message_size
    assert "noop" in str(caught.value)
    assert transfers(broker) == 0
    assert servicebus_emulator.counts(queue).active == 0


async def test_a_message_the_queue_refuses_for_size_maps_to_broker_size_exceeded(
    new_queue: Callable[..., str],
    make_broker: Callable[..., PublishingBroker],
    servicebus_emulator: ServiceBusEmulator,
    publishing_broker_class: type[PublishingBroker],
) -> None:
    # Under the broker's configured 256 KB, over the queue's 64 KB.
    queue = new_queue(max_message_size=64 * 1024)
    broker = make_broker(queue, publishing_broker_class)
    app = app_for(broker)
    with pytest.raises(BrokerMessageSizeExceeded):
        await broker.send([OutgoingMessage(b"x" * 100_000, "too-big")])
    started = time.monotonic()
    with pytest.raises(PublishError) as caught:
        await app.apply_async(noop, 1, "x" * 100_000, publish_attempts=3)
    assert isinstance(caught.value.__cause__, BrokerMessageSizeExceeded)
    assert "after 1 attempt(s)" in str(caught.value)
    assert time.monotonic() - started < 2
    # The sender is still usable afterwards.
    await app.apply_async(noop, 2)
    assert servicebus_emulator.counts(queue).active == 1


@sdk_leaks_dead_sockets
async def test_transient_connection_failures_are_retried_per_publish_attempts(
    new_queue: Callable[..., str],
    make_broker: Callable[..., PublishingBroker],
    servicebus_emulator: ServiceBusEmulator,
    caplog: pytest.LogCaptureFixture,
    publishing_broker_class: type[PublishingBroker],
) -> None:
    queue = new_queue()

    # One attempt: the refused connection surfaces as a transient error.
    app = app_for(make_broker(queue, publishing_broker_class))
    servicebus_emulator.refuse_connections(0.5)
    with pytest.raises(PublishError, match=r"after 1 attempt\(s\)") as caught:
        await app.apply_async(noop, 1)
    assert isinstance(caught.value.__cause__, BrokerError)
    assert caught.value.__cause__.transient is True
    await asyncio.sleep(0.5)  # let the refusal window close

    # Several attempts with backoff ride out the same window; exactly one message lands.
    app = app_for(make_broker(queue, publishing_broker_class))
    servicebus_emulator.refuse_connections(1.0)
    with caplog.at_level(logging.WARNING, logger="boilermaker"):
        task = await app.apply_async(noop, 2, publish_attempts=5)
    retries = [r for r in caplog.records if "Publish attempt" in r.getMessage()]
    assert 1 <= len(retries) <= 4
    async with make_broker(queue).receiver() as receiver:
        peeked = await receiver.peek(10)
    assert [m.message_id for m in peeked] == [str(task.task_id)]


async def test_a_missing_queue_fails_at_once_and_is_not_retried(
    publishing_broker_class: type[PublishingBroker],
) -> None:
    # Azure never creates queues on first use; neither does this emulator.
    with ServiceBusEmulator(queues=[QueueSettings("present")], auto_create_queues=False) as strict:
        broker = publishing_broker_class.from_connection_string(strict.connection_string, "absent")
        app = app_for(broker)
        started = time.monotonic()
        try:
            with pytest.raises(PublishError, match=r"after 1 attempt\(s\)") as caught:
                await app.apply_async(noop, 1, publish_attempts=3)
        finally:
            await broker.close()
        assert isinstance(caught.value.__cause__, EntityNotFound)
        assert "absent" in str(caught.value)
        assert time.monotonic() - started < 5


async def test_closing_the_broker_fails_sends_in_flight_instead_of_leaving_them_waiting(
    new_queue: Callable[..., str],
    make_broker: Callable[..., AzureServiceBus],
    servicebus_emulator: ServiceBusEmulator,
) -> None:
    queue = new_queue()
    broker = make_broker(queue)
    await broker.send([OutgoingMessage(b"{}", "warm-up")])
    servicebus_emulator.delay_frames(1.0)  # a slow broker: the next send is on the wire
    try:
        sends = []
        for i in range(5):
            sends.append(asyncio.ensure_future(broker.send([OutgoingMessage(b"{}", f"m-{i}")])))
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        await broker.close()
        done, pending = await asyncio.wait(sends, timeout=5)
    finally:
        servicebus_emulator.delay_frames(0)
    assert not pending, f"{len(pending)} send(s) left waiting after close()"
    for send in done:
        assert isinstance(send.exception(), BrokerError)


@sdk_leaks_dead_sockets
async def test_one_publish_after_another_goes_straight_onto_the_kept_link_and_survives_a_drop(
    new_queue: Callable[..., str],
    make_broker: Callable[..., AzureServiceBus],
    servicebus_emulator: ServiceBusEmulator,
) -> None:
    # After the first publish the driver keeps its connection; sequential callers
    # then send on it themselves. A connection cut under them is replaced, and
    # each task still lands once, under its own id.
    queue = new_queue()
    broker = make_broker(queue)
    app = app_for(broker)
    try:
        published = [await app.apply_async(noop, i, publish_attempts=3) for i in range(20)]
        assert broker.sender.direct_sends >= 15
        assert servicebus_emulator.drop_connections() >= 1
        published += [await app.apply_async(noop, i, publish_attempts=3) for i in range(20, 40)]
        # Concurrent callers meanwhile queue behind whoever holds the link.
        published += await asyncio.gather(*(app.apply_async(noop, i) for i in range(40, 60)))
        assert servicebus_emulator.counts(queue) == QueueCounts(60, 0, 0, 0, 0)
        async with broker.receiver() as receiver:
            peeked = await receiver.peek(100)
    finally:
        await broker.close()
    assert sorted(m.message_id for m in peeked) == sorted(str(t.task_id) for t in published)
    assert sorted(decode_task(m.body).args[0] for m in peeked) == list(range(60))

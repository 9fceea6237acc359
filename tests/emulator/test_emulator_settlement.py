"""Contract: peek-lock settlement, locks, delivery counts and the dead-letter sub-queue."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from azure.servicebus import ServiceBusMessage, ServiceBusReceiveMode, ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient
from azure.servicebus.exceptions import MessageLockLostError, MessageNotFoundError

from boilermaker.emulator import QueueCounts, ServiceBusEmulator


async def _send(client: ServiceBusClient, queue: str, *bodies: str) -> None:
    async with client.get_queue_sender(queue) as sender:
        await sender.send_messages([ServiceBusMessage(body) for body in bodies])


async def test_abandon_redelivers_with_higher_delivery_count(
    client: ServiceBusClient, servicebus_queue: str, servicebus_emulator: ServiceBusEmulator
) -> None:
    await _send(client, servicebus_queue, "retry me")
    async with client.get_queue_receiver(servicebus_queue) as receiver:
        counts = []
        for _ in range(3):
            [message] = await receiver.receive_messages(max_message_count=1, max_wait_time=5)
            counts.append(message.delivery_count)
            await receiver.abandon_message(message)
        [message] = await receiver.receive_messages(max_message_count=1, max_wait_time=5)
        assert message.delivery_count == 3
        await receiver.complete_message(message)
    assert counts == [0, 1, 2]
    assert servicebus_emulator.counts(servicebus_queue) == QueueCounts(0, 0, 0, 0, 0)


async def test_dead_letter_keeps_reason_and_description(
    client: ServiceBusClient, servicebus_queue: str, servicebus_emulator: ServiceBusEmulator
) -> None:
    await _send(client, servicebus_queue, "poison")
    async with client.get_queue_receiver(servicebus_queue) as receiver:
        [message] = await receiver.receive_messages(max_message_count=1, max_wait_time=5)
        await receiver.dead_letter_message(
            message, reason="BadInput", error_description="field 'x' missing"
        )
    assert servicebus_emulator.counts(servicebus_queue) == QueueCounts(0, 0, 0, 0, 1)
    async with client.get_queue_receiver(
        servicebus_queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER
    ) as dlq:
        [dead] = await dlq.receive_messages(max_message_count=1, max_wait_time=5)
        assert str(dead) == "poison"
        assert dead.dead_letter_reason == "BadInput"
        assert dead.dead_letter_error_description == "field 'x' missing"
        assert dead.dead_letter_source == servicebus_queue
        assert dead.sequence_number == message.sequence_number
        await dlq.complete_message(dead)
    assert servicebus_emulator.counts(servicebus_queue) == QueueCounts(0, 0, 0, 0, 0)


async def test_max_delivery_count_moves_message_to_dead_letter_queue(
    client: ServiceBusClient,
    new_queue: Callable[..., str],
    servicebus_emulator: ServiceBusEmulator,
) -> None:
    queue = new_queue(max_delivery_count=3)
    await _send(client, queue, "always fails")
    async with client.get_queue_receiver(queue) as receiver:
        for attempt in range(3):
            [message] = await receiver.receive_messages(max_message_count=1, max_wait_time=5)
            assert message.delivery_count == attempt
            await receiver.abandon_message(message)
        assert servicebus_emulator.counts(queue) == QueueCounts(0, 0, 0, 0, 1)
    async with client.get_queue_receiver(queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq:
        [dead] = await dlq.receive_messages(max_message_count=1, max_wait_time=5)
        assert dead.dead_letter_reason == "MaxDeliveryCountExceeded"
        assert dead.dead_letter_error_description
        assert dead.delivery_count == 3
        # Abandoning in the dead-letter queue never moves a message further.
        await dlq.abandon_message(dead)
        [again] = await dlq.receive_messages(max_message_count=1, max_wait_time=5)
        assert again.delivery_count == 4
        await dlq.complete_message(again)
    assert servicebus_emulator.counts(queue).dead_lettered == 0


async def test_lock_expiry_redelivers_and_stale_token_is_lost(
    client: ServiceBusClient,
    new_queue: Callable[..., str],
    servicebus_emulator: ServiceBusEmulator,
) -> None:
    queue = new_queue(lock_duration=1.0)
    await _send(client, queue, "slow work")
    async with client.get_queue_receiver(queue) as receiver:
        [first] = await receiver.receive_messages(max_message_count=1, max_wait_time=5)
        assert first.delivery_count == 0
        assert servicebus_emulator.counts(queue).locked == 1
        await asyncio.sleep(1.4)
        assert servicebus_emulator.counts(queue).active == 1, "the lapsed lock released it"
        [second] = await receiver.receive_messages(max_message_count=1, max_wait_time=5)
        assert second.sequence_number == first.sequence_number
        assert second.delivery_count == 1, "the lapsed lock counted as a delivery"
        assert second.lock_token != first.lock_token
        with pytest.raises(MessageLockLostError):
            await receiver.complete_message(first)
        with pytest.raises(MessageLockLostError):
            await receiver.renew_message_lock(first)
        await receiver.complete_message(second)
    assert servicebus_emulator.counts(queue) == QueueCounts(0, 0, 0, 0, 0)


async def test_settling_a_message_whose_lock_lapsed_on_the_broker_is_refused(
    client: ServiceBusClient,
    new_queue: Callable[..., str],
    servicebus_emulator: ServiceBusEmulator,
) -> None:
    """The broker, not only the SDK's own clock check, refuses a stale lock."""
    queue = new_queue(lock_duration=1.0)
    await _send(client, queue, "lapsed")
    async with client.get_queue_receiver(queue) as receiver:
        [message] = await receiver.receive_messages(max_message_count=1, max_wait_time=5)
        await asyncio.sleep(1.3)
        # Pretend the client's clock thinks the lock is still held.
        message._locked_until_utc = datetime.max.replace(tzinfo=UTC)
        with pytest.raises(MessageLockLostError):
            await receiver.complete_message(message)


async def test_renew_lock_extends_it(
    client: ServiceBusClient,
    new_queue: Callable[..., str],
    servicebus_emulator: ServiceBusEmulator,
) -> None:
    queue = new_queue(lock_duration=1.0)
    await _send(client, queue, "long job")
    async with client.get_queue_receiver(queue) as receiver:
        [message] = await receiver.receive_messages(max_message_count=1, max_wait_time=5)
        first_until = message.locked_until_utc
        for _ in range(3):
            await asyncio.sleep(0.6)
            new_until = await receiver.renew_message_lock(message)
            assert new_until > first_until
        assert servicebus_emulator.counts(queue).locked == 1
        await receiver.complete_message(message)
    assert servicebus_emulator.counts(queue) == QueueCounts(0, 0, 0, 0, 0)


async def test_defer_then_receive_deferred_by_sequence_number(
    client: ServiceBusClient, servicebus_queue: str, servicebus_emulator: ServiceBusEmulator
) -> None:
    await _send(client, servicebus_queue, "later please", "now")
    async with client.get_queue_receiver(servicebus_queue) as receiver:
        messages = await receiver.receive_messages(max_message_count=2, max_wait_time=5)
        deferred = next(m for m in messages if str(m) == "later please")
        other = next(m for m in messages if str(m) == "now")
        await receiver.defer_message(deferred)
        await receiver.complete_message(other)
        assert servicebus_emulator.counts(servicebus_queue) == QueueCounts(0, 0, 0, 1, 0)
        [again] = await receiver.receive_deferred_messages([deferred.sequence_number])
        assert str(again) == "later please"
        assert again.lock_token is not None
        assert again.delivery_count == 1
        # Abandoning a received deferred message leaves it deferred.
        await receiver.abandon_message(again)
        assert servicebus_emulator.counts(servicebus_queue).deferred == 1
        [third] = await receiver.receive_deferred_messages([deferred.sequence_number])
        await receiver.complete_message(third)
    assert servicebus_emulator.counts(servicebus_queue) == QueueCounts(0, 0, 0, 0, 0)


async def test_receive_deferred_unknown_sequence_number_fails(
    servicebus_emulator: ServiceBusEmulator, servicebus_queue: str
) -> None:
    # retry_total=0: the SDK would otherwise retry this error with back-off, as on Azure.
    async with (
        ServiceBusClient.from_connection_string(
            servicebus_emulator.connection_string, retry_total=0
        ) as client,
        client.get_queue_receiver(servicebus_queue) as receiver,
    ):
        with pytest.raises(MessageNotFoundError):
            await receiver.receive_deferred_messages([12345])


async def test_receive_and_delete_from_dead_letter_queue(
    client: ServiceBusClient, servicebus_queue: str, servicebus_emulator: ServiceBusEmulator
) -> None:
    await _send(client, servicebus_queue, "d1", "d2")
    async with client.get_queue_receiver(servicebus_queue) as receiver:
        for message in await receiver.receive_messages(max_message_count=2, max_wait_time=5):
            await receiver.dead_letter_message(message, reason="r", error_description="d")
    async with client.get_queue_receiver(
        servicebus_queue,
        sub_queue=ServiceBusSubQueue.DEAD_LETTER,
        receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE,
    ) as dlq:
        peeked = await dlq.peek_messages(max_message_count=5)
        assert sorted(str(m) for m in peeked) == ["d1", "d2"]
        got = await dlq.receive_messages(max_message_count=2, max_wait_time=5)
        assert sorted(str(m) for m in got) == ["d1", "d2"]
    assert servicebus_emulator.counts(servicebus_queue).dead_lettered == 0


async def test_closing_a_receiver_returns_its_prefetched_messages(
    client: ServiceBusClient, servicebus_queue: str, servicebus_emulator: ServiceBusEmulator
) -> None:
    await _send(client, servicebus_queue, *[f"m{i}" for i in range(10)])
    async with client.get_queue_receiver(servicebus_queue, prefetch_count=10) as receiver:
        [message] = await receiver.receive_messages(max_message_count=1, max_wait_time=5)
        await receiver.complete_message(message)
    counts = servicebus_emulator.counts(servicebus_queue)
    assert (counts.active, counts.locked) == (9, 0)
    async with client.get_queue_receiver(servicebus_queue) as receiver:
        [next_message] = await receiver.receive_messages(max_message_count=1, max_wait_time=5)
        assert next_message.delivery_count == 0, "a release is not a failed delivery"

"""Contract: sending and receiving with the real async SDK (``azure.servicebus.aio``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from azure.servicebus import ServiceBusMessage, ServiceBusReceiveMode
from azure.servicebus.aio import ServiceBusClient
from azure.servicebus.exceptions import MessageSizeExceededError

from boilermaker.emulator import QueueCounts, ServiceBusEmulator


async def test_send_receive_complete(
    client: ServiceBusClient, servicebus_queue: str, servicebus_emulator: ServiceBusEmulator
) -> None:
    async with client.get_queue_sender(servicebus_queue) as sender:
        await sender.send_messages(
            ServiceBusMessage(
                "hello", message_id="m-1", application_properties={"kind": "greeting"}
            )
        )
    assert servicebus_emulator.counts(servicebus_queue).active == 1
    async with client.get_queue_receiver(servicebus_queue) as receiver:
        [message] = await receiver.receive_messages(max_message_count=1, max_wait_time=5)
        assert str(message) == "hello"
        assert message.message_id == "m-1"
        assert message.application_properties == {b"kind": b"greeting"}
        assert message.sequence_number == 1
        assert message.delivery_count == 0
        assert message.enqueued_time_utc is not None
        assert message.locked_until_utc is not None
        assert message.locked_until_utc > datetime.now(UTC) + timedelta(seconds=50)
        assert servicebus_emulator.counts(servicebus_queue).locked == 1
        await receiver.complete_message(message)
    assert servicebus_emulator.counts(servicebus_queue) == QueueCounts(0, 0, 0, 0, 0)


async def test_batch_send_assigns_sequence_numbers_in_order(
    client: ServiceBusClient, servicebus_queue: str, servicebus_emulator: ServiceBusEmulator
) -> None:
    async with client.get_queue_sender(servicebus_queue) as sender:
        batch = await sender.create_message_batch()
        for i in range(50):
            batch.add_message(ServiceBusMessage(f"item-{i}", message_id=f"id-{i}"))
        await sender.send_messages(batch)
        await sender.send_messages([ServiceBusMessage("list-a"), ServiceBusMessage("list-b")])
    assert servicebus_emulator.counts(servicebus_queue).active == 52
    received = []
    async with client.get_queue_receiver(
        servicebus_queue, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE
    ) as receiver:
        while len(received) < 52:
            received += await receiver.receive_messages(max_message_count=52, max_wait_time=2)
    assert [str(m) for m in received] == [f"item-{i}" for i in range(50)] + ["list-a", "list-b"]
    assert [m.sequence_number for m in received] == list(range(1, 53))
    assert received[7].message_id == "id-7"


async def test_scheduled_message_arrives_after_its_time(
    client: ServiceBusClient, servicebus_queue: str, servicebus_emulator: ServiceBusEmulator
) -> None:
    async with client.get_queue_sender(servicebus_queue) as sender:
        sent_at = time.monotonic()
        [seq] = await sender.schedule_messages(
            ServiceBusMessage("later"), datetime.now(UTC) + timedelta(seconds=2)
        )
    assert seq == 1
    assert servicebus_emulator.counts(servicebus_queue).scheduled == 1
    async with client.get_queue_receiver(servicebus_queue) as receiver:
        messages = await receiver.receive_messages(max_message_count=1, max_wait_time=6)
        arrived_after = time.monotonic() - sent_at
        assert [str(m) for m in messages] == ["later"]
        assert 1.8 <= arrived_after < 4.0
        assert messages[0].sequence_number == seq
        assert messages[0].scheduled_enqueue_time_utc is not None
        await receiver.complete_message(messages[0])


async def test_cancel_scheduled_message(
    client: ServiceBusClient, servicebus_queue: str, servicebus_emulator: ServiceBusEmulator
) -> None:
    async with client.get_queue_sender(servicebus_queue) as sender:
        when = datetime.now(UTC) + timedelta(seconds=1)
        seqs = await sender.schedule_messages(
            [ServiceBusMessage("cancel me"), ServiceBusMessage("keep me")], when
        )
        assert servicebus_emulator.counts(servicebus_queue).scheduled == 2
        await sender.cancel_scheduled_messages(seqs[0])
    assert servicebus_emulator.counts(servicebus_queue).scheduled == 1
    await asyncio.sleep(1.3)
    counts = servicebus_emulator.counts(servicebus_queue)
    assert (counts.active, counts.scheduled) == (1, 0)
    async with client.get_queue_receiver(servicebus_queue) as receiver:
        [message] = await receiver.receive_messages(max_message_count=5, max_wait_time=2)
        assert str(message) == "keep me"
        await receiver.complete_message(message)


async def test_schedule_in_the_past_is_active_at_once(
    client: ServiceBusClient, servicebus_queue: str, servicebus_emulator: ServiceBusEmulator
) -> None:
    async with client.get_queue_sender(servicebus_queue) as sender:
        await sender.schedule_messages(ServiceBusMessage("now"), datetime.now(UTC))
    assert servicebus_emulator.counts(servicebus_queue).active == 1


async def test_receive_and_delete_removes_on_delivery(
    client: ServiceBusClient, servicebus_queue: str, servicebus_emulator: ServiceBusEmulator
) -> None:
    async with client.get_queue_sender(servicebus_queue) as sender:
        await sender.send_messages([ServiceBusMessage("one"), ServiceBusMessage("two")])
    async with client.get_queue_receiver(
        servicebus_queue, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE
    ) as receiver:
        messages = await receiver.receive_messages(max_message_count=2, max_wait_time=3)
        assert sorted(str(m) for m in messages) == ["one", "two"]
        assert all(m.lock_token is None for m in messages)
    assert servicebus_emulator.counts(servicebus_queue) == QueueCounts(0, 0, 0, 0, 0)


async def test_duplicate_message_id_dropped_within_window(
    client: ServiceBusClient,
    new_queue: Callable[..., str],
    servicebus_emulator: ServiceBusEmulator,
) -> None:
    queue = new_queue(requires_duplicate_detection=True, duplicate_detection_window=60)
    async with client.get_queue_sender(queue) as sender:
        await sender.send_messages(ServiceBusMessage("first", message_id="order-1"))
        await sender.send_messages(ServiceBusMessage("again", message_id="order-1"))
        await sender.send_messages(ServiceBusMessage("other", message_id="order-2"))
        [seq] = await sender.schedule_messages(
            ServiceBusMessage("scheduled again", message_id="order-1"), datetime.now(UTC)
        )
    assert seq == 1, "a duplicate resolves to the original's sequence number"
    assert servicebus_emulator.counts(queue).active == 2
    async with client.get_queue_receiver(
        queue, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE
    ) as receiver:
        messages = await receiver.receive_messages(max_message_count=5, max_wait_time=2)
    assert [str(m) for m in messages] == ["first", "other"]


async def test_duplicate_detection_off_keeps_repeats(
    client: ServiceBusClient, servicebus_queue: str, servicebus_emulator: ServiceBusEmulator
) -> None:
    async with client.get_queue_sender(servicebus_queue) as sender:
        await sender.send_messages(ServiceBusMessage("a", message_id="same"))
        await sender.send_messages(ServiceBusMessage("b", message_id="same"))
    assert servicebus_emulator.counts(servicebus_queue).active == 2


async def test_oversize_message_refused(
    client: ServiceBusClient,
    new_queue: Callable[..., str],
    servicebus_emulator: ServiceBusEmulator,
) -> None:
    queue = new_queue(max_message_size=64 * 1024)
    async with client.get_queue_sender(queue) as sender:
        with pytest.raises(MessageSizeExceededError):
            await sender.send_messages(ServiceBusMessage(b"x" * (100 * 1024)))
        with pytest.raises(MessageSizeExceededError):
            await sender.schedule_messages(
                ServiceBusMessage(b"x" * (100 * 1024)), datetime.now(UTC)
            )
        await sender.send_messages(ServiceBusMessage(b"x" * (60 * 1024)))
    assert servicebus_emulator.counts(queue).active == 1


async def test_default_max_message_size_is_256_kb(
    client: ServiceBusClient, servicebus_queue: str, servicebus_emulator: ServiceBusEmulator
) -> None:
    async with client.get_queue_sender(servicebus_queue) as sender:
        batch = await sender.create_message_batch()
        assert batch.max_size_in_bytes == 262144
        with pytest.raises(MessageSizeExceededError):
            await sender.send_messages(ServiceBusMessage(b"y" * 300_000))
    assert servicebus_emulator.counts(servicebus_queue).active == 0


async def test_peek_does_not_lock(
    client: ServiceBusClient, servicebus_queue: str, servicebus_emulator: ServiceBusEmulator
) -> None:
    async with client.get_queue_sender(servicebus_queue) as sender:
        await sender.send_messages([ServiceBusMessage(f"p{i}") for i in range(5)])
    async with client.get_queue_receiver(servicebus_queue) as receiver:
        peeked = await receiver.peek_messages(max_message_count=3)
        assert [str(m) for m in peeked] == ["p0", "p1", "p2"]
        assert [m.sequence_number for m in peeked] == [1, 2, 3]
        more = await receiver.peek_messages(max_message_count=10)
        assert [str(m) for m in more] == ["p3", "p4"]
        assert await receiver.peek_messages(max_message_count=10) == []
        again = await receiver.peek_messages(max_message_count=1, sequence_number=2)
        assert [str(m) for m in again] == ["p1"]
    assert servicebus_emulator.counts(servicebus_queue).active == 5


async def test_two_receivers_share_a_queue_without_double_delivery(
    client: ServiceBusClient, servicebus_queue: str, servicebus_emulator: ServiceBusEmulator
) -> None:
    total = 100
    async with client.get_queue_sender(servicebus_queue) as sender:
        await sender.send_messages([ServiceBusMessage(f"w{i}") for i in range(total)])

    async def drain(prefetch: int) -> list[int]:
        seen: list[int] = []
        async with client.get_queue_receiver(servicebus_queue, prefetch_count=prefetch) as receiver:
            while True:
                batch = await receiver.receive_messages(max_message_count=20, max_wait_time=1)
                if not batch:
                    return seen
                for message in batch:
                    seen.append(message.sequence_number)
                    await receiver.complete_message(message)

    first, second = await asyncio.gather(drain(10), drain(10))
    assert first, "the first receiver got work"
    assert second, "the second receiver got work"
    assert sorted(first + second) == list(range(1, total + 1))
    assert servicebus_emulator.counts(servicebus_queue) == QueueCounts(0, 0, 0, 0, 0)


async def test_large_message_round_trips_intact(
    client: ServiceBusClient, servicebus_queue: str
) -> None:
    body = bytes(range(256)) * 900  # 230,400 bytes: many frames each way
    async with client.get_queue_sender(servicebus_queue) as sender:
        await sender.send_messages(ServiceBusMessage(body, message_id="big"))
    async with client.get_queue_receiver(servicebus_queue) as receiver:
        [message] = await receiver.receive_messages(max_message_count=1, max_wait_time=5)
        assert b"".join(message.body) == body
        await receiver.complete_message(message)


async def test_many_concurrent_connections(
    servicebus_emulator: ServiceBusEmulator, servicebus_queue: str
) -> None:
    publishers = 20

    async def publish(n: int) -> None:
        async with (
            ServiceBusClient.from_connection_string(servicebus_emulator.connection_string) as c,
            c.get_queue_sender(servicebus_queue, keep_alive=0) as sender,
        ):
            await sender.send_messages([ServiceBusMessage(f"{n}-{i}") for i in range(5)])

    await asyncio.gather(*(publish(n) for n in range(publishers)))
    assert servicebus_emulator.counts(servicebus_queue).active == publishers * 5

"""Reading a received SDK message: the one-pass reading gives what the careful one gives.

:func:`boilermaker.service_bus.messages.from_sdk` reads the usual message (a
data body, text properties) in one pass over its AMQP sections, and anything
else field by field through the SDK's getters, naming a field that cannot be
read. Both readings must agree on every message the one-pass reading takes;
the messages here are delivered by the emulator, sent with the SDK and with
proton (ids of other AMQP types, binary ids that are not UTF-8, several data
sections), and dead-lettered ones are read from the dead-letter queue.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from azure.servicebus import ServiceBusMessage, ServiceBusReceivedMessage, ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient, ServiceBusReceiver
from proton import Message

from boilermaker.emulator import ServiceBusEmulator
from boilermaker.service_bus.messages import _careful, _plain, from_sdk
from tests.servicebus.conftest import proton_sender

#: Sent with the SDK: the one-pass reading takes every one of them.
SDK_MESSAGES = [
    ServiceBusMessage(b'{"plain": 1}', message_id="plain"),
    ServiceBusMessage(
        b"{}",
        message_id="dressed",
        subject="a subject",
        correlation_id="corr-1",
        content_type="application/json",
        application_properties={"text": "t\u00e9xt", "number": 7, "flag": True, "raw": b"\x00"},
    ),
    ServiceBusMessage(b"", message_id="empty-body"),
]


def send_with_proton(port: int, queue: str) -> None:
    with proton_sender(port, queue) as sender:
        for message in (
            Message(body=b"{}", id=uuid.UUID("12345678-1234-5678-1234-567812345678")),
            Message(body=b"{}", id=42),
            Message(body=b"{}", id=b"\xff\xfe not utf-8"),
            Message(body=b"{}", id="no-content-type", subject="s"),
        ):
            message.inferred = True  # binary as a data section, as the SDK sends it
            sender.send(message)
        sender.send(Message(body=b"{}", id="value-body"))  # binary as an AMQP value


async def receive_all(receiver: ServiceBusReceiver, n: int) -> list[ServiceBusReceivedMessage]:
    got: list[ServiceBusReceivedMessage] = []
    for _ in range(50):
        if len(got) >= n:
            break
        got.extend(await receiver.receive_messages(n - len(got), max_wait_time=1))
    assert len(got) == n
    return got


def assert_readings_agree(message: ServiceBusReceivedMessage) -> None:
    careful = _careful(message)
    assert from_sdk(message) == careful
    try:
        fast = _plain(message)
    except Exception:
        fast = None
    if fast is not None:
        assert fast == careful
        assert fast.body_error is None
        assert fast.handle is message


async def test_both_readings_agree_on_messages_sent_with_the_sdk_and_with_proton(
    new_queue: Callable[..., str], servicebus_emulator: ServiceBusEmulator
) -> None:
    queue = new_queue()
    connection_string = servicebus_emulator.connection_string
    async with ServiceBusClient.from_connection_string(connection_string) as client:
        async with client.get_queue_sender(queue) as sender:
            await sender.send_messages(SDK_MESSAGES)
        await asyncio.to_thread(send_with_proton, servicebus_emulator.port, queue)
        async with client.get_queue_receiver(queue) as receiver:
            received = await receive_all(receiver, len(SDK_MESSAGES) + 5)
            by_id = {str(_careful(m).message_id): m for m in received}
            for message in received:
                assert_readings_agree(message)
            # The usual messages take the one-pass path, and it reads every field.
            for name in ("plain", "dressed", "empty-body", "no-content-type"):
                fast = _plain(by_id[name])
                assert fast is not None, name
            dressed = _plain(by_id["dressed"])
            assert dressed is not None
            assert (dressed.subject, dressed.correlation_id, dressed.content_type) == (
                "a subject",
                "corr-1",
                "application/json",
            )
            assert dressed.application_properties == {
                "text": "t\u00e9xt",
                "number": 7,
                "flag": True,
                "raw": "\x00",
            }
            assert dressed.lock_token is not None
            assert dressed.locked_until is not None
            assert dressed.enqueued_time is not None
            assert dressed.sequence_number > 0
            # Ids of other AMQP types are read field by field.
            assert "12345678-1234-5678-1234-567812345678" in by_id
            assert "42" in by_id
            assert _plain(by_id["value-body"]) is None
            assert from_sdk(by_id["value-body"]).body == b"{}"
            for message in received:
                await receiver.complete_message(message)


async def test_both_readings_agree_on_dead_lettered_and_scheduled_messages(
    new_queue: Callable[..., str], servicebus_emulator: ServiceBusEmulator
) -> None:
    queue = new_queue()
    connection_string = servicebus_emulator.connection_string
    async with ServiceBusClient.from_connection_string(connection_string) as client:
        async with client.get_queue_sender(queue) as sender:
            await sender.send_messages(ServiceBusMessage(b"{}", message_id="to-dead-letter"))
            await sender.schedule_messages(
                ServiceBusMessage(b"{}", message_id="scheduled"),
                datetime.now(UTC) + timedelta(milliseconds=300),
            )
        async with client.get_queue_receiver(queue) as receiver:
            [first] = await receive_all(receiver, 1)
            await receiver.dead_letter_message(
                first, reason="InvalidTaskFormat", error_description="why, in d\u00e9tail"
            )
            [scheduled] = await receive_all(receiver, 1)
            assert_readings_agree(scheduled)
            fast = _plain(scheduled)
            assert fast is not None
            assert fast.message_id == "scheduled"
            assert fast.scheduled_enqueue_time is not None
            await receiver.complete_message(scheduled)
        async with client.get_queue_receiver(
            queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER
        ) as dead:
            [letter] = await receive_all(dead, 1)
            assert_readings_agree(letter)
            fast = _plain(letter)
            assert fast is not None
            assert (fast.dead_letter_reason, fast.dead_letter_description) == (
                "InvalidTaskFormat",
                "why, in d\u00e9tail",
            )
            await dead.complete_message(letter)

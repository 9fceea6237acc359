"""Messages whose body is not data (an AMQP value or sequence) never stop a worker.

Other AMQP clients can send bodies the SDK hands over as an int, a list or
sections of lists. Each is converted on its own: it becomes a message the
worker refuses on its first delivery, dead-lettered as ``InvalidTaskFormat``
with a description naming the body's type, and the worker goes on to run
the tasks behind it. Sent both with the SDK and with proton, on the emulator.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from azure.servicebus.aio import ServiceBusClient
from azure.servicebus.amqp import AmqpAnnotatedMessage
from proton import Message

from boilermaker import Boilermaker
from boilermaker.broker import SubQueue
from boilermaker.emulator import ServiceBusEmulator
from boilermaker.service_bus import AzureServiceBus
from boilermaker.worker.middleware import MessageContext, Middleware
from boilermaker.worker.verdict import Action
from tests.contracts.broker_contract import receive_n
from tests.servicebus.conftest import proton_sender

#: What the worker says about each body sent below, by message id.
EXPECTED = {
    "sdk-value-int": "an AMQP value body (int)",
    "sdk-value-map": "an AMQP value body (dict)",
    "sdk-sequence": "an AMQP sequence body (2 section(s))",
    "proton-value-int": "an AMQP value body (int)",
    "proton-value-list": "an AMQP value body (list)",
    "proton-sequence": "an AMQP sequence body (1 section(s))",
}


async def send_with_the_sdk(connection_string: str, queue: str) -> None:
    async with (
        ServiceBusClient.from_connection_string(connection_string) as client,
        client.get_queue_sender(queue) as sender,
    ):
        await sender.send_messages(
            [
                AmqpAnnotatedMessage(value_body=42, properties={"message_id": "sdk-value-int"}),
                AmqpAnnotatedMessage(
                    value_body={"function_name": "ran"}, properties={"message_id": "sdk-value-map"}
                ),
                AmqpAnnotatedMessage(
                    sequence_body=[[1, 2], ["three"]], properties={"message_id": "sdk-sequence"}
                ),
            ]
        )


def send_with_proton(port: int, queue: str) -> None:
    with proton_sender(port, queue) as sender:
        sender.send(Message(body=42, id="proton-value-int"))
        sender.send(Message(body=[7, 8], id="proton-value-list"))
        sequence = Message(body=[1, "two", 3.5], id="proton-sequence")
        sequence.inferred = True  # a list body as one amqp-sequence section
        sender.send(sequence)


class DeliveryCounts(Middleware):
    """Records the delivery count of each message the worker has dead-lettered."""

    def __init__(self) -> None:
        self.dead_lettered: dict[str, int] = {}

    async def after_settle(self, ctx: MessageContext) -> None:
        if ctx.settled and ctx.verdict is not None and ctx.verdict.action is Action.DEAD_LETTER:
            self.dead_lettered[ctx.message.message_id] = ctx.message.delivery_count


async def test_value_and_sequence_bodies_are_dead_lettered_and_the_worker_runs_on(
    new_queue: Callable[..., str], servicebus_emulator: ServiceBusEmulator
) -> None:
    queue = new_queue()
    await send_with_the_sdk(servicebus_emulator.connection_string, queue)
    await asyncio.to_thread(send_with_proton, servicebus_emulator.port, queue)
    broker = AzureServiceBus.from_connection_string(servicebus_emulator.connection_string, queue)
    counts = DeliveryCounts()
    ran = asyncio.Event()

    async def after_them(state: object) -> None:
        ran.set()

    app = Boilermaker({}, service_bus_client=broker, middleware=[counts])
    app.register_async(after_them)
    await app.apply_async(after_them)
    worker = app.worker(install_signal_handlers=False, shutdown_grace=0)
    running = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(ran.wait(), 20)
        deadline = time.monotonic() + 10
        while len(counts.dead_lettered) < len(EXPECTED):
            assert not running.done(), "the worker stopped"
            assert time.monotonic() < deadline, f"dead-lettered only {counts.dead_lettered}"
            await asyncio.sleep(0.05)
        assert not running.done(), "the worker stopped"
    finally:
        worker.stop()
        await asyncio.wait_for(running, 20)
    try:
        assert counts.dead_lettered == dict.fromkeys(EXPECTED, 0)  # on first delivery
        async with broker.receiver(sub_queue=SubQueue.DeadLetter) as dlq:
            letters = await receive_n(dlq, len(EXPECTED))
            for letter in letters:
                await dlq.complete(letter)
    finally:
        await broker.close()
    for letter in letters:
        assert letter.dead_letter_reason == "InvalidTaskFormat", letter
        assert letter.dead_letter_description is not None
        assert EXPECTED[letter.message_id] in letter.dead_letter_description
    assert {m.message_id for m in letters} == set(EXPECTED)
    assert servicebus_emulator.counts(queue).active == 0


async def test_unreadable_bodies_are_received_and_peeked_with_the_reason(
    new_queue: Callable[..., str], servicebus_emulator: ServiceBusEmulator
) -> None:
    queue = new_queue()
    await send_with_the_sdk(servicebus_emulator.connection_string, queue)
    broker = AzureServiceBus.from_connection_string(servicebus_emulator.connection_string, queue)
    try:
        async with broker.receiver() as receiver:
            peeked = await receiver.peek(10)
            received = await receive_n(receiver, 3)
            for message in received:
                await receiver.abandon(message)
    finally:
        await broker.close()
    for messages in (peeked, received):
        assert len(messages) == 3
        for message in messages:
            assert message.body == b""
            assert message.body_error is not None
            assert EXPECTED[message.message_id] in message.body_error
            assert message.sequence_number > 0

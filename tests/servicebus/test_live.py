"""The end-to-end flow against a real Azure Service Bus namespace.

Skipped unless ``BOILERMAKER_LIVE_SERVICE_BUS`` holds a connection string;
the queue is ``BOILERMAKER_LIVE_QUEUE`` (default ``boilermaker-live``). Use a
queue dedicated to these tests: the worker runs whatever it finds there. The
tests only assert on, and only settle from the dead-letter queue, the
messages they sent themselves.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient

from boilermaker import Boilermaker, NoRetry, PublishError
from boilermaker.broker import BrokerAuthenticationError, ReceivedMessage, SubQueue
from boilermaker.service_bus import AzureServiceBus
from boilermaker.worker import INVALID_TASK_FORMAT, TASK_FAILED
from tests.servicebus.conftest import wrong_key

pytestmark = pytest.mark.live

DEADLINE = 90.0


@pytest.fixture
async def live_broker(
    live_connection_string: str, live_queue_name: str
) -> AsyncIterator[AzureServiceBus]:
    broker = AzureServiceBus.from_connection_string(live_connection_string, live_queue_name)
    yield broker
    await broker.close()


async def test_publish_work_dead_letter_and_read_the_dead_letter_queue(
    live_broker: AzureServiceBus, live_connection_string: str, live_queue_name: str
) -> None:
    run_id = uuid.uuid4().hex[:8]
    ran: Counter[str] = Counter()

    async def live_ok(state: object, run: str, n: int) -> None:
        if run == run_id:
            ran[f"ok-{n}"] += 1

    async def live_fails(state: object, run: str) -> None:
        if run == run_id:
            ran["fails"] += 1
        raise ValueError(f"live failure {run}")

    app = Boilermaker({}, service_bus_client=live_broker)
    app.register_async(live_ok)
    app.register_async(live_fails, policy=NoRetry())

    started = datetime.now(UTC)
    now = await app.apply_async(live_ok, run_id, 0, publish_attempts=3)
    assert now.sequence_number is None
    later = await app.apply_async(live_ok, run_id, 1, delay=3, publish_attempts=3)
    assert isinstance(later.sequence_number, int)
    await app.apply_many(live_ok, [(run_id, n) for n in range(2, 12)], publish_attempts=3)
    failing = await app.apply_async(live_fails, run_id, publish_attempts=3)
    raw_id = f"live-raw-{run_id}"
    async with (
        ServiceBusClient.from_connection_string(live_connection_string) as client,
        client.get_queue_sender(live_queue_name) as sender,
    ):
        await sender.send_messages(
            ServiceBusMessage(b"not json " + run_id.encode(), message_id=raw_id)
        )

    worker = app.worker(concurrency=8, install_signal_handlers=False, shutdown_grace=10)
    running = asyncio.create_task(worker.run())
    expected = {f"ok-{n}" for n in range(12)} | {"fails"}
    try:
        deadline = time.monotonic() + DEADLINE
        while set(ran) != expected:
            assert time.monotonic() < deadline, f"ran {sorted(ran)} of {sorted(expected)}"
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # let the last settlements land
    finally:
        worker.stop()
        await running
    assert all(count == 1 for count in ran.values()), ran

    ours = {raw_id: INVALID_TASK_FORMAT, str(failing.task_id): TASK_FAILED}
    found: dict[str, ReceivedMessage] = {}
    async with live_broker.receiver(sub_queue=SubQueue.DeadLetter) as dlq:
        deadline = time.monotonic() + DEADLINE
        while set(found) != set(ours):
            assert time.monotonic() < deadline, f"found {sorted(found)} of {sorted(ours)}"
            for message in await dlq.receive(20, 2):
                if message.message_id in ours:
                    found[message.message_id] = message
                    await dlq.complete(message)
                else:
                    await dlq.abandon(message)  # not ours: leave it there
    for message_id, reason in ours.items():
        dead = found[message_id]
        assert dead.dead_letter_reason == reason
        assert dead.dead_letter_description
        assert isinstance(dead.delivery_count, int)
        assert dead.enqueued_time is not None
        assert dead.enqueued_time >= started - timedelta(minutes=1)
    assert found[str(failing.task_id)].dead_letter_description == (
        f"ValueError: live failure {run_id}"
    )


async def test_a_wrong_key_fails_fast_against_azure(
    live_connection_string: str, live_queue_name: str
) -> None:
    broker = AzureServiceBus.from_connection_string(
        wrong_key(live_connection_string), live_queue_name
    )
    app = Boilermaker({}, service_bus_client=broker)

    async def never(state: object) -> None:
        return None

    app.register_async(never)
    started = time.monotonic()
    try:
        with pytest.raises(PublishError) as caught:
            await app.apply_async(never, publish_attempts=3)
    finally:
        await broker.close()
    assert isinstance(caught.value.__cause__, BrokerAuthenticationError)
    assert time.monotonic() - started < 10

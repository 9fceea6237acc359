"""The dead-letter taxonomy end to end: a real worker, the real SDK, read back from the DLQ."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient

from boilermaker import Boilermaker, NoRetry, RetryException, RetryPolicy
from boilermaker.broker import ReceivedMessage, SubQueue
from boilermaker.emulator import QueueCounts, ServiceBusEmulator
from boilermaker.service_bus import AzureServiceBus
from boilermaker.worker import (
    EXPECTATION_FAILED,
    INVALID_TASK_FORMAT,
    PROCESSING_ERROR,
    TASK_FAILED,
)
from tests.contracts.broker_contract import assert_nothing_within, receive_n


async def fails(state: object) -> None:
    raise ValueError("boom: the task failed")


async def gives_up(state: object) -> None:
    raise RetryException("still not ready")


async def unknown_here(state: object) -> None:
    return None


async def test_dead_letter_reasons_end_to_end(
    new_queue: Callable[..., str],
    make_broker: Callable[..., AzureServiceBus],
    servicebus_emulator: ServiceBusEmulator,
) -> None:
    queue = new_queue(max_delivery_count=5)
    broker = make_broker(queue)
    worker_app = Boilermaker({}, service_bus_client=broker)
    worker_app.register_async(fails, policy=NoRetry())
    worker_app.register_async(gives_up, policy=RetryPolicy(max_tries=2, delay=0, delay_max=0))
    # A publisher that knows a function this worker does not.
    publisher = Boilermaker({}, service_bus_client=broker)
    publisher.register_async(unknown_here)

    sent_at = datetime.now(UTC)
    async with (
        ServiceBusClient.from_connection_string(servicebus_emulator.connection_string) as client,
        client.get_queue_sender(queue) as sender,
    ):
        await sender.send_messages(ServiceBusMessage(b"\x00not json\xff", message_id="raw-1"))
    failed = await worker_app.apply_async(fails)
    exhausted = await worker_app.apply_async(gives_up)
    unknown = await publisher.apply_async(unknown_here)

    worker = await worker_app.run_until_idle(timeout=20, concurrency=4)
    assert worker.stats.by_reason == {
        INVALID_TASK_FORMAT: 1,
        TASK_FAILED: 1,
        PROCESSING_ERROR: 1,
        EXPECTATION_FAILED: 1,
    }
    assert worker.stats.retried == 1
    assert servicebus_emulator.counts(queue) == QueueCounts(0, 0, 0, 0, 4)

    async with broker.receiver(sub_queue=SubQueue.DeadLetter) as dlq:
        dead = await receive_n(dlq, 4)
        by_id: dict[str, ReceivedMessage] = {m.message_id: m for m in dead}
        assert set(by_id) == {
            "raw-1",
            str(failed.task_id),
            str(unknown.task_id),
            # The retry went out under its own message id, and that one gave up.
            f"{exhausted.task_id}:1",
        }

        raw = by_id["raw-1"]
        assert raw.dead_letter_reason == INVALID_TASK_FORMAT
        assert raw.dead_letter_description
        assert raw.body == b"\x00not json\xff"

        task_failed = by_id[str(failed.task_id)]
        assert task_failed.dead_letter_reason == TASK_FAILED
        assert task_failed.dead_letter_description == "ValueError: boom: the task failed"

        processing = by_id[f"{exhausted.task_id}:1"]
        assert processing.dead_letter_reason == PROCESSING_ERROR
        assert processing.dead_letter_description is not None
        assert "retries exhausted after 2 attempt(s)" in processing.dead_letter_description
        assert "still not ready" in processing.dead_letter_description

        expectation = by_id[str(unknown.task_id)]
        assert expectation.dead_letter_reason == EXPECTATION_FAILED
        assert expectation.dead_letter_description is not None
        assert "'unknown_here' is not registered" in expectation.dead_letter_description

        for message in dead:
            assert message.dead_letter_source in (None, queue)
            assert isinstance(message.delivery_count, int)
            assert message.delivery_count >= 0
            assert message.enqueued_time is not None
            assert sent_at - timedelta(seconds=5) <= message.enqueued_time
            assert message.enqueued_time <= datetime.now(UTC)
            await dlq.complete(message)
        await assert_nothing_within(dlq, 0.3)
    assert servicebus_emulator.counts(queue) == QueueCounts(0, 0, 0, 0, 0)

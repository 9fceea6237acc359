"""Fault injection, message expiry, and the Python API's queue management."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import timedelta

import pytest
from azure.servicebus import ServiceBusMessage, ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient
from azure.servicebus.exceptions import ServiceBusError

from boilermaker.emulator import (
    EmulatorError,
    QueueCounts,
    QueueNotFound,
    QueueSettings,
    ServiceBusEmulator,
)
from tests.servicebus.conftest import sdk_leaks_dead_sockets


@sdk_leaks_dead_sockets
async def test_sdk_recovers_after_connections_are_dropped(
    client: ServiceBusClient, servicebus_queue: str, servicebus_emulator: ServiceBusEmulator
) -> None:
    async with client.get_queue_sender(servicebus_queue) as sender:
        await sender.send_messages(ServiceBusMessage("before"))
        assert servicebus_emulator.drop_connections() >= 1
        await asyncio.sleep(0.2)
        await sender.send_messages(ServiceBusMessage("after"))
    assert servicebus_emulator.counts(servicebus_queue).active == 2


# The SDK leaves its socket unclosed when a connection is reset during open (SDK-side leak).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_refused_connections_fail_then_recover(
    servicebus_emulator: ServiceBusEmulator, servicebus_queue: str
) -> None:
    servicebus_emulator.refuse_connections(1.0)
    async with ServiceBusClient.from_connection_string(
        servicebus_emulator.connection_string, retry_total=0
    ) as client:
        with pytest.raises(ServiceBusError):
            async with client.get_queue_sender(servicebus_queue) as sender:
                await sender.send_messages(ServiceBusMessage("refused"))
    await asyncio.sleep(1.1)
    async with (
        ServiceBusClient.from_connection_string(servicebus_emulator.connection_string) as client,
        client.get_queue_sender(servicebus_queue) as sender,
    ):
        await sender.send_messages(ServiceBusMessage("accepted"))
    assert servicebus_emulator.counts(servicebus_queue).active == 1


async def test_delayed_frames_slow_every_operation(
    client: ServiceBusClient, servicebus_queue: str, servicebus_emulator: ServiceBusEmulator
) -> None:
    async with client.get_queue_sender(servicebus_queue) as sender:
        started = time.monotonic()
        await sender.send_messages(ServiceBusMessage("fast"))
        fast = time.monotonic() - started
        servicebus_emulator.delay_frames(0.5)
        try:
            started = time.monotonic()
            await sender.send_messages(ServiceBusMessage("slow"))
            slow = time.monotonic() - started
        finally:
            servicebus_emulator.delay_frames(0)
    assert fast < 0.3
    assert slow >= 0.5
    assert servicebus_emulator.counts(servicebus_queue).active == 2


async def test_expired_messages_are_dropped(
    client: ServiceBusClient,
    new_queue: Callable[..., str],
    servicebus_emulator: ServiceBusEmulator,
) -> None:
    queue = new_queue(default_ttl=2.0)
    async with client.get_queue_sender(queue) as sender:
        await sender.send_messages(ServiceBusMessage("short-lived"))
        # The queue's default caps a longer time to live, as on Service Bus.
        await sender.send_messages(ServiceBusMessage("own ttl", time_to_live=timedelta(hours=1)))
        assert servicebus_emulator.counts(queue).active == 2
    await asyncio.sleep(2.2)
    assert servicebus_emulator.counts(queue) == QueueCounts(0, 0, 0, 0, 0)


async def test_expired_messages_dead_lettered_when_configured(
    client: ServiceBusClient,
    new_queue: Callable[..., str],
    servicebus_emulator: ServiceBusEmulator,
) -> None:
    queue = new_queue(default_ttl=60, dead_letter_on_expiration=True)
    async with client.get_queue_sender(queue) as sender:
        # The SDK sends whole seconds of time to live.
        await sender.send_messages(ServiceBusMessage("expires", time_to_live=timedelta(seconds=1)))
        await sender.send_messages(ServiceBusMessage("stays"))
    await asyncio.sleep(1.3)
    assert servicebus_emulator.counts(queue) == QueueCounts(1, 0, 0, 0, 1)
    async with client.get_queue_receiver(queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq:
        [dead] = await dlq.receive_messages(max_message_count=1, max_wait_time=5)
        assert str(dead) == "expires"
        assert dead.dead_letter_reason == "TTLExpiredException"
        await dlq.complete_message(dead)


def test_queue_management_api(servicebus_emulator: ServiceBusEmulator) -> None:
    settings = QueueSettings(name="api-managed", lock_duration=5)
    servicebus_emulator.create_queue(settings)
    assert "api-managed" in servicebus_emulator.queue_names()
    assert servicebus_emulator.counts("API-MANAGED") == QueueCounts(0, 0, 0, 0, 0)
    servicebus_emulator.purge_queue("api-managed")
    servicebus_emulator.delete_queue("api-managed")
    with pytest.raises(QueueNotFound):
        servicebus_emulator.counts("api-managed")


def test_emulator_refuses_remote_bind_and_use_before_start() -> None:
    with pytest.raises(ValueError, match="allow_remote"):
        ServiceBusEmulator(host="0.0.0.0")
    with pytest.raises(ValueError, match="mode"):
        ServiceBusEmulator(mode="fork")  # type: ignore[arg-type]
    emulator = ServiceBusEmulator()
    with pytest.raises(EmulatorError):
        _ = emulator.connection_string
    emulator.stop()


def test_thread_mode_has_the_same_api() -> None:
    with ServiceBusEmulator(queues=[QueueSettings(name="t")], mode="thread") as emulator:
        assert emulator.pid > 0
        assert emulator.counts("t") == QueueCounts(0, 0, 0, 0, 0)
        emulator.refuse_connections(0)
        emulator.delay_frames(0)
        assert emulator.drop_connections() == 0
        assert emulator.connection_string.endswith(";UseDevelopmentEmulator=true")
    assert not emulator.running


async def test_deleting_a_queue_detaches_its_receivers(
    servicebus_emulator: ServiceBusEmulator, new_queue: Callable[..., str]
) -> None:
    queue = new_queue()
    async with (
        ServiceBusClient.from_connection_string(
            servicebus_emulator.connection_string, retry_total=0
        ) as client,
        client.get_queue_receiver(queue, keep_alive=0) as receiver,
    ):
        assert await receiver.receive_messages(max_message_count=1, max_wait_time=0.5) == []
        servicebus_emulator.delete_queue(queue)
        with pytest.raises(ServiceBusError, match="resource-deleted"):
            await receiver.receive_messages(max_message_count=1, max_wait_time=2)

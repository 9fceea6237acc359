"""Both ``aio_azure_clients_toolbox`` Service Bus clients work with a connection string."""

from __future__ import annotations

from aio_azure_clients_toolbox.clients.service_bus import (
    AzureServiceBus,
    ManagedAzureServiceBusSender,
)

from boilermaker.emulator import ServiceBusEmulator


async def test_managed_sender_pool_schedules_messages(
    servicebus_emulator: ServiceBusEmulator, servicebus_queue: str
) -> None:
    sender = ManagedAzureServiceBusSender(
        "sb://localhost",
        servicebus_queue,
        connection_string=servicebus_emulator.connection_string,
        ready_message="ready",
    )
    try:
        first = await sender.send_message("now", unique_msg_id="job-1")
        second = await sender.send_message("in a while", delay=60)
    finally:
        await sender.close()
    assert len(first) == 1
    assert len(second) == 1
    assert second[0] > first[0]
    counts = servicebus_emulator.counts(servicebus_queue)
    # The pool's readiness probe schedules its own "ready" message on each new connection.
    assert counts.scheduled == 1
    assert counts.active >= 1

    receiver_client = AzureServiceBus(
        "sb://localhost",
        servicebus_queue,
        connection_string=servicebus_emulator.connection_string,
    )
    try:
        receiver = receiver_client.get_receiver()
        bodies = []
        async with receiver:
            for message in await receiver.receive_messages(max_message_count=10, max_wait_time=3):
                bodies.append(str(message))
                await receiver.complete_message(message)
    finally:
        await receiver_client.close()
    assert "now" in bodies
    assert set(bodies) <= {"now", "ready"}


async def test_plain_client_sends_and_receives(
    servicebus_emulator: ServiceBusEmulator, servicebus_queue: str
) -> None:
    client = AzureServiceBus(
        "sb://localhost",
        servicebus_queue,
        connection_string=servicebus_emulator.connection_string,
    )
    try:
        await client.send_message("hello toolbox", unique_msg_id="t-1")
        receiver = client.get_receiver()
        messages = await receiver.receive_messages(max_message_count=1, max_wait_time=5)
        assert [str(m) for m in messages] == ["hello toolbox"]
        assert messages[0].message_id == "t-1"
        await receiver.complete_message(messages[0])
    finally:
        await client.close()
    assert servicebus_emulator.counts(servicebus_queue).active == 0

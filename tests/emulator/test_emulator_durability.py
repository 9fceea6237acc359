"""Contract: the file store keeps queues and messages across an emulator restart."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from azure.servicebus import ServiceBusMessage, ServiceBusReceiveMode, ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient

from boilermaker.emulator import QueueCounts, QueueSettings, ServiceBusEmulator


async def test_restart_with_file_store_keeps_messages(tmp_path: Path) -> None:
    store = tmp_path / "bus.sqlite"
    settings = QueueSettings(name="durable", lock_duration=30, max_delivery_count=4)
    with ServiceBusEmulator(queues=[settings], store_path=store, mode="thread") as first:
        async with ServiceBusClient.from_connection_string(first.connection_string) as client:
            async with client.get_queue_sender("durable") as sender:
                await sender.send_messages([ServiceBusMessage(f"keep-{i}") for i in range(3)])
                await sender.send_messages(ServiceBusMessage("to the dlq"))
                await sender.schedule_messages(
                    ServiceBusMessage("tomorrow"), datetime.now(UTC) + timedelta(days=1)
                )
            async with client.get_queue_receiver("durable", max_wait_time=5) as receiver:
                messages = await receiver.receive_messages(max_message_count=4, max_wait_time=5)
                for message in messages:
                    if str(message) == "to the dlq":
                        await receiver.dead_letter_message(
                            message, reason="Kept", error_description="across restarts"
                        )
                    elif str(message) == "keep-0":
                        await receiver.abandon_message(message)
                    else:
                        # Left locked: locks do not survive a restart.
                        pass
        before = first.counts("durable")
    assert before.dead_lettered == 1
    assert before.scheduled == 1

    with ServiceBusEmulator(store_path=store, mode="process") as second:
        assert second.counts("durable") == QueueCounts(
            active=3, scheduled=1, locked=0, deferred=0, dead_lettered=1
        )
        async with ServiceBusClient.from_connection_string(second.connection_string) as client:
            async with client.get_queue_receiver(
                "durable", receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE
            ) as receiver:
                messages = await receiver.receive_messages(max_message_count=5, max_wait_time=3)
                assert sorted(str(m) for m in messages) == ["keep-0", "keep-1", "keep-2"]
                keep_0 = next(m for m in messages if str(m) == "keep-0")
                assert keep_0.delivery_count == 1, "the abandon was recorded"
            async with client.get_queue_receiver(
                "durable", sub_queue=ServiceBusSubQueue.DEAD_LETTER
            ) as dlq:
                [dead] = await dlq.receive_messages(max_message_count=1, max_wait_time=5)
                assert dead.dead_letter_reason == "Kept"
                assert dead.dead_letter_error_description == "across restarts"
                await dlq.complete_message(dead)
            async with client.get_queue_sender("durable") as sender:
                await sender.send_messages(ServiceBusMessage("after restart"))
            async with client.get_queue_receiver("durable") as receiver:
                [fresh] = await receiver.peek_messages(max_message_count=5, sequence_number=6)
                assert str(fresh) == "after restart"
                assert fresh.sequence_number == 6, "sequence numbers continue, never reused"
        assert second.counts("durable") == QueueCounts(1, 1, 0, 0, 0)

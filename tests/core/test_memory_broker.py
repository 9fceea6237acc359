"""The in-memory broker keeps the Broker contract, plus what only it can show."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from boilermaker.broker import (
    BrokerError,
    BrokerMessageSizeExceeded,
    MessageLockLost,
    OutgoingMessage,
    ReceiveMode,
    SubQueue,
)
from boilermaker.memory import InMemoryBroker, QueueCounts
from tests.contracts.broker_contract import BrokerContract, receive_n, receive_one

LOCK = 0.6
MAX_DELIVERIES = 3


class TestInMemoryBroker(BrokerContract):
    @pytest.fixture
    def broker_lock_duration(self) -> float:
        return LOCK

    @pytest.fixture
    def broker_max_delivery_count(self) -> int:
        return MAX_DELIVERIES

    @pytest.fixture
    def broker_duplicate_detection(self) -> bool:
        return True

    @pytest.fixture
    async def broker(self) -> AsyncIterator[InMemoryBroker]:
        broker = InMemoryBroker(
            "contract",
            lock_duration=LOCK,
            max_delivery_count=MAX_DELIVERIES,
            duplicate_detection_window=60,
        )
        yield broker
        await broker.close()


def msg(message_id: str, body: bytes = b"{}", delay: float = 0) -> OutgoingMessage:
    when = datetime.now(UTC) + timedelta(seconds=delay) if delay else None
    return OutgoingMessage(body=body, message_id=message_id, scheduled_enqueue_time=when)


@pytest.fixture
async def broker() -> AsyncIterator[InMemoryBroker]:
    broker = InMemoryBroker(lock_duration=LOCK, max_delivery_count=MAX_DELIVERIES)
    yield broker
    await broker.close()


async def test_counts_track_every_state(broker: InMemoryBroker) -> None:
    assert broker.counts() == QueueCounts(active=0, scheduled=0, locked=0, dead_lettered=0)
    await broker.send([msg("a"), msg("b"), msg("c"), msg("later", delay=60)])
    assert broker.counts() == QueueCounts(active=3, scheduled=1, locked=0, dead_lettered=0)
    async with broker.receiver() as receiver:
        a, b = await receiver.receive(2, 0)
        assert broker.counts() == QueueCounts(active=1, scheduled=1, locked=2, dead_lettered=0)
        await receiver.complete(a)
        await receiver.dead_letter(b, "TaskFailed", "boom")
    assert broker.counts() == QueueCounts(active=1, scheduled=1, locked=0, dead_lettered=1)
    assert not broker.is_idle()


async def test_send_returns_sequence_numbers_and_counts_calls(broker: InMemoryBroker) -> None:
    numbers = await broker.send([msg(str(i)) for i in range(5)])
    assert numbers == [1, 2, 3, 4, 5]
    assert await broker.send([msg("x")]) == [6]
    assert broker.send_calls == 2
    assert broker.sent_count == 6


async def test_dead_letters_lists_reason_description_and_source(broker: InMemoryBroker) -> None:
    await broker.send([msg("poison")])
    async with broker.receiver() as receiver:
        got = await receive_one(receiver)
        await receiver.dead_letter(got, "InvalidTaskFormat", "not JSON")
    (dead,) = broker.dead_letters()
    assert dead.message_id == "poison"
    assert dead.dead_letter_reason == "InvalidTaskFormat"
    assert dead.dead_letter_description == "not JSON"
    assert dead.dead_letter_source == broker.queue_name
    assert dead.application_properties["DeadLetterReason"] == "InvalidTaskFormat"
    # Listing does not consume or lock.
    assert [m.message_id for m in broker.dead_letters()] == ["poison"]


async def test_dead_lettering_from_the_dead_letter_queue_keeps_the_message(
    broker: InMemoryBroker,
) -> None:
    await broker.send([msg("poison")])
    async with broker.receiver() as receiver:
        await receiver.dead_letter(await receive_one(receiver), "TaskFailed", "boom")
    async with broker.receiver(sub_queue=SubQueue.DeadLetter) as dlq:
        dead = await receive_one(dlq)
        with pytest.raises(BrokerError):
            await dlq.dead_letter(dead, "Again", "again")
        # Still there and still ours to settle.
        await dlq.complete(dead)
    assert broker.dead_letters() == []


async def test_abandon_in_dead_letter_queue_never_dead_letters_again(
    broker: InMemoryBroker,
) -> None:
    await broker.send([msg("poison")])
    async with broker.receiver() as receiver:
        await receiver.dead_letter(await receive_one(receiver), "TaskFailed", "boom")
    async with broker.receiver(sub_queue=SubQueue.DeadLetter) as dlq:
        for _ in range(MAX_DELIVERIES + 1):
            await dlq.abandon(await receive_one(dlq))
    (dead,) = broker.dead_letters()
    assert dead.dead_letter_reason == "TaskFailed"


async def test_purge_drops_everything(broker: InMemoryBroker) -> None:
    await broker.send([msg("a"), msg("b"), msg("later", delay=60)])
    async with broker.receiver() as receiver:
        locked = await receive_one(receiver)
        await receiver.dead_letter(await receive_one(receiver), "X", "y")
        broker.purge()
        assert broker.counts() == QueueCounts(active=0, scheduled=0, locked=0, dead_lettered=0)
        assert broker.is_idle()
        with pytest.raises(MessageLockLost):
            await receiver.complete(locked)
        # Still usable after a purge, and waiting receivers still wake up.
        waiting = asyncio.create_task(receiver.receive(1, 5))
        await asyncio.sleep(0.01)
        await broker.send([msg("fresh")])
        (fresh,) = await waiting
        assert fresh.message_id == "fresh"


async def test_duplicate_window_expires() -> None:
    broker = InMemoryBroker(duplicate_detection_window=0.2)
    assert await broker.send([msg("same")]) == [1]
    assert await broker.send([msg("same")]) == [None]
    assert broker.duplicates_dropped == 1
    await asyncio.sleep(0.3)
    assert await broker.send([msg("same")]) == [2]
    assert broker.counts().active == 2


async def test_without_a_window_duplicates_are_kept(broker: InMemoryBroker) -> None:
    await broker.send([msg("same")])
    await broker.send([msg("same")])
    assert broker.counts().active == 2
    assert broker.duplicates_dropped == 0


async def test_duplicate_detection_applies_to_scheduled_messages() -> None:
    broker = InMemoryBroker(duplicate_detection_window=60)
    first = await broker.send([msg("task-1:2", delay=30)])
    again = await broker.send([msg("task-1:2", delay=30)])
    assert isinstance(first[0], int)
    assert again == [None]
    assert broker.counts().scheduled == 1


async def test_scheduled_messages_and_next_due(broker: InMemoryBroker) -> None:
    assert broker.next_due_in() is None
    await broker.send([msg("soon", delay=0.3), msg("later", delay=60)])
    due = broker.next_due_in()
    assert due is not None
    assert 0 < due <= 0.3
    assert [m.message_id for m in broker.scheduled_messages()] == ["soon", "later"]
    async with broker.receiver() as receiver:
        got = await receive_one(receiver, timeout=5)
    assert got.message_id == "soon"
    assert [m.message_id for m in broker.scheduled_messages()] == ["later"]


async def test_a_waiting_receiver_wakes_when_a_message_is_sent(broker: InMemoryBroker) -> None:
    async with broker.receiver() as receiver:
        waiting = asyncio.create_task(receiver.receive(5, 5))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await broker.send([msg("wake")])
        got = await asyncio.wait_for(waiting, 1)
    assert [m.message_id for m in got] == ["wake"]


async def test_receive_respects_max_messages_and_zero_wait(broker: InMemoryBroker) -> None:
    async with broker.receiver() as receiver:
        assert await receiver.receive(5, 0) == []
        await broker.send([msg(str(i)) for i in range(5)])
        assert len(await receiver.receive(2, 0)) == 2
        assert await receiver.receive(0, 0) == []
        assert len(await receive_n(receiver, 3)) == 3


async def test_receive_and_delete_messages_cannot_be_settled(broker: InMemoryBroker) -> None:
    await broker.send([msg("gone")])
    async with broker.receiver(receive_mode=ReceiveMode.ReceiveAndDelete) as receiver:
        got = await receive_one(receiver)
        assert got.lock_token is None
        with pytest.raises(BrokerError):
            await receiver.complete(got)
    assert broker.is_idle()


async def test_settling_twice_loses_the_lock(broker: InMemoryBroker) -> None:
    await broker.send([msg("once")])
    async with broker.receiver() as receiver:
        got = await receive_one(receiver)
        await receiver.complete(got)
        with pytest.raises(MessageLockLost):
            await receiver.complete(got)
        with pytest.raises(MessageLockLost):
            await receiver.renew_lock(got)


async def test_expired_lock_counts_toward_max_delivery(broker: InMemoryBroker) -> None:
    broker = InMemoryBroker(lock_duration=0.05, max_delivery_count=2)
    await broker.send([msg("stuck")])
    async with broker.receiver() as receiver:
        await receive_one(receiver)
        await asyncio.sleep(0.1)
        second = await receive_one(receiver)
        assert second.delivery_count == 1
        await asyncio.sleep(0.1)
        assert await receiver.receive(1, 0.1) == []
    (dead,) = broker.dead_letters()
    assert dead.dead_letter_reason == "MaxDeliveryCountExceeded"
    assert dead.delivery_count == 2


async def test_size_limit_is_configurable() -> None:
    broker = InMemoryBroker(max_message_size=2048)
    assert broker.max_message_size == 2048
    with pytest.raises(BrokerMessageSizeExceeded):
        await broker.send([msg("ok"), msg("big", body=b"x" * 2048)])
    # A refused batch sends nothing at all.
    assert broker.counts().active == 0
    assert broker.send_calls == 0


async def test_closed_broker_refuses_operations() -> None:
    broker = InMemoryBroker()
    receiver = broker.receiver()
    await broker.close()
    with pytest.raises(BrokerError):
        await broker.send([msg("late")])
    with pytest.raises(BrokerError):
        await receiver.receive(1, 0)
    with pytest.raises(BrokerError):
        broker.receiver()


async def test_closed_receiver_refuses_to_receive(broker: InMemoryBroker) -> None:
    receiver = broker.receiver()
    await receiver.close()
    with pytest.raises(BrokerError):
        await receiver.receive(1, 0)


@pytest.mark.parametrize(
    ("options", "problem"),
    [({"lock_duration": 0}, "lock_duration"), ({"max_delivery_count": 0}, "max_delivery_count")],
)
def test_invalid_queue_settings_are_rejected(options: dict[str, float], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        InMemoryBroker(**options)  # type: ignore[arg-type]

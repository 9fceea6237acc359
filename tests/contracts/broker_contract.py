"""The Broker contract: Service Bus queue semantics every broker must keep.

Subclass :class:`BrokerContract` in a test module and provide these fixtures:

- ``broker``: a :class:`boilermaker.broker.Broker` on a fresh, empty queue
  (closed by the fixture afterwards);
- ``broker_lock_duration``: the queue's lock duration in seconds (float),
  short enough to wait out (a second or a few);
- ``broker_max_delivery_count``: the queue's max delivery count;
- ``broker_duplicate_detection`` (optional, default False): True when the
  queue drops repeated message ids within its duplicate detection window.

Timing assertions are only as tight as the semantics need: waits are polls
with generous deadlines, and "not delivered" is checked over a bounded window.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from boilermaker.broker import (
    Broker,
    BrokerMessageSizeExceeded,
    MessageLockLost,
    OutgoingMessage,
    PropertyValue,
    ReceivedMessage,
    ReceiveMode,
    Receiver,
    SubQueue,
)

#: Longest any single wait for a message may take before the test fails.
DEADLINE = 15.0


def _message(
    body: bytes | str = b"{}",
    message_id: str | None = None,
    *,
    scheduled_enqueue_time: datetime | None = None,
    application_properties: dict[str, PropertyValue] | None = None,
    content_type: str | None = "application/json",
    correlation_id: str | None = None,
    subject: str | None = None,
) -> OutgoingMessage:
    return OutgoingMessage(
        body=body.encode() if isinstance(body, str) else body,
        message_id=message_id or str(uuid.uuid4()),
        scheduled_enqueue_time=scheduled_enqueue_time,
        application_properties=application_properties or {},
        content_type=content_type,
        correlation_id=correlation_id,
        subject=subject,
    )


async def receive_n(
    receiver: Receiver, count: int, timeout: float = DEADLINE
) -> list[ReceivedMessage]:
    """Receive until ``count`` messages have arrived; fail if they do not within ``timeout``."""
    got: list[ReceivedMessage] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"received {len(got)} of {count} messages within {timeout}s")
        got.extend(await receiver.receive(count - len(got), min(remaining, 1.0)))
    return got


async def receive_one(receiver: Receiver, timeout: float = DEADLINE) -> ReceivedMessage:
    """The next message; fail if none arrives within ``timeout``."""
    (message,) = await receive_n(receiver, 1, timeout)
    return message


async def assert_nothing_within(receiver: Receiver, seconds: float) -> None:
    """Fail if any message is handed out during the next ``seconds``."""
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        got = await receiver.receive(10, remaining)
        assert got == [], f"unexpected messages: {[m.message_id for m in got]}"


async def warm_up(broker: Broker, receiver: Receiver) -> None:
    """Pass one message through, so connection set-up does not eat into a timed test."""
    message = _message(b"warm-up")
    await broker.send([message])
    got = await receive_one(receiver)
    assert got.message_id == message.message_id
    await receiver.complete(got)


class BrokerContract:
    """Queue semantics shared by the in-memory broker and the Service Bus adapter."""

    @pytest.fixture
    def broker_duplicate_detection(self) -> bool:
        return False

    # -- sending and receiving -------------------------------------------------------

    async def test_send_receive_complete(self, broker: Broker) -> None:
        sent = _message(b'{"hello": "world"}')
        await broker.send([sent])
        async with broker.receiver() as receiver:
            got = await receive_one(receiver)
            assert got.body == sent.body
            assert got.message_id == sent.message_id
            assert got.delivery_count == 0
            assert got.lock_token is not None
            await receiver.complete(got)
            await assert_nothing_within(receiver, 0.3)
            assert await receiver.peek(10) == []

    async def test_batch_send_of_many_messages_in_one_call(self, broker: Broker) -> None:
        messages = [_message(f'{{"n": {i}}}') for i in range(100)]
        numbers = await broker.send(messages)
        assert len(numbers) == len(messages)
        async with broker.receiver() as receiver:
            got = await receive_n(receiver, len(messages))
            assert sorted(m.message_id for m in got) == sorted(m.message_id for m in messages)
            by_id = {m.message_id: m.body for m in messages}
            assert all(m.body == by_id[m.message_id] for m in got)
            for message in got:
                await receiver.complete(message)
            await assert_nothing_within(receiver, 0.3)

    async def test_sequence_numbers_increase_in_send_order(self, broker: Broker) -> None:
        singles = [_message() for _ in range(3)]
        returned: list[int | None] = []
        for message in singles:
            returned.extend(await broker.send([message]))
        batch = [_message() for _ in range(3)]
        returned.extend(await broker.send(batch))
        order = [m.message_id for m in singles + batch]
        async with broker.receiver() as receiver:
            got = await receive_n(receiver, len(order))
            seq_by_id = {m.message_id: m.sequence_number for m in got}
            numbers = [seq_by_id[i] for i in order]
            assert numbers == sorted(numbers)
            assert len(set(numbers)) == len(numbers)
            for reported, actual in zip(returned, numbers, strict=True):
                assert reported is None or reported == actual
            for message in got:
                await receiver.complete(message)

    async def test_properties_message_id_and_content_type_round_trip(self, broker: Broker) -> None:
        properties = {"text": "héllo ✓", "number": 7, "ratio": 1.5, "flag": True}
        body = "ünïcode ✓ body".encode() + b"\x00\xff\x01"
        sent = _message(
            body,
            message_id="msg-roundtrip-1",
            application_properties=properties,
            content_type="application/x-boilermaker-test",
            correlation_id="corr-42",
            subject="subject-7",
        )
        await broker.send([sent])
        async with broker.receiver() as receiver:
            got = await receive_one(receiver)
            await receiver.complete(got)
        assert got.body == body
        assert got.message_id == "msg-roundtrip-1"
        assert got.content_type == "application/x-boilermaker-test"
        assert got.correlation_id == "corr-42"
        assert got.subject == "subject-7"
        for key, value in properties.items():
            assert got.application_properties[key] == value
            assert type(got.application_properties[key]) is type(value)
        assert got.enqueued_time is not None

    async def test_oversize_message_is_refused(self, broker: Broker) -> None:
        big = _message(b"x" * broker.max_message_size)
        with pytest.raises(BrokerMessageSizeExceeded):
            await broker.send([big])
        small = _message(b"small")
        await broker.send([small])
        async with broker.receiver() as receiver:
            got = await receive_one(receiver)
            assert got.message_id == small.message_id
            await receiver.complete(got)
            await assert_nothing_within(receiver, 0.3)

    # -- scheduling ---------------------------------------------------------------------

    async def test_scheduled_message_is_invisible_until_its_time(self, broker: Broker) -> None:
        async with broker.receiver() as receiver:
            await warm_up(broker, receiver)
            when = datetime.now(UTC) + timedelta(seconds=1.5)
            sent = _message(b"later", scheduled_enqueue_time=when)
            (seq,) = await broker.send([sent])
            assert isinstance(seq, int)
            early = (when - datetime.now(UTC)).total_seconds() - 0.5
            assert early > 0, "sending took too long to check the message early"
            await assert_nothing_within(receiver, early)
            got = await receive_one(receiver)
            assert got.message_id == sent.message_id
            assert got.sequence_number == seq
            assert got.body == b"later"
            assert got.scheduled_enqueue_time is not None
            assert abs((got.scheduled_enqueue_time - when).total_seconds()) < 1.0
            await receiver.complete(got)

    async def test_cancel_scheduled(self, broker: Broker) -> None:
        async with broker.receiver() as receiver:
            await warm_up(broker, receiver)
            when = datetime.now(UTC) + timedelta(seconds=1)
            cancelled = _message(b"cancelled", scheduled_enqueue_time=when)
            kept = _message(b"kept", scheduled_enqueue_time=when)
            seq_cancelled, seq_kept = await broker.send([cancelled, kept])
            assert isinstance(seq_cancelled, int)
            assert isinstance(seq_kept, int)
            await broker.cancel_scheduled([seq_cancelled])
            # The kept message, due at the same time, proves the due time has passed.
            got = await receive_one(receiver)
            assert got.message_id == kept.message_id
            await receiver.complete(got)
            await assert_nothing_within(receiver, 0.3)

    # -- settlement -------------------------------------------------------------------

    async def test_abandon_redelivers_with_delivery_count_plus_one(self, broker: Broker) -> None:
        sent = _message(b"again")
        await broker.send([sent])
        async with broker.receiver() as receiver:
            first = await receive_one(receiver)
            assert first.delivery_count == 0
            await receiver.abandon(first)
            second = await receive_one(receiver)
            assert second.message_id == sent.message_id
            assert second.sequence_number == first.sequence_number
            assert second.delivery_count == first.delivery_count + 1
            assert second.body == b"again"
            await receiver.complete(second)

    async def test_dead_letter_is_readable_with_reason_and_description(
        self, broker: Broker
    ) -> None:
        sent = _message(b"poison", application_properties={"origin": "test"})
        await broker.send([sent])
        async with broker.receiver() as receiver:
            got = await receive_one(receiver)
            await receiver.dead_letter(got, "TaskFailed", "the task raised ValueError('x')")
            await assert_nothing_within(receiver, 0.3)
        async with broker.receiver(sub_queue=SubQueue.DeadLetter) as dlq:
            dead = await receive_one(dlq)
            assert dead.message_id == sent.message_id
            assert dead.body == b"poison"
            assert dead.dead_letter_reason == "TaskFailed"
            assert dead.dead_letter_description == "the task raised ValueError('x')"
            assert dead.application_properties["origin"] == "test"
            await dlq.complete(dead)
            await assert_nothing_within(dlq, 0.3)

    async def test_max_delivery_count_moves_message_to_dead_letter(
        self, broker: Broker, broker_max_delivery_count: int
    ) -> None:
        sent = _message(b"flaky")
        await broker.send([sent])
        async with broker.receiver() as receiver:
            for attempt in range(broker_max_delivery_count):
                got = await receive_one(receiver)
                assert got.message_id == sent.message_id
                assert got.delivery_count == attempt
                await receiver.abandon(got)
            await assert_nothing_within(receiver, 0.3)
        async with broker.receiver(sub_queue=SubQueue.DeadLetter) as dlq:
            dead = await receive_one(dlq)
            assert dead.message_id == sent.message_id
            assert dead.dead_letter_reason == "MaxDeliveryCountExceeded"
            await dlq.complete(dead)

    async def test_lock_expiry_redelivers_and_stale_settlement_loses_the_lock(
        self, broker: Broker, broker_lock_duration: float
    ) -> None:
        sent = _message(b"slow")
        await broker.send([sent])
        async with broker.receiver() as receiver, broker.receiver() as other:
            first = await receive_one(receiver)
            assert first.locked_until is not None
            # While locked, nobody else gets it.
            await assert_nothing_within(other, min(0.3, broker_lock_duration / 3))
            again = await receive_one(other, timeout=broker_lock_duration * 3 + DEADLINE)
            assert again.message_id == sent.message_id
            assert again.delivery_count == first.delivery_count + 1
            with pytest.raises(MessageLockLost):
                await receiver.complete(first)
            await other.complete(again)

    async def test_renew_lock_extends_past_the_original_expiry(
        self, broker: Broker, broker_lock_duration: float
    ) -> None:
        sent = _message(b"long")
        await broker.send([sent])
        async with broker.receiver() as receiver, broker.receiver() as other:
            got = await receive_one(receiver)
            original = got.locked_until
            assert original is not None
            await asyncio.sleep(broker_lock_duration * 0.6)
            renewed = await receiver.renew_lock(got)
            assert renewed > original
            # Past the original expiry, still inside the renewed one.
            await assert_nothing_within(other, broker_lock_duration * 0.6)
            await receiver.complete(got)
            await assert_nothing_within(other, 0.3)

    async def test_peek_does_not_lock(self, broker: Broker) -> None:
        sent = [_message(f"peek-{i}") for i in range(3)]
        await broker.send(sent)
        async with broker.receiver() as receiver:
            deadline = time.monotonic() + DEADLINE
            peeked: list[ReceivedMessage] = []
            while len(peeked) < 3 and time.monotonic() < deadline:
                peeked = await receiver.peek(10)
                if len(peeked) < 3:
                    await asyncio.sleep(0.1)
            assert [m.message_id for m in peeked] == [m.message_id for m in sent]
            numbers = [m.sequence_number for m in peeked]
            assert numbers == sorted(numbers)
            # Without a sequence number, every peek starts from the head of the queue.
            again = await receiver.peek(10)
            assert [m.message_id for m in again] == [m.message_id for m in sent]
            tail = await receiver.peek(10, from_sequence_number=numbers[1])
            assert [m.message_id for m in tail] == [m.message_id for m in sent[1:]]
            assert [m.message_id for m in await receiver.peek(1)] == [sent[0].message_id]
            got = await receive_n(receiver, 3)
            assert sorted(m.message_id for m in got) == sorted(m.message_id for m in sent)
            assert all(m.delivery_count == 0 for m in got)
            for message in got:
                await receiver.complete(message)

    async def test_receive_and_delete_mode(self, broker: Broker) -> None:
        sent = [_message("rd-1"), _message("rd-2")]
        await broker.send(sent)
        async with broker.receiver(receive_mode=ReceiveMode.ReceiveAndDelete) as taker:
            got = await receive_n(taker, 2)
        assert sorted(m.message_id for m in got) == sorted(m.message_id for m in sent)
        async with broker.receiver() as receiver:
            await assert_nothing_within(receiver, 0.3)
            assert await receiver.peek(10) == []

    async def test_two_receivers_never_get_the_same_message(self, broker: Broker) -> None:
        sent = [_message(f"share-{i}") for i in range(20)]
        await broker.send(sent)
        seen: dict[str, list[str]] = {"a": [], "b": []}
        async with broker.receiver() as a, broker.receiver() as b:
            held: list[tuple[Receiver, ReceivedMessage]] = []
            deadline = time.monotonic() + DEADLINE
            while len(held) < len(sent):
                assert time.monotonic() < deadline, f"only {len(held)} of {len(sent)} arrived"
                for name, receiver in (("a", a), ("b", b)):
                    for message in await receiver.receive(3, 0.2):
                        seen[name].append(message.message_id)
                        held.append((receiver, message))
            assert not set(seen["a"]) & set(seen["b"])
            everything = seen["a"] + seen["b"]
            assert sorted(everything) == sorted(m.message_id for m in sent)
            assert seen["a"], "both receivers should have been served"
            assert seen["b"], "both receivers should have been served"
            for receiver, message in held:
                await receiver.complete(message)

    async def test_duplicate_message_ids_are_dropped(
        self, broker: Broker, broker_duplicate_detection: bool
    ) -> None:
        if not broker_duplicate_detection:
            pytest.skip("this queue has no duplicate detection")
        await broker.send([_message(b"one", message_id="dup-1")])
        await broker.send(
            [_message(b"two", message_id="dup-1"), _message(b"x", message_id="other")]
        )
        async with broker.receiver() as receiver:
            got = await receive_n(receiver, 2)
            assert sorted(m.message_id for m in got) == ["dup-1", "other"]
            assert next(m for m in got if m.message_id == "dup-1").body == b"one"
            for message in got:
                await receiver.complete(message)
            await assert_nothing_within(receiver, 0.3)

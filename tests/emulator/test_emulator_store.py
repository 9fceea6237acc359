"""Queue semantics of the store, driven directly with explicit clocks (no AMQP)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from proton import Message, timestamp

from boilermaker.emulator import QueueCounts, QueueSettings
from boilermaker.emulator.message import parse_message, render
from boilermaker.emulator.sqlite_store import SqliteJournal
from boilermaker.emulator.store import Namespace, Queue, Settle


def _message(body: str, **properties: object) -> bytes:
    return bytes(Message(body=body.encode(), **properties).encode())


def _queue(namespace: Namespace, **settings: Any) -> Queue:
    return namespace.create_queue(QueueSettings(name="q", **settings))


def test_lock_lapse_counts_a_delivery_and_dead_letters_at_the_limit() -> None:
    namespace = Namespace()
    queue = _queue(namespace, lock_duration=10, max_delivery_count=2)
    queue.enqueue(parse_message(_message("m")), now=0)
    first = queue.main.take(now=1, peek_lock=True)
    assert first is not None
    assert first.delivery_count == 0
    namespace.tick(now=11.5)
    second = queue.main.take(now=12, peek_lock=True)
    assert second is first
    assert second.delivery_count == 1
    assert second.lock_token is not None
    assert not queue.main.settle(second.lock_token, Settle.COMPLETE, now=22.5)
    assert queue.counts() == QueueCounts(0, 0, 0, 0, 1)
    dead = queue.dead_letters.take(now=23, peek_lock=False)
    assert dead is not None
    assert b"MaxDeliveryCountExceeded" in queue.dead_letters.payload(dead)


def test_renewed_lock_outlives_the_original_expiry() -> None:
    namespace = Namespace()
    queue = _queue(namespace, lock_duration=10)
    queue.enqueue(parse_message(_message("m")), now=0)
    message = queue.main.take(now=0, peek_lock=True)
    assert message is not None
    assert message.lock_token is not None
    assert queue.main.renew(message.lock_token, now=8) == 18
    namespace.tick(now=12)
    assert queue.counts().locked == 1
    assert queue.main.settle(message.lock_token, Settle.COMPLETE, now=17)
    assert queue.counts() == QueueCounts(0, 0, 0, 0, 0)


def test_duplicate_window_forgets_old_ids() -> None:
    namespace = Namespace()
    queue = _queue(namespace, requires_duplicate_detection=True, duplicate_detection_window=60)
    first = queue.enqueue(parse_message(_message("a", id="x")), now=0)
    assert queue.enqueue(parse_message(_message("b", id="x")), now=59) == first
    third = queue.enqueue(parse_message(_message("c", id="x")), now=61)
    assert third != first
    assert queue.counts().active == 2


def test_scheduled_message_activates_on_tick_and_keeps_its_sequence_number() -> None:
    namespace = Namespace()
    queue = _queue(namespace)
    raw = bytes(
        Message(
            body=b"later", annotations={"x-opt-scheduled-enqueue-time": timestamp(5_000)}
        ).encode()
    )
    seq = queue.enqueue(parse_message(raw), now=1)
    assert queue.counts().scheduled == 1
    assert queue.main.take(now=2, peek_lock=True) is None
    namespace.tick(now=5.01)
    message = queue.main.take(now=5.02, peek_lock=False)
    assert message is not None
    assert message.seq == seq
    assert not queue.cancel_scheduled([seq]), "an active message cannot be cancelled"


def test_delivery_encoding_carries_broker_annotations_and_zero_count() -> None:
    namespace = Namespace()
    queue = _queue(namespace)
    queue.enqueue(parse_message(_message("hello", id="m-1", properties={"k": "v"})), now=0)
    message = queue.main.take(now=1, peek_lock=True)
    assert message is not None
    decoded = Message()
    decoded.decode(render(message, queue.main.payload(message), locked_until_ms=61_000))
    assert decoded.body == b"hello"
    assert decoded.id == "m-1"
    assert decoded.properties == {"k": "v"}
    assert decoded.annotations["x-opt-sequence-number"] == 1
    assert decoded.annotations["x-opt-locked-until"] == 61_000
    assert decoded.delivery_count == 0


def test_file_store_keeps_bodies_out_of_memory(tmp_path: Path) -> None:
    journal = SqliteJournal(tmp_path / "s.sqlite")
    namespace = Namespace(journal)
    queue = _queue(namespace)
    queue.enqueue(parse_message(_message("on disk")), now=0)
    [stored] = queue.main.messages.values()
    assert stored.payload is None
    assert b"on disk" in queue.main.payload(stored)
    journal.close()

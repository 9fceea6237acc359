"""An in-memory broker with Service Bus queue semantics, for tests and local runs.

It behaves like a Service Bus queue where it matters to a worker: peek-lock
with a lock duration and expiry, delivery counts, max delivery count moving a
message to the dead-letter sub-queue (``MaxDeliveryCountExceeded``), scheduled
messages with sequence numbers and cancellation, duplicate detection by
message id within a window, receive-and-delete, and a size limit. It lives in
one event loop; it is not thread-safe.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self

from boilermaker.broker import (
    DEFAULT_MAX_MESSAGE_SIZE,
    BrokerError,
    BrokerMessageSizeExceeded,
    MessageLockLost,
    OutgoingMessage,
    ReceivedMessage,
    ReceiveMode,
    SubQueue,
)
from boilermaker.reasons import MAX_DELIVERY_COUNT_EXCEEDED


@dataclass(slots=True)
class _Stored:
    """A message as the queue holds it."""

    body: bytes
    message_id: str
    sequence_number: int
    enqueued_time: datetime
    application_properties: dict[str, Any]
    content_type: str | None
    correlation_id: str | None
    subject: str | None
    delivery_count: int = 0
    scheduled_for: float | None = None  # monotonic time it becomes active
    scheduled_enqueue_time: datetime | None = None
    dead_letter_reason: str | None = None
    dead_letter_description: str | None = None
    lock_token: str | None = None
    lock_expires: float = 0.0  # monotonic
    locked_until: datetime | None = None


@dataclass(slots=True)
class _SubQueueState:
    active: OrderedDict[int, _Stored] = field(default_factory=OrderedDict)
    locked: dict[str, _Stored] = field(default_factory=dict)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class QueueCounts:
    """How many messages are in each state."""

    active: int
    scheduled: int
    locked: int
    dead_lettered: int


class InMemoryBroker:
    """A Service Bus-like queue held in memory (see module docstring)."""

    def __init__(
        self,
        queue_name: str = "tasks",
        *,
        lock_duration: float = 60.0,
        max_delivery_count: int = 10,
        duplicate_detection_window: float | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        if lock_duration <= 0:
            raise ValueError("lock_duration must be positive")
        if max_delivery_count < 1:
            raise ValueError("max_delivery_count must be at least 1")
        self.queue_name = queue_name
        self.lock_duration = lock_duration
        self.max_delivery_count = max_delivery_count
        self.duplicate_detection_window = duplicate_detection_window
        self._max_message_size = max_message_size
        self._sequence = itertools.count(1)
        self._main = _SubQueueState()
        self._dlq = _SubQueueState()
        self._scheduled: dict[int, _Stored] = {}
        self._seen_ids: OrderedDict[str, float] = OrderedDict()
        self.sent_count = 0
        self.send_calls = 0
        self.duplicates_dropped = 0
        self.closed = False
        # Earliest monotonic time a schedule or a lock may come due; scans are
        # skipped before it so settling stays O(1) with many messages locked.
        self._next_check = float("inf")

    # -- Broker protocol --------------------------------------------------------------

    @property
    def max_message_size(self) -> int:
        """Largest message accepted, in bytes."""
        return self._max_message_size

    async def send(self, messages: Sequence[OutgoingMessage]) -> list[int | None]:
        """Enqueue or schedule messages; returns their sequence numbers (None if dropped)."""
        self._check_open()
        for message in messages:
            if message.size > self._max_message_size:
                raise BrokerMessageSizeExceeded(
                    f"message {message.message_id} is {message.size} bytes, over the "
                    f"queue's limit of {self._max_message_size}"
                )
        self.send_calls += 1
        now_mono = time.monotonic()
        now = datetime.now(UTC)
        result: list[int | None] = []
        for message in messages:
            if self._is_duplicate(message.message_id, now_mono):
                self.duplicates_dropped += 1
                result.append(None)
                continue
            seq = next(self._sequence)
            stored = _Stored(
                body=bytes(message.body),
                message_id=message.message_id,
                sequence_number=seq,
                enqueued_time=now,
                application_properties=dict(message.application_properties),
                content_type=message.content_type,
                correlation_id=message.correlation_id,
                subject=message.subject,
            )
            when = message.scheduled_enqueue_time
            if when is not None and when > now:
                stored.scheduled_enqueue_time = when
                stored.scheduled_for = now_mono + (when - now).total_seconds()
                self._scheduled[seq] = stored
                self._next_check = min(self._next_check, stored.scheduled_for)
            else:
                self._main.active[seq] = stored
            self.sent_count += 1
            result.append(seq)
        self._wake(self._main)
        return result

    async def cancel_scheduled(self, sequence_numbers: Sequence[int]) -> None:
        """Drop scheduled messages before they become active."""
        self._check_open()
        for seq in sequence_numbers:
            self._scheduled.pop(seq, None)

    def receiver(
        self,
        *,
        prefetch: int = 0,
        sub_queue: SubQueue = SubQueue.Main,
        receive_mode: ReceiveMode = ReceiveMode.PeekLock,
    ) -> InMemoryReceiver:
        """A receiver of the queue or its dead-letter sub-queue."""
        self._check_open()
        return InMemoryReceiver(self, sub_queue, receive_mode)

    async def close(self) -> None:
        """Mark closed; later operations raise."""
        self.closed = True

    # -- inspection for tests ----------------------------------------------------------

    def counts(self) -> QueueCounts:
        """Current message counts (after applying due schedules and lock expiries)."""
        self._maintain()
        return QueueCounts(
            active=len(self._main.active),
            scheduled=len(self._scheduled),
            locked=len(self._main.locked),
            dead_lettered=len(self._dlq.active) + len(self._dlq.locked),
        )

    def dead_letters(self) -> list[ReceivedMessage]:
        """Dead-lettered messages, oldest first, without locking them."""
        self._maintain()
        items = list(self._dlq.active.values()) + list(self._dlq.locked.values())
        items.sort(key=lambda m: m.sequence_number)
        return [self._view(m, None) for m in items]

    def scheduled_messages(self) -> list[ReceivedMessage]:
        """Scheduled messages not yet active, by sequence number."""
        self._maintain()
        return [self._view(m, None) for _, m in sorted(self._scheduled.items())]

    def is_idle(self) -> bool:
        """True when nothing is active, locked or scheduled in the main queue."""
        counts = self.counts()
        return counts.active == 0 and counts.locked == 0 and counts.scheduled == 0

    def next_due_in(self) -> float | None:
        """Seconds until the next scheduled message becomes active (None if none)."""
        if not self._scheduled:
            return None
        first = min(m.scheduled_for or 0.0 for m in self._scheduled.values())
        return max(0.0, first - time.monotonic())

    def purge(self) -> None:
        """Drop every message, scheduled and dead-lettered ones included."""
        self._main = _SubQueueState(waiters=self._main.waiters)
        self._dlq = _SubQueueState(waiters=self._dlq.waiters)
        self._scheduled.clear()

    # -- internals ------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed:
            raise BrokerError("the broker is closed")

    def _is_duplicate(self, message_id: str, now: float) -> bool:
        window = self.duplicate_detection_window
        if window is None:
            return False
        while self._seen_ids:
            _oldest, seen_at = next(iter(self._seen_ids.items()))
            if now - seen_at <= window:
                break
            self._seen_ids.popitem(last=False)
        if message_id in self._seen_ids:
            return True
        self._seen_ids[message_id] = now
        return False

    def _state(self, sub_queue: SubQueue) -> _SubQueueState:
        return self._dlq if sub_queue is SubQueue.DeadLetter else self._main

    def _maintain(self) -> float | None:
        """Activate due scheduled messages, expire locks; seconds until the next event."""
        now = time.monotonic()
        if now < self._next_check:
            return None if self._next_check == float("inf") else self._next_check - now
        next_event: float | None = None
        if self._scheduled:
            due = [s for s, m in self._scheduled.items() if (m.scheduled_for or 0) <= now]
            for seq in sorted(due):
                stored = self._scheduled.pop(seq)
                stored.scheduled_for = None
                self._main.active[seq] = stored
            if due:
                self._main.active = OrderedDict(sorted(self._main.active.items()))
                self._wake(self._main)
            for m in self._scheduled.values():
                wait = (m.scheduled_for or now) - now
                next_event = wait if next_event is None else min(next_event, wait)
        for state, is_dlq in ((self._main, False), (self._dlq, True)):
            expired = [t for t, m in state.locked.items() if m.lock_expires <= now]
            for token in expired:
                self._release(state, state.locked.pop(token), count=True, is_dlq=is_dlq)
            for m in state.locked.values():
                wait = m.lock_expires - now
                next_event = wait if next_event is None else min(next_event, wait)
        self._next_check = float("inf") if next_event is None else now + max(next_event, 0.0)
        return next_event

    def _release(
        self, state: _SubQueueState, stored: _Stored, *, count: bool, is_dlq: bool
    ) -> None:
        """Return a locked message to the queue, or dead-letter it past the delivery limit."""
        stored.lock_token = None
        stored.locked_until = None
        if count:
            stored.delivery_count += 1
        if not is_dlq and stored.delivery_count >= self.max_delivery_count:
            stored.dead_letter_reason = MAX_DELIVERY_COUNT_EXCEEDED
            stored.dead_letter_description = (
                f"Message could not be consumed after {self.max_delivery_count} delivery attempts."
            )
            stored.application_properties["DeadLetterReason"] = stored.dead_letter_reason
            stored.application_properties["DeadLetterErrorDescription"] = (
                stored.dead_letter_description
            )
            self._dlq.active[stored.sequence_number] = stored
            self._wake(self._dlq)
            return
        state.active[stored.sequence_number] = stored
        state.active = OrderedDict(sorted(state.active.items()))
        self._wake(state)

    def _wake(self, state: _SubQueueState) -> None:
        waiters, state.waiters = state.waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _view(self, stored: _Stored, lock_token: str | None) -> ReceivedMessage:
        return ReceivedMessage(
            body=stored.body,
            message_id=stored.message_id,
            sequence_number=stored.sequence_number,
            delivery_count=stored.delivery_count,
            enqueued_time=stored.enqueued_time,
            locked_until=stored.locked_until,
            lock_token=lock_token,
            application_properties=dict(stored.application_properties),
            content_type=stored.content_type,
            correlation_id=stored.correlation_id,
            subject=stored.subject,
            dead_letter_reason=stored.dead_letter_reason,
            dead_letter_description=stored.dead_letter_description,
            dead_letter_source=self.queue_name if stored.dead_letter_reason else None,
            scheduled_enqueue_time=stored.scheduled_enqueue_time,
            handle=stored,
        )

    async def _receive(
        self, sub_queue: SubQueue, mode: ReceiveMode, max_messages: int, max_wait: float
    ) -> list[ReceivedMessage]:
        self._check_open()
        if max_messages < 1:
            return []
        state = self._state(sub_queue)
        deadline = time.monotonic() + max(0.0, max_wait)
        while True:
            next_event = self._maintain()
            if state.active:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            wait = remaining if next_event is None else min(remaining, max(next_event, 0.001))
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            state.waiters.append(fut)
            try:
                await asyncio.wait_for(fut, wait)
            except TimeoutError:
                pass
            finally:
                if fut in state.waiters:
                    state.waiters.remove(fut)
        out: list[ReceivedMessage] = []
        now_mono = time.monotonic()
        now = datetime.now(UTC)
        while state.active and len(out) < max_messages:
            _, stored = state.active.popitem(last=False)
            if mode is ReceiveMode.ReceiveAndDelete:
                out.append(self._view(stored, None))
                continue
            token = str(uuid.uuid4())
            stored.lock_token = token
            stored.lock_expires = now_mono + self.lock_duration
            stored.locked_until = now + timedelta(seconds=self.lock_duration)
            state.locked[token] = stored
            self._next_check = min(self._next_check, stored.lock_expires)
            out.append(self._view(stored, token))
        return out

    def _take_lock(self, sub_queue: SubQueue, message: ReceivedMessage) -> _Stored:
        self._check_open()
        self._maintain()
        state = self._state(sub_queue)
        token = message.lock_token
        if token is None:
            raise BrokerError("message was received in receive-and-delete mode; nothing to settle")
        stored = state.locked.get(token)
        if stored is None:
            raise MessageLockLost(
                f"lock on message {message.message_id} (sequence {message.sequence_number}) "
                "expired or was already settled"
            )
        return stored

    async def _complete(self, sub_queue: SubQueue, message: ReceivedMessage) -> None:
        stored = self._take_lock(sub_queue, message)
        self._state(sub_queue).locked.pop(stored.lock_token or "")

    async def _abandon(self, sub_queue: SubQueue, message: ReceivedMessage) -> None:
        stored = self._take_lock(sub_queue, message)
        state = self._state(sub_queue)
        state.locked.pop(stored.lock_token or "")
        self._release(state, stored, count=True, is_dlq=sub_queue is SubQueue.DeadLetter)

    async def _dead_letter(
        self, sub_queue: SubQueue, message: ReceivedMessage, reason: str, description: str
    ) -> None:
        if sub_queue is SubQueue.DeadLetter:
            raise BrokerError("a dead-lettered message cannot be dead-lettered again")
        stored = self._take_lock(sub_queue, message)
        self._state(sub_queue).locked.pop(stored.lock_token or "")
        stored.lock_token = None
        stored.locked_until = None
        stored.dead_letter_reason = reason
        stored.dead_letter_description = description
        stored.application_properties["DeadLetterReason"] = reason
        stored.application_properties["DeadLetterErrorDescription"] = description
        self._dlq.active[stored.sequence_number] = stored
        self._wake(self._dlq)

    async def _renew(self, sub_queue: SubQueue, message: ReceivedMessage) -> datetime:
        stored = self._take_lock(sub_queue, message)
        stored.lock_expires = time.monotonic() + self.lock_duration
        stored.locked_until = datetime.now(UTC) + timedelta(seconds=self.lock_duration)
        message.locked_until = stored.locked_until
        return stored.locked_until

    async def _peek(
        self, sub_queue: SubQueue, max_messages: int, from_sequence_number: int | None
    ) -> list[ReceivedMessage]:
        self._check_open()
        self._maintain()
        state = self._state(sub_queue)
        items = list(state.active.values()) + list(state.locked.values())
        if sub_queue is SubQueue.Main:
            items += list(self._scheduled.values())
        start = from_sequence_number or 0
        items = sorted(
            (m for m in items if m.sequence_number >= start), key=lambda m: m.sequence_number
        )
        return [replace(self._view(m, None), handle=None) for m in items[:max_messages]]


class InMemoryReceiver:
    """A receiver on an :class:`InMemoryBroker` (see :class:`boilermaker.broker.Receiver`)."""

    def __init__(self, broker: InMemoryBroker, sub_queue: SubQueue, mode: ReceiveMode) -> None:
        self._broker = broker
        self.sub_queue = sub_queue
        self.receive_mode = mode
        self.closed = False

    async def receive(self, max_messages: int, max_wait: float) -> list[ReceivedMessage]:
        """Up to ``max_messages`` messages, waiting at most ``max_wait`` s for the first."""
        if self.closed:
            raise BrokerError("the receiver is closed")
        return await self._broker._receive(
            self.sub_queue, self.receive_mode, max_messages, max_wait
        )

    async def complete(self, message: ReceivedMessage) -> None:
        """Remove the message. Raises :class:`MessageLockLost` if its lock lapsed."""
        await self._broker._complete(self.sub_queue, message)

    async def abandon(self, message: ReceivedMessage) -> None:
        """Make the message available again at once (counts a delivery)."""
        await self._broker._abandon(self.sub_queue, message)

    async def dead_letter(self, message: ReceivedMessage, reason: str, description: str) -> None:
        """Move the message to the dead-letter sub-queue."""
        await self._broker._dead_letter(self.sub_queue, message, reason, description)

    async def renew_lock(self, message: ReceivedMessage) -> datetime:
        """Extend the lock by the queue's lock duration."""
        return await self._broker._renew(self.sub_queue, message)

    async def peek(
        self, max_messages: int, from_sequence_number: int | None = None
    ) -> list[ReceivedMessage]:
        """Messages in sequence order without locking them."""
        return await self._broker._peek(self.sub_queue, max_messages, from_sequence_number)

    async def close(self) -> None:
        """Stop receiving. Held locks lapse on their own, as on Service Bus."""
        self.closed = True

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

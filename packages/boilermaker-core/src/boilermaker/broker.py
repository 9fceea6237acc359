"""The Broker protocol: what Boilermaker needs from a queue, in Service Bus terms.

A broker sends messages (now or scheduled), and opens receivers that hand
out peek-locked messages to settle: complete, abandon, dead-letter, or keep
alive with a lock renewal. Core ships :class:`boilermaker.memory.InMemoryBroker`;
``boilermaker.service_bus.AzureServiceBus`` implements it on Azure.

Concurrency contract: the worker engine calls a receiver's methods from many
coroutines at once (one per running task, plus the lock renewer and the
receive loop). An adapter whose links cannot take concurrent operations must
funnel them itself (one coroutine per link, a settlement queue, batching).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

from boilermaker.exceptions import BoilermakerError

#: Service Bus Standard tier's maximum message size.
DEFAULT_MAX_MESSAGE_SIZE = 256 * 1024

#: Bytes kept free in every broker call for the broker's own framing and headers.
CALL_OVERHEAD = 1024


def fits(size: int, limit: int) -> bool:
    """The size rule: messages of ``size`` bytes in all (:attr:`OutgoingMessage.size`,
    summed for a batch) fit in one broker call whose limit is ``limit``."""
    return size + CALL_OVERHEAD <= limit


PropertyValue = str | int | float | bool | bytes | None


class SubQueue(enum.StrEnum):
    """Which part of a queue a receiver reads."""

    Main = "main"
    DeadLetter = "deadletter"


class ReceiveMode(enum.StrEnum):
    """Peek-lock (settle explicitly) or receive-and-delete (at-most-once)."""

    PeekLock = "peek_lock"
    ReceiveAndDelete = "receive_and_delete"


class BrokerError(BoilermakerError):
    """A broker operation failed. ``transient`` says whether trying again may help."""

    transient: bool = True


class MessageLockLost(BrokerError):
    """The message's lock expired or was taken over; it can no longer be settled."""

    transient = False


class BrokerAuthenticationError(BrokerError):
    """The broker refused our credentials; retrying will not help."""

    transient = False


class BrokerMessageSizeExceeded(BrokerError):
    """The broker refused a message for its size."""

    transient = False


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """A message to send; ``scheduled_enqueue_time`` makes it a scheduled message."""

    body: bytes
    message_id: str
    scheduled_enqueue_time: datetime | None = None
    application_properties: Mapping[str, PropertyValue] = field(default_factory=dict)
    content_type: str | None = "application/json"
    correlation_id: str | None = None
    subject: str | None = None
    _size: int = field(default=-1, init=False, repr=False, compare=False)

    @property
    def size(self) -> int:
        """An estimate of the encoded size: body, ids and properties (computed once)."""
        if self._size < 0:
            props = sum(
                len(k) + (len(v) if isinstance(v, str | bytes) else 8)
                for k, v in self.application_properties.items()
            )
            object.__setattr__(self, "_size", len(self.body) + len(self.message_id) + props + 64)
        return self._size


@dataclass(slots=True)
class ReceivedMessage:
    """A message handed out by a receiver, locked until ``locked_until`` (peek-lock).

    ``delivery_count`` is 0 on the first delivery. ``handle`` is the adapter's
    own message object, which core never touches. ``body_error`` is set by an
    adapter that received a message it could not convert (a body that is not
    bytes, say): it says why, and workers refuse the message as
    ``InvalidTaskFormat`` with that text instead of decoding ``body``.
    """

    body: bytes
    message_id: str
    sequence_number: int
    delivery_count: int
    enqueued_time: datetime | None = None
    locked_until: datetime | None = None
    lock_token: str | None = None
    application_properties: dict[str, Any] = field(default_factory=dict)
    content_type: str | None = None
    correlation_id: str | None = None
    subject: str | None = None
    dead_letter_reason: str | None = None
    dead_letter_description: str | None = None
    dead_letter_source: str | None = None
    scheduled_enqueue_time: datetime | None = None
    handle: Any = field(default=None, repr=False, compare=False)
    body_error: str | None = None


@runtime_checkable
class Receiver(Protocol):
    """A peek-lock (or receive-and-delete) consumer of one queue or sub-queue."""

    async def receive(self, max_messages: int, max_wait: float) -> list[ReceivedMessage]:
        """Up to ``max_messages`` messages, waiting at most ``max_wait`` s for the first."""
        ...

    async def complete(self, message: ReceivedMessage) -> None:
        """Remove the message from the queue. Raises :class:`MessageLockLost`."""
        ...

    async def abandon(self, message: ReceivedMessage) -> None:
        """Release the lock so the message is delivered again at once."""
        ...

    async def dead_letter(self, message: ReceivedMessage, reason: str, description: str) -> None:
        """Move the message to the dead-letter sub-queue with a reason and description."""
        ...

    async def renew_lock(self, message: ReceivedMessage) -> datetime:
        """Extend the message's lock; returns the new expiry. Raises :class:`MessageLockLost`."""
        ...

    async def peek(
        self, max_messages: int, from_sequence_number: int | None = None
    ) -> list[ReceivedMessage]:
        """Look at messages without locking them (for tools)."""
        ...

    async def close(self) -> None:
        """Stop receiving; unsettled messages become available again when their locks lapse."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


@runtime_checkable
class Broker(Protocol):
    """A queue to publish tasks to and receive them from.

    Optional capabilities are protocols of their own (:class:`IdleAware`,
    :class:`ControlMessages`, :class:`Configured`, and :class:`PrefetchBuffer`
    on a receiver); the worker checks for them once, when it is built (a
    receiver's, when it opens it).
    """

    @property
    def queue_name(self) -> str | None:
        """The queue's name (for logs and trace attributes), if it has one."""
        ...

    @property
    def max_message_size(self) -> int:
        """Largest message (bytes) the queue accepts."""
        ...

    async def send(self, messages: Sequence[OutgoingMessage]) -> list[int | None]:
        """Send messages, packing them into as few calls as sizes allow.

        Messages with ``scheduled_enqueue_time`` are scheduled. Returns one
        sequence number per message where the broker reports one (scheduled
        messages always; immediate sends on brokers that know them), else None.
        """
        ...

    async def cancel_scheduled(self, sequence_numbers: Sequence[int]) -> None:
        """Cancel scheduled messages that have not become active yet."""
        ...

    def receiver(
        self,
        *,
        prefetch: int = 0,
        sub_queue: SubQueue = SubQueue.Main,
        receive_mode: ReceiveMode = ReceiveMode.PeekLock,
    ) -> Receiver:
        """A receiver for the queue (or its dead-letter sub-queue); use ``async with``."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


@runtime_checkable
class PrefetchBuffer(Protocol):
    """A receiver that can hand out messages it has already prefetched at once,
    without a round trip or a wait; a worker takes them the moment a slot frees
    and calls :meth:`Receiver.receive` only when the buffer is empty."""

    def take_prefetched(self, max_messages: int) -> list[ReceivedMessage]:
        """Up to ``max_messages`` messages already in the buffer ([] when none)."""
        ...


@runtime_checkable
class IdleAware(Protocol):
    """A broker that can tell when nothing is waiting, scheduled messages included
    (``run_until_idle`` then also waits for retries)."""

    def is_idle(self) -> bool:
        """Whether no message is active, scheduled, locked or deferred."""
        ...


@runtime_checkable
class ControlMessages(Protocol):
    """A broker whose queues can hold messages of its own that are not tasks (such as
    the readiness probes 1.x connection pools publish); workers complete them silently."""

    def is_control_message(self, message: ReceivedMessage) -> bool:
        """Whether ``message`` is one of those."""
        ...


@runtime_checkable
class Configured(Protocol):
    """A broker built from a :class:`boilermaker.config.Config`; workers take their
    settings from the same one."""

    @property
    def config(self) -> Any:
        """The Config it was built from (None when built otherwise)."""
        ...

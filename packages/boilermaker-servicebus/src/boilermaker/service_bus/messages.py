"""Converting between core's message types and the SDK's.

Outgoing messages are built by core's :func:`boilermaker.servicebus_publisher.messages.to_sdk`,
the one message format every publisher sends; it is re-exported here.

Incoming messages are converted one at a time by :func:`from_sdk`, which never
raises: whatever in a message cannot be converted is reported in
:attr:`~boilermaker.broker.ReceivedMessage.body_error`, and the worker refuses
the message (dead-letters it as ``InvalidTaskFormat`` with that text) instead
of failing the whole receive.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from azure.servicebus import ServiceBusReceivedMessage
from azure.servicebus.amqp import AmqpMessageBodyType

from boilermaker.broker import ReceivedMessage
from boilermaker.servicebus_publisher.messages import to_sdk

__all__ = ["body_of", "from_sdk", "to_sdk"]

T = TypeVar("T")


class BodyNotConvertible(ValueError):
    """A message body that is not bytes a task can be read from."""


def _text(value: Any) -> Any:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def body_of(message: ServiceBusReceivedMessage) -> bytes:
    """The message body as bytes; raises :class:`BodyNotConvertible` naming its kind.

    Data sections are joined. An AMQP value body that is text or binary (as some
    AMQP clients send JSON) is taken as it is; any other value, and every AMQP
    sequence body, cannot hold a task.
    """
    kind = message.body_type
    body = message.body
    if kind == AmqpMessageBodyType.DATA:
        if isinstance(body, bytes | bytearray | memoryview):
            return bytes(body)
        return b"".join(bytes(part) for part in body)  # an iterator of sections
    if kind == AmqpMessageBodyType.VALUE:
        if isinstance(body, bytes | bytearray | memoryview):
            return bytes(body)
        if isinstance(body, str):
            return body.encode()
        raise BodyNotConvertible(f"an AMQP value body ({type(body).__name__})")
    if kind == AmqpMessageBodyType.SEQUENCE:
        sections = sum(1 for _ in body)
        raise BodyNotConvertible(f"an AMQP sequence body ({sections} section(s))")
    raise BodyNotConvertible(f"a body of unknown AMQP type {kind!r} ({type(body).__name__})")


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class _Reader:
    """Reads a message's fields one by one; a field that fails is recorded, not raised."""

    def __init__(self, message: ServiceBusReceivedMessage) -> None:
        self.message = message
        self.problems: list[str] = []

    def __call__(self, what: str, read: Callable[[ServiceBusReceivedMessage], T], default: T) -> T:
        try:
            return read(self.message)
        except Exception as exc:
            self.problems.append(f"its {what} cannot be read ({type(exc).__name__}: {exc})")
            return default


def _properties(message: ServiceBusReceivedMessage) -> dict[str, Any]:
    raw = message.application_properties or {}
    return {str(_text(k)): _text(v) for k, v in raw.items()}


def _body(message: ServiceBusReceivedMessage) -> bytes:
    try:
        return body_of(message)
    except BodyNotConvertible:
        raise
    except Exception as exc:
        raise BodyNotConvertible(f"a body that cannot be read ({type(exc).__name__})") from exc


def from_sdk(message: ServiceBusReceivedMessage) -> ReceivedMessage:
    """Core's view of a received SDK message; the SDK object rides along as ``handle``.

    Never raises. A body that is not bytes (an AMQP value or sequence body)
    is left empty; it, and any field that cannot be read, is described in
    ``body_error``, and the message can still be settled.
    """
    read = _Reader(message)
    body = b""
    try:
        body = _body(message)
    except BodyNotConvertible as exc:
        read.problems.insert(0, f"its body is {exc}, not data")
    lock_token = read("lock token", lambda m: m.lock_token, None)
    received = ReceivedMessage(
        body=body,
        message_id=read(
            "message id", lambda m: str(m.message_id) if m.message_id is not None else "", ""
        ),
        sequence_number=read("sequence number", lambda m: int(m.sequence_number or 0), 0),
        delivery_count=read("delivery count", lambda m: int(m.delivery_count or 0), 0),
        enqueued_time=read("enqueued time", lambda m: _utc(m.enqueued_time_utc), None),
        locked_until=read(
            "lock expiry", lambda m: _utc(m.locked_until_utc) if lock_token else None, None
        ),
        lock_token=str(lock_token) if lock_token else None,
        application_properties=read("application properties", _properties, {}),
        content_type=read("content type", lambda m: m.content_type, None),
        correlation_id=read("correlation id", lambda m: m.correlation_id, None),
        subject=read("subject", lambda m: m.subject, None),
        dead_letter_reason=read("dead-letter reason", lambda m: m.dead_letter_reason, None),
        dead_letter_description=read(
            "dead-letter description", lambda m: m.dead_letter_error_description, None
        ),
        dead_letter_source=read("dead-letter source", lambda m: m.dead_letter_source, None),
        scheduled_enqueue_time=read(
            "scheduled enqueue time", lambda m: _utc(m.scheduled_enqueue_time_utc), None
        ),
        handle=message,
    )
    if read.problems:
        received.body_error = "message cannot be read as a task: " + "; ".join(read.problems)
    return received

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
    try:
        fast = _plain(message)
    except Exception:
        fast = None
    return fast if fast is not None else _careful(message)


# Fields of the AMQP message the SDK's getters read (its own constants).
_SEQUENCE_NUMBER = b"x-opt-sequence-number"
_SCHEDULED = b"x-opt-scheduled-enqueue-time"
_DEAD_LETTER_SOURCE = b"x-opt-deadletter-source"
_DEAD_LETTER_REASON = b"DeadLetterReason"
_DEAD_LETTER_DESCRIPTION = b"DeadLetterErrorDescription"


def _utf8(value: Any) -> str | None:
    """A text field as the SDK's getters give it, for the two kinds a message carries."""
    if value is None or type(value) is str:
        return value
    if type(value) is bytes:
        return value.decode("utf-8")  # invalid UTF-8 raises: the careful path says why
    raise _NotPlain


def _from_properties(value: Any) -> str | None:
    """A dead-letter field: the SDK's getter gives None for anything but UTF-8 bytes."""
    return value.decode("utf-8") if type(value) is bytes else None


class _NotPlain(Exception):
    """A message the fast reading does not cover; the careful one reads it."""


def _plain(message: ServiceBusReceivedMessage) -> ReceivedMessage | None:
    """:func:`from_sdk` for the usual message (a data body, text properties), in one go.

    It reads the AMQP sections once where the SDK's getters would test and walk
    them once per field, and gives the same values; anything unusual (another
    body type, a field of another type, a getter that fails) returns None or
    raises, and :func:`_careful` reads the message instead.
    """
    raw = message.raw_amqp_message
    if raw.body_type != AmqpMessageBodyType.DATA:
        return None
    body = b"".join(message.body)
    props = raw.properties or None  # the SDK's getters test this (a list built) per field
    annotations = raw.annotations or None
    header = raw.header or None
    app = raw.application_properties or None
    if props is not None:
        message_id = _utf8(props.message_id)
        content_type = _utf8(props.content_type)
        correlation_id = _utf8(props.correlation_id)
        subject = _utf8(props.subject)
    else:
        message_id = content_type = correlation_id = subject = None
    lock_token = message.lock_token
    if annotations is not None:
        sequence_number = int(annotations.get(_SEQUENCE_NUMBER) or 0)
        scheduled = _utc(message.scheduled_enqueue_time_utc) if _SCHEDULED in annotations else None
        source = annotations.get(_DEAD_LETTER_SOURCE)
        dead_letter_source = _from_properties(source)
    else:
        sequence_number, scheduled, dead_letter_source = 0, None, None
    if app is not None:
        properties = {str(_text(k)): _text(v) for k, v in app.items()}
        reason = _from_properties(app.get(_DEAD_LETTER_REASON))
        description = _from_properties(app.get(_DEAD_LETTER_DESCRIPTION))
    else:
        properties, reason, description = {}, None, None
    return ReceivedMessage(
        body=body,
        message_id=message_id if message_id is not None else "",
        sequence_number=sequence_number,
        delivery_count=int((header.delivery_count if header is not None else None) or 0),
        enqueued_time=_utc(message.enqueued_time_utc),
        locked_until=_utc(message.locked_until_utc) if lock_token else None,
        lock_token=str(lock_token) if lock_token else None,
        application_properties=properties,
        content_type=content_type,
        correlation_id=correlation_id,
        subject=subject,
        dead_letter_reason=reason,
        dead_letter_description=description,
        dead_letter_source=dead_letter_source,
        scheduled_enqueue_time=scheduled,
        handle=message,
    )


def _careful(message: ServiceBusReceivedMessage) -> ReceivedMessage:
    """Each field read on its own; one that cannot be read is named in ``body_error``."""
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

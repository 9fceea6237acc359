"""Converting between core's message types and the SDK's.

Outgoing messages are built by core's :func:`boilermaker.servicebus_publisher.messages.to_sdk`,
the one message format every publisher sends; it is re-exported here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from azure.servicebus import ServiceBusReceivedMessage

from boilermaker.broker import ReceivedMessage
from boilermaker.servicebus_publisher.messages import to_sdk

__all__ = ["from_sdk", "to_sdk"]


def _text(value: Any) -> Any:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _body(message: ServiceBusReceivedMessage) -> bytes:
    body = message.body
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body)
    if isinstance(body, str):
        return body.encode()
    # A data body arrives as an iterator of sections.
    return b"".join(bytes(part) for part in body)


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def from_sdk(message: ServiceBusReceivedMessage) -> ReceivedMessage:
    """Core's view of a received SDK message; the SDK object rides along as ``handle``."""
    properties = {
        str(_text(k)): _text(v) for k, v in (message.application_properties or {}).items()
    }
    lock_token = message.lock_token
    return ReceivedMessage(
        body=_body(message),
        message_id=str(message.message_id) if message.message_id is not None else "",
        sequence_number=int(message.sequence_number or 0),
        delivery_count=int(message.delivery_count or 0),
        enqueued_time=_utc(message.enqueued_time_utc),
        locked_until=_utc(message.locked_until_utc) if lock_token else None,
        lock_token=str(lock_token) if lock_token else None,
        application_properties=properties,
        content_type=message.content_type,
        correlation_id=message.correlation_id,
        subject=message.subject,
        dead_letter_reason=message.dead_letter_reason,
        dead_letter_description=message.dead_letter_error_description,
        dead_letter_source=message.dead_letter_source,
        scheduled_enqueue_time=_utc(message.scheduled_enqueue_time_utc),
        handle=message,
    )

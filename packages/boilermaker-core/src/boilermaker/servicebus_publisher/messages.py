"""One message format for every publisher: core's outgoing messages as SDK messages.

Both ``ServiceBusPublisher`` and the worker transport's sender build what they
send with :func:`to_sdk`, group scheduled messages with
:func:`group_by_schedule_time` and size batches with :func:`batch_size_limit`,
so body, message id, scheduled time, content type and application properties
(``traceparent`` among them) are the same whichever of them sent a task.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from azure.servicebus import ServiceBusMessage

from boilermaker.broker import OutgoingMessage
from boilermaker.servicebus_publisher.sdk_internals import link_max_message_size

#: Bytes kept free in each batch for AMQP framing the SDK does not count.
BATCH_MARGIN = 1024


def to_sdk(message: OutgoingMessage) -> ServiceBusMessage:
    """An SDK message for an outgoing one (scheduled time included)."""
    return ServiceBusMessage(
        message.body,
        message_id=message.message_id,
        application_properties=dict(message.application_properties) or None,  # type: ignore[arg-type]
        content_type=message.content_type,
        correlation_id=message.correlation_id,
        subject=message.subject,
        scheduled_enqueue_time_utc=message.scheduled_enqueue_time,
    )


def batch_size_limit(sender: Any, max_size: int) -> int:
    """Batch size to ask an open sender for: the smaller of the link's maximum message
    size and ``max_size``, less a margin for framing.

    The link's maximum is read by :func:`.sdk_internals.link_max_message_size`; the
    public batch size the SDK would pick is the tier's, which can be larger than
    what the queue accepts. Without it, ``max_size`` alone bounds the batch.
    """
    link_max = link_max_message_size(sender) or max_size
    return max(1024, min(link_max, max_size) - BATCH_MARGIN)


def group_by_schedule_time(
    items: Sequence[tuple[int, OutgoingMessage]],
) -> list[tuple[datetime, list[tuple[int, OutgoingMessage]]]]:
    """Indexed scheduled messages grouped by enqueue time, in order of first appearance:
    one ``schedule_messages`` call per group."""
    groups: dict[datetime, list[tuple[int, OutgoingMessage]]] = {}
    for index, message in items:
        if message.scheduled_enqueue_time is None:
            raise ValueError(f"message {message.message_id!r} is not scheduled")
        groups.setdefault(message.scheduled_enqueue_time, []).append((index, message))
    return list(groups.items())

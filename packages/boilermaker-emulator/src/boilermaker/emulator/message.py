"""A queued message, how it is read from a transfer and written to a delivery.

A :class:`StoredMessage` keeps the sender's bare message (properties,
application properties, body) as received, plus the few header fields and
annotations the broker must echo. Broker-owned annotations (sequence number,
enqueued time, lock expiry, state, dead-letter source) are written fresh by
:func:`render` on each delivery.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from . import codec

__all__ = [
    "MessageState",
    "ParsedMessage",
    "StoredMessage",
    "parse_message",
    "render",
    "with_dead_letter_properties",
]

#: Annotations the broker writes itself; a sender's values for them are dropped.
_BROKER_ANNOTATIONS = frozenset(
    {
        "x-opt-sequence-number",
        "x-opt-enqueued-time",
        "x-opt-locked-until",
        "x-opt-message-state",
        "x-opt-scheduled-enqueue-time",
        "x-opt-deadletter-source",
        "x-opt-lock-token",
        "x-opt-enqueue-sequence-number",
    }
)


class MessageState(IntEnum):
    """Values of the ``x-opt-message-state`` annotation."""

    ACTIVE = 0
    DEFERRED = 1
    SCHEDULED = 2


@dataclass(slots=True)
class ParsedMessage:
    """What the broker needs to know about one message a client sent."""

    bare: bytes
    message_id: str | None
    durable: bool | None
    priority: int | None
    ttl_ms: int | None
    absolute_expiry_ms: int | None
    scheduled_ms: int | None
    annotations: bytes


def _message_id_key(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return "b:" + value.hex()
    if isinstance(value, uuid.UUID):
        return "u:" + str(value)
    if isinstance(value, int):
        return "i:" + str(value)
    return "s:" + str(value)


def parse_message(data: bytes) -> ParsedMessage:
    """Parse one encoded message; raise :class:`codec.CodecError` if it is malformed."""
    sections = codec.split_sections(data)
    durable = priority = ttl_ms = None
    absolute_expiry_ms = scheduled_ms = None
    message_id = None
    annotations = b""
    bare_start = len(data)
    for section in sections:
        code = section.code
        if code >= codec.PROPERTIES:
            bare_start = min(bare_start, section.start)
            if code != codec.PROPERTIES:
                break
            value, _ = codec.decode_value(data, codec.section_value_offset(data, section))
            fields = value if isinstance(value, list) else []
            if fields:
                message_id = _message_id_key(fields[0])
            if len(fields) > 8 and isinstance(fields[8], int) and fields[8] > 0:
                absolute_expiry_ms = int(fields[8])
        elif code == codec.HEADER:
            value, _ = codec.decode_value(data, codec.section_value_offset(data, section))
            fields = (value if isinstance(value, list) else []) + [None] * 3
            durable = fields[0] if isinstance(fields[0], bool) else None
            priority = fields[1] if isinstance(fields[1], int) else None
            ttl_ms = fields[2] if isinstance(fields[2], int) and fields[2] > 0 else None
        elif code == codec.MESSAGE_ANNOTATIONS:
            entries, _ = codec.map_entries(data, codec.section_value_offset(data, section))
            kept = []
            for key, raw in entries:
                if key == "x-opt-scheduled-enqueue-time":
                    when, _ = codec.decode_value(raw)
                    if isinstance(when, int) and when > 0:
                        scheduled_ms = int(when)
                elif isinstance(key, str) and key not in _BROKER_ANNOTATIONS:
                    kept.append(codec.encode_symbol(key) + raw)
            annotations = b"".join(kept)
    bare = bytes(data[bare_start:])
    if not any(s.code in codec.BODY_SECTIONS for s in sections):
        raise codec.CodecError("message has no body section")
    return ParsedMessage(
        bare=bare,
        message_id=message_id,
        durable=durable,
        priority=priority,
        ttl_ms=ttl_ms,
        absolute_expiry_ms=absolute_expiry_ms,
        scheduled_ms=scheduled_ms,
        annotations=annotations,
    )


class StoredMessage:
    """A message held by a queue or its dead-letter sub-queue.

    ``payload`` is ``None`` when the bare message lives only in the file
    store; the queue loads it on delivery.
    """

    __slots__ = (
        "annotations",
        "dead_letter_source",
        "delivery_count",
        "durable",
        "enqueued_ms",
        "expires_ms",
        "lock_token",
        "locked_until",
        "message_id",
        "payload",
        "priority",
        "scheduled_ms",
        "seq",
        "state",
        "ttl_ms",
    )

    def __init__(
        self,
        seq: int,
        parsed: ParsedMessage | None,
        enqueued_ms: int,
    ) -> None:
        self.seq = seq
        self.enqueued_ms = enqueued_ms
        self.delivery_count = 0
        self.state = MessageState.ACTIVE
        self.lock_token: uuid.UUID | None = None
        self.locked_until = 0.0
        self.dead_letter_source: str | None = None
        self.expires_ms: int | None = None
        self.payload: bytes | None = None
        self.message_id: str | None = None
        self.durable: bool | None = None
        self.priority: int | None = None
        self.ttl_ms: int | None = None
        self.scheduled_ms: int | None = None
        self.annotations = b""
        if parsed is not None:
            self.payload = parsed.bare
            self.message_id = parsed.message_id
            self.durable = parsed.durable
            self.priority = parsed.priority
            self.ttl_ms = parsed.ttl_ms
            self.scheduled_ms = parsed.scheduled_ms
            self.annotations = parsed.annotations

    def __repr__(self) -> str:
        return f"<StoredMessage seq={self.seq} state={self.state.name} count={self.delivery_count}>"


def render(
    message: StoredMessage,
    payload: bytes,
    *,
    locked_until_ms: int | None = None,
    sequence_number: bool = True,
) -> bytes:
    """Encode ``message`` as it is delivered: header, broker annotations, bare message."""
    entries: list[tuple[str, bytes]] = []
    if sequence_number:
        entries.append(("x-opt-sequence-number", codec.encode_long(message.seq)))
    entries.append(("x-opt-enqueued-time", codec.encode_timestamp(message.enqueued_ms)))
    if locked_until_ms is not None:
        entries.append(("x-opt-locked-until", codec.encode_timestamp(locked_until_ms)))
    if message.state != MessageState.ACTIVE:
        entries.append(("x-opt-message-state", codec.encode_int(int(message.state))))
    if message.scheduled_ms is not None:
        entries.append(
            ("x-opt-scheduled-enqueue-time", codec.encode_timestamp(message.scheduled_ms))
        )
    if message.dead_letter_source is not None:
        entries.append(("x-opt-deadletter-source", codec.encode_string(message.dead_letter_source)))
    header = codec.encode_header(
        message.durable, message.priority, message.ttl_ms, message.delivery_count
    )
    return header + codec.encode_message_annotations(entries, message.annotations) + payload


def with_dead_letter_properties(
    payload: bytes, reason: str | None, description: str | None
) -> bytes:
    """Return ``payload`` with the ``DeadLetterReason``/``DeadLetterErrorDescription`` set.

    The SDK reads a dead-lettered message's reason and description from its
    application properties; previous values are replaced.
    """
    sections = codec.split_sections(payload)
    updates: list[tuple[str, bytes]] = []
    if reason is not None:
        updates.append(("DeadLetterReason", codec.encode_string(reason)))
    if description is not None:
        updates.append(("DeadLetterErrorDescription", codec.encode_string(description)))
    names = {"DeadLetterReason", "DeadLetterErrorDescription"}
    for section in sections:
        if section.code == codec.APPLICATION_PROPERTIES:
            entries, _ = codec.map_entries(payload, codec.section_value_offset(payload, section))
            kept = [(str(k), v) for k, v in entries if k not in names]
            new = codec.encode_application_properties(kept + updates)
            return payload[: section.start] + new + payload[section.end :]
    insert_at = next((s.start for s in sections if s.code > codec.APPLICATION_PROPERTIES), 0)
    new = codec.encode_application_properties(updates)
    return payload[:insert_at] + new + payload[insert_at:]

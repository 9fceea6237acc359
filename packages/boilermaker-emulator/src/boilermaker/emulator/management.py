"""The ``$management`` operations the SDK uses, as pure functions over the store.

Each request arrives as an amqp-value map on ``<entity>/$management``; the
answer is a :class:`ManagementReply` that the AMQP layer encodes with
``statusCode``/``statusDescription``/``errorCondition`` application
properties. Wire types that need care (typed arrays, timestamps, uuids,
binaries) are produced with proton's types here so that the reply encodes
exactly as Service Bus does.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from proton import Array, Data, symbol, timestamp

from . import codec
from .message import parse_message, render
from .store import Entity, Settle

__all__ = ["ManagementReply", "handle_management"]

logger = logging.getLogger("boilermaker.emulator")

LOCK_LOST = "com.microsoft:message-lock-lost"
NOT_FOUND = "com.microsoft:message-not-found"
ARGUMENT_ERROR = "com.microsoft:argument-error"
SIZE_EXCEEDED = "amqp:link:message-size-exceeded"
NOT_IMPLEMENTED = "amqp:not-implemented"


@dataclass
class ManagementReply:
    """Status, description, optional error condition, and the amqp-value body."""

    status: int
    description: str = "OK"
    condition: str | None = None
    body: dict[str, Any] | None = field(default=None)

    @classmethod
    def error(cls, status: int, condition: str, description: str) -> ManagementReply:
        return cls(status=status, description=description, condition=condition)

    def properties(self) -> dict[str, Any]:
        props: dict[str, Any] = {
            "statusCode": self.status,
            "statusDescription": self.description,
        }
        if self.condition:
            props["errorCondition"] = symbol(self.condition)
        return props


def _elements(value: Any) -> list[Any]:
    if isinstance(value, Array):
        return list(value.elements)
    if isinstance(value, (list, tuple)):
        return list(value)
    raise TypeError(f"expected an array, got {type(value).__name__}")


def _to_uuid(value: Any) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, (bytes, memoryview)) and len(value) == 16:
        return uuid.UUID(bytes=bytes(value))
    return uuid.UUID(str(value))


def _key(body: dict[Any, Any], name: str) -> Any:
    if name in body:
        return body[name]
    raise KeyError(name)


def _schedule(entity: Entity, body: dict[Any, Any], now: float) -> ManagementReply:
    if entity.dead_letter:
        return ManagementReply.error(
            400, ARGUMENT_ERROR, "cannot schedule into a dead-letter queue"
        )
    queue = entity.queue
    sequence_numbers: list[int] = []
    for item in _elements(_key(body, "messages")):
        raw = bytes(item["message"])
        if len(raw) > queue.settings.max_message_size:
            return ManagementReply.error(
                413,
                SIZE_EXCEEDED,
                f"message of {len(raw)} bytes exceeds the queue's limit of "
                f"{queue.settings.max_message_size} bytes",
            )
        try:
            parsed = parse_message(raw)
        except codec.CodecError as exc:
            return ManagementReply.error(400, ARGUMENT_ERROR, f"undecodable message: {exc}")
        sequence_numbers.append(queue.enqueue(parsed, now))
    return ManagementReply(
        200, body={"sequence-numbers": Array(None, Data.LONG, *sequence_numbers)}
    )


def _cancel(entity: Entity, body: dict[Any, Any], now: float) -> ManagementReply:
    seqs = [int(s) for s in _elements(_key(body, "sequence-numbers"))]
    if entity.dead_letter or not entity.queue.cancel_scheduled(seqs):
        return ManagementReply.error(
            404, NOT_FOUND, "no scheduled message with that sequence number"
        )
    return ManagementReply(200, body={})


def _renew(entity: Entity, body: dict[Any, Any], now: float) -> ManagementReply:
    expirations = []
    for token in _elements(_key(body, "lock-tokens")):
        until = entity.renew(_to_uuid(token), now)
        if until is None:
            return ManagementReply.error(
                410, LOCK_LOST, "the lock on the message is lost (expired, settled or unknown)"
            )
        expirations.append(timestamp(int(until * 1000)))
    return ManagementReply(200, body={"expirations": Array(None, Data.TIMESTAMP, *expirations)})


def _peek(entity: Entity, body: dict[Any, Any], now: float) -> ManagementReply:
    from_seq = int(_key(body, "from-sequence-number"))
    count = int(_key(body, "message-count"))
    found = entity.peek(from_seq, count)
    if not found:
        return ManagementReply(204, "No messages")
    messages = [{"message": render(m, entity.payload(m))} for m in found]
    return ManagementReply(200, body={"messages": messages})


def _receive_deferred(entity: Entity, body: dict[Any, Any], now: float) -> ManagementReply:
    seqs = [int(s) for s in _elements(_key(body, "sequence-numbers"))]
    peek_lock = int(body.get("receiver-settle-mode", 1)) != 0
    found = entity.receive_deferred(seqs, now, peek_lock)
    if found is None:
        return ManagementReply.error(
            404, NOT_FOUND, "no deferred message with that sequence number"
        )
    messages = []
    for m in found:
        locked_until = int(m.locked_until * 1000) if peek_lock else None
        item: dict[str, Any] = {
            "message": render(m, entity.payload(m), locked_until_ms=locked_until)
        }
        if peek_lock and m.lock_token is not None:
            item["lock-token"] = m.lock_token
        messages.append(item)
    return ManagementReply(200, body={"messages": messages})


_DISPOSITIONS = {
    "completed": Settle.COMPLETE,
    "abandoned": Settle.ABANDON,
    "defered": Settle.DEFER,
    "deferred": Settle.DEFER,
    "suspended": Settle.DEAD_LETTER,
}


def _update_disposition(entity: Entity, body: dict[Any, Any], now: float) -> ManagementReply:
    status = str(_key(body, "disposition-status")).lower()
    how = _DISPOSITIONS.get(status)
    if how is None:
        return ManagementReply.error(400, ARGUMENT_ERROR, f"unknown disposition {status!r}")
    reason = body.get("deadletter-reason")
    description = body.get("deadletter-description")
    for token in _elements(_key(body, "lock-tokens")):
        if not entity.settle(_to_uuid(token), how, now, reason, description):
            return ManagementReply.error(
                410, LOCK_LOST, "the lock on the message is lost (expired, settled or unknown)"
            )
    return ManagementReply(200, body={})


_OPERATIONS: dict[str, Callable[[Entity, dict[Any, Any], float], ManagementReply]] = {
    "com.microsoft:schedule-message": _schedule,
    "com.microsoft:cancel-scheduled-message": _cancel,
    "com.microsoft:renew-lock": _renew,
    "com.microsoft:peek-message": _peek,
    "com.microsoft:receive-by-sequence-number": _receive_deferred,
    "com.microsoft:update-disposition": _update_disposition,
}


def handle_management(entity: Entity, operation: str, body: Any, now: float) -> ManagementReply:
    """Run one management operation against ``entity``; never raises for bad input."""
    handler = _OPERATIONS.get(operation)
    if handler is None:
        return ManagementReply.error(501, NOT_IMPLEMENTED, f"operation {operation!r} not supported")
    if not isinstance(body, dict):
        return ManagementReply.error(400, ARGUMENT_ERROR, "request body must be a map")
    try:
        return handler(entity, body, now)
    except KeyError as exc:
        return ManagementReply.error(400, ARGUMENT_ERROR, f"missing {exc.args[0]!r}")
    except (TypeError, ValueError) as exc:
        return ManagementReply.error(400, ARGUMENT_ERROR, str(exc))

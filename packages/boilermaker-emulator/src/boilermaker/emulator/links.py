"""The four kinds of link a Service Bus client opens, as seen from the broker.

- :class:`QueueInbox`: the client sends messages to a queue (single
  transfers or ``0x80013700`` batches); each transfer is accepted or rejected.
- :class:`QueueOutbox`: the client receives from a queue or its dead-letter
  sub-queue; the broker sends while the client gives credit, and echoes each
  settlement with the same outcome once it is applied.
- :class:`RequestInbox` / :class:`ReplyOutbox`: a request/response pair for
  ``$cbs`` (put-token) and ``<entity>/$management``.

All of this runs on the AMQP server's thread.
"""

from __future__ import annotations

import logging
import uuid
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from proton import Condition, Delivery, Link, Message, Receiver, Sender, symbol

from . import codec
from .batch import split_batch
from .message import ParsedMessage, parse_message, render
from .store import Entity, Settle

if TYPE_CHECKING:
    from .attach import Peer

__all__ = ["QueueInbox", "QueueOutbox", "RefusingInbox", "ReplyOutbox", "RequestInbox"]

logger = logging.getLogger("boilermaker.emulator")

#: Credit kept open on links the client sends on; topped up when half is used.
INBOX_CREDIT = 1000


def error_condition(name: str, description: str) -> Condition:
    """A delivery error as Service Bus sends it: condition, description and an info map.

    The SDK reads all three fields of a rejected outcome's error, so the info
    map (a tracking id, as Azure sends) must be present.
    """
    return Condition(
        symbol(name), description, {symbol("com.microsoft:tracking-id"): str(uuid.uuid4())}
    )


LOCK_LOST_DESCRIPTION = (
    "The lock supplied is invalid. Either the lock expired, or the message has already been"
    " removed from the queue."
)

ACCEPTED = Delivery.ACCEPTED
REJECTED = Delivery.REJECTED
MODIFIED = Delivery.MODIFIED
RELEASED = Delivery.RELEASED


def _new_delivery(link: Sender, tag: bytes) -> Delivery:
    # Proton accepts binary delivery tags; its type hint only names str.
    return link.delivery(tag)  # type: ignore[arg-type]


def _top_up(link: Receiver) -> None:
    if link.credit < INBOX_CREDIT // 2:
        link.flow(INBOX_CREDIT - link.credit)


def _read(link: Receiver, delivery: Delivery) -> bytes | None:
    """Collect a delivery's bytes; None while more frames are still to come."""
    chunk = link.recv(delivery.pending)
    parts: list[bytes] | None = getattr_safe(delivery, "chunks")
    if delivery.partial:
        if parts is None:
            delivery.chunks = parts = []
        if chunk:
            parts.append(bytes(chunk))
        return None
    if parts is None:
        return bytes(chunk) if chunk else b""
    if chunk:
        parts.append(bytes(chunk))
    return b"".join(parts)


def getattr_safe(delivery: Delivery, name: str) -> Any:
    try:
        return getattr(delivery, name)
    except AttributeError:
        return None


class QueueInbox:
    """A link on which the client sends messages to one queue."""

    def __init__(self, link: Receiver, entity: Entity) -> None:
        self.link = link
        self.entity = entity
        link.flow(INBOX_CREDIT)

    def on_delivery(self, delivery: Delivery, now: float) -> None:
        if not delivery.readable or delivery.aborted:
            if delivery.aborted:
                delivery.settle()
            return
        data = _read(self.link, delivery)
        if data is None:
            return
        self.link.advance()
        _top_up(self.link)
        outcome, condition = self._accept(data, now)
        if not delivery.settled:
            if condition is not None:
                delivery.local.condition = condition
            delivery.update(outcome)
        delivery.settle()

    def _accept(self, data: bytes, now: float) -> tuple[int, Condition | None]:
        queue = self.entity.queue
        if self.entity.dead_letter:
            return REJECTED, error_condition(
                "amqp:not-allowed", "Cannot send to a dead-letter queue."
            )
        try:
            sections = codec.split_sections(data)
            batch = split_batch(data, sections)
            raws = batch if batch is not None else [data]
            # A batch is measured as the SDK sizes it: its messages, not the envelope.
            size = sum(len(raw) for raw in raws)
            limit = queue.settings.max_message_size
            if size > limit:
                logger.info("queue %s: refused %d bytes (limit %d)", queue.name, size, limit)
                return REJECTED, error_condition(
                    "amqp:link:message-size-exceeded",
                    f"The received message (size {size} bytes) exceeds the limit "
                    f"({limit} bytes) currently allowed on the link.",
                )
            parsed: list[ParsedMessage] = [parse_message(raw) for raw in raws]
        except codec.CodecError as exc:
            logger.info("queue %s: refused an undecodable transfer: %s", queue.name, exc)
            return REJECTED, error_condition("amqp:decode-error", f"Undecodable message: {exc}")
        for message in parsed:
            queue.enqueue(message, now)
        return ACCEPTED, None


class RefusingInbox:
    """A link to an entity the client may not send to: every transfer is rejected.

    The SDK considers a sender open as soon as the attach is answered, so a
    refusal (unknown queue, missing token) is reported on the first transfer,
    where the SDK turns the condition into the matching error
    (``MessagingEntityNotFoundError``, ``ServiceBusAuthorizationError``), and
    the link is then closed with the same condition.
    """

    def __init__(self, link: Receiver, condition: str, description: str) -> None:
        self.link = link
        self.condition = condition
        self.description = description
        link.flow(1)

    def on_delivery(self, delivery: Delivery, now: float) -> None:
        if not delivery.readable or delivery.aborted or _read(self.link, delivery) is None:
            return
        self.link.advance()
        if not delivery.settled:
            delivery.local.condition = error_condition(self.condition, self.description)
            delivery.update(REJECTED)
        delivery.settle()
        self.link.condition = error_condition(self.condition, self.description)
        self.link.close()


class QueueOutbox:
    """A link on which the client receives from a queue or dead-letter sub-queue."""

    def __init__(self, link: Sender, entity: Entity, peek_lock: bool) -> None:
        self.link = link
        self.entity = entity
        self.peek_lock = peek_lock
        self.open = True

    @property
    def wants(self) -> bool:
        return self.open and self.link.credit > 0

    def send_one(self, now: float) -> bool:
        """Send the next ready message if there is one; False when none is ready."""
        message = self.entity.take(now, self.peek_lock)
        if message is None:
            return False
        entity = self.entity
        if self.peek_lock:
            assert message.lock_token is not None
            tag = message.lock_token.bytes_le
            payload = render(
                message, entity.payload(message), locked_until_ms=int(message.locked_until * 1000)
            )
        else:
            tag = uuid.uuid4().bytes_le
            payload = render(message, entity.payload(message))
        link = self.link
        delivery = _new_delivery(link, tag)
        link.stream(payload)
        link.advance()
        if self.peek_lock:
            delivery.lock_token = message.lock_token
        else:
            delivery.settle()
        return True

    def finish_drain(self) -> None:
        """Honour a drain request once nothing more is ready to send."""
        if self.link.drain_mode and self.link.credit > 0:
            self.link.drained()

    def on_disposition(self, delivery: Delivery, now: float) -> None:
        """Apply the client's settlement and echo the same outcome, settled."""
        token = getattr_safe(delivery, "lock_token")
        state = delivery.remote_state
        if token is None or state not in (ACCEPTED, REJECTED, MODIFIED, RELEASED):
            if delivery.settled:
                delivery.settle()
            return
        reason = description = None
        if state == ACCEPTED:
            how = Settle.COMPLETE
        elif state == REJECTED:
            how = Settle.DEAD_LETTER
            reason, description = _dead_letter_details(delivery.remote.condition)
        elif state == MODIFIED:
            how = Settle.DEFER if delivery.remote.undeliverable else Settle.ABANDON
        else:
            how = Settle.RELEASE
        applied = self.entity.settle(token, how, now, reason, description)
        delivery.lock_token = None
        if delivery.settled:
            delivery.settle()
            return
        if applied:
            if state == MODIFIED:
                delivery.local.failed = delivery.remote.failed
                delivery.local.undeliverable = delivery.remote.undeliverable
            delivery.update(state)
        else:
            delivery.local.condition = error_condition(
                "com.microsoft:message-lock-lost", LOCK_LOST_DESCRIPTION
            )
            delivery.update(REJECTED)
        delivery.settle()


def _dead_letter_details(condition: Condition | None) -> tuple[str | None, str | None]:
    if condition is None:
        return None, None
    reason = description = None
    info = condition.info if isinstance(condition.info, dict) else {}
    for key, value in info.items():
        if str(key) == "DeadLetterReason" and value is not None:
            reason = str(value)
        elif str(key) == "DeadLetterErrorDescription" and value is not None:
            description = str(value)
    if description is None and condition.description:
        description = condition.description
    return reason, description


class ReplyOutbox:
    """The broker's sending half of a request/response pair; queues replies until credit."""

    def __init__(self, link: Sender) -> None:
        self.link = link
        self.pending: deque[bytes] = deque()

    def send(self, encoded: bytes) -> None:
        self.pending.append(encoded)
        self.flush()

    def flush(self) -> None:
        link = self.link
        while self.pending and link.credit > 0:
            delivery = _new_delivery(link, uuid.uuid4().bytes)
            link.stream(self.pending.popleft())
            link.advance()
            delivery.settle()
        if not self.pending and link.drain_mode and link.credit > 0:
            link.drained()


#: Answers a decoded request: ``(request, now) -> reply message``.
Responder = Callable[[Message, float], Message]


class RequestInbox:
    """The broker's receiving half of a request/response pair (``$cbs``, ``$management``)."""

    def __init__(self, link: Receiver, peer: Peer, address: str, respond: Responder) -> None:
        self.link = link
        self.peer = peer
        self.address = address
        self.respond = respond
        link.flow(INBOX_CREDIT)

    def on_delivery(self, delivery: Delivery, now: float) -> None:
        if not delivery.readable or delivery.aborted:
            return
        data = _read(self.link, delivery)
        if data is None:
            return
        self.link.advance()
        _top_up(self.link)
        request = Message()
        try:
            request.decode(data)
        except Exception as exc:  # proton raises its own MessageException family
            logger.info("%s: undecodable request: %s", self.address, exc)
            if not delivery.settled:
                delivery.local.condition = error_condition("amqp:decode-error", str(exc))
                delivery.update(REJECTED)
            delivery.settle()
            return
        if not delivery.settled:
            delivery.update(ACCEPTED)
        delivery.settle()
        reply = self.respond(request, now)
        reply.correlation_id = request.id
        outbox = self.peer.reply_link(request.reply_to, self.address)
        if outbox is None:
            logger.warning(
                "%s: no reply link for %r; reply dropped", self.address, request.reply_to
            )
            return
        outbox.send(reply.encode())


def is_receive_and_delete(link: Link) -> bool:
    return link.remote_snd_settle_mode == Link.SND_SETTLED

"""Queue state and Service Bus message semantics, independent of AMQP.

Each :class:`Queue` has a main :class:`Entity` and a dead-letter
:class:`Entity` (``<queue>/$DeadLetterQueue``). An entity holds its messages
by sequence number; a message is active (ready, or locked by a peek-lock
receiver), scheduled (main entity only) or deferred.

Guarantees, matching Service Bus:

- delivery order is by sequence number among ready messages;
- a lock lasts the queue's lock duration; settling after it lapsed is
  refused (lock lost), and the lapse itself counts as a failed delivery;
- ``delivery_count`` is the number of earlier deliveries (0 on the first);
  a failed delivery that brings it to ``max_delivery_count`` moves the
  message to the dead-letter entity with reason ``MaxDeliveryCountExceeded``;
- a scheduled message has its sequence number from scheduling time;
- with duplicate detection on, a repeated ``message_id`` inside the window
  is accepted and dropped;
- expired messages are dropped or dead-lettered (``TTLExpiredException``).

Everything runs on one thread (the AMQP server's); nothing here locks.
Persistence goes through a :class:`~boilermaker.emulator.journal.Journal`.
"""

from __future__ import annotations

import heapq
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass
from enum import Enum

from .config import QueueSettings
from .journal import Journal, MemoryJournal
from .message import MessageState, ParsedMessage, StoredMessage, with_dead_letter_properties

__all__ = ["Entity", "Namespace", "Queue", "QueueCounts", "QueueNotFound", "Settle"]

logger = logging.getLogger("boilermaker.emulator")

DEAD_LETTER_SUFFIX = "/$deadletterqueue"
MAX_DELIVERY_REASON = "MaxDeliveryCountExceeded"
MAX_DELIVERY_DESCRIPTION = "Message could not be consumed after {n} delivery attempts."
TTL_REASON = "TTLExpiredException"
TTL_DESCRIPTION = "The message expired and was dead lettered."


class QueueNotFound(KeyError):
    """The named queue does not exist (and is not auto-created)."""


class Settle(Enum):
    """How a receiver settles a locked message."""

    COMPLETE = "complete"
    ABANDON = "abandon"
    DEFER = "defer"
    DEAD_LETTER = "dead-letter"
    RELEASE = "release"


@dataclass(frozen=True)
class QueueCounts:
    """Messages in a queue by state; ``dead_lettered`` counts its dead-letter sub-queue."""

    active: int
    scheduled: int
    locked: int
    deferred: int
    dead_lettered: int


def _now_ms(now: float) -> int:
    return int(now * 1000)


class Entity:
    """A queue's main entity or its dead-letter sub-queue."""

    def __init__(self, queue: Queue, dead_letter: bool) -> None:
        self.queue = queue
        self.dead_letter = dead_letter
        self.messages: dict[int, StoredMessage] = {}
        self.ready: list[int] = []
        self.locks: dict[uuid.UUID, StoredMessage] = {}

    @property
    def path(self) -> str:
        """The entity's address path, e.g. ``tasks`` or ``tasks/$DeadLetterQueue``."""
        return self.queue.name + ("/$DeadLetterQueue" if self.dead_letter else "")

    def __repr__(self) -> str:
        return f"<Entity {self.path}>"

    # -- internal helpers ---------------------------------------------------

    def _make_ready(self, message: StoredMessage) -> None:
        heapq.heappush(self.ready, message.seq)
        self.queue.namespace.dirty.add(self)

    def _unlock(self, message: StoredMessage) -> None:
        if message.lock_token is not None:
            self.locks.pop(message.lock_token, None)
        message.lock_token = None
        message.locked_until = 0.0

    def _remove(self, message: StoredMessage) -> None:
        self._unlock(message)
        del self.messages[message.seq]
        self.queue.namespace.journal.deleted(self.queue.name, message.seq)

    def _lock(self, message: StoredMessage, now: float) -> None:
        token = uuid.uuid4()
        message.lock_token = token
        message.locked_until = now + self.queue.settings.lock_duration
        self.locks[token] = message
        heapq.heappush(self.queue.namespace.lock_heap, (message.locked_until, token.int, self))

    def _failed_delivery(self, message: StoredMessage, now: float) -> None:
        """A delivery ended without settlement (abandon or lock lapse)."""
        self._unlock(message)
        message.delivery_count += 1
        if (
            not self.dead_letter
            and message.delivery_count >= self.queue.settings.max_delivery_count
        ):
            n = message.delivery_count
            self.queue.move_to_dead_letter(
                message, MAX_DELIVERY_REASON, MAX_DELIVERY_DESCRIPTION.format(n=n)
            )
            return
        self.queue.namespace.journal.updated(self.queue.name, self.dead_letter, message)
        if message.state == MessageState.ACTIVE:
            self._make_ready(message)

    def payload(self, message: StoredMessage) -> bytes:
        """The message's bare encoding, from memory or the file store."""
        if message.payload is not None:
            return message.payload
        return self.queue.namespace.journal.load_payload(self.queue.name, message.seq)

    def insert(self, message: StoredMessage) -> None:
        """Add a message (new, or moved here from the main entity)."""
        self.messages[message.seq] = message
        journal = self.queue.namespace.journal
        journal.inserted(self.queue.name, self.dead_letter, message)
        if journal.keeps_payloads:
            message.payload = None
        if message.state == MessageState.ACTIVE:
            self._make_ready(message)

    # -- receiving ----------------------------------------------------------

    def take(self, now: float, peek_lock: bool) -> StoredMessage | None:
        """Hand out the next ready message: locked (peek-lock) or removed (receive-and-delete)."""
        now_ms = _now_ms(now)
        ready = self.ready
        messages = self.messages
        while ready:
            seq = heapq.heappop(ready)
            message = messages.get(seq)
            if message is None or message.state != MessageState.ACTIVE or message.lock_token:
                continue
            if message.expires_ms is not None and message.expires_ms <= now_ms:
                self.queue.expire(message)
                continue
            if peek_lock:
                self._lock(message, now)
            else:
                message.payload = self.payload(message)
                self._remove(message)
            return message
        return None

    def lookup_lock(self, token: uuid.UUID, now: float) -> StoredMessage | None:
        """The message held under ``token``, or ``None`` if that lock is lost."""
        message = self.locks.get(token)
        if message is None:
            return None
        if message.locked_until <= now:
            self._failed_delivery(message, now)
            return None
        return message

    def settle(
        self,
        token: uuid.UUID,
        how: Settle,
        now: float,
        reason: str | None = None,
        description: str | None = None,
    ) -> bool:
        """Apply a settlement; return False when the lock is lost (expired or unknown)."""
        message = self.lookup_lock(token, now)
        if message is None:
            return False
        if how is Settle.COMPLETE:
            self._remove(message)
        elif how is Settle.ABANDON:
            self._failed_delivery(message, now)
        elif how is Settle.RELEASE:
            self._unlock(message)
            if message.state == MessageState.ACTIVE:
                self._make_ready(message)
        elif how is Settle.DEFER:
            self._unlock(message)
            message.delivery_count += 1
            message.state = MessageState.DEFERRED
            self.queue.namespace.journal.updated(self.queue.name, self.dead_letter, message)
        elif how is Settle.DEAD_LETTER:
            self._unlock(message)
            if self.dead_letter:
                self.queue.rewrite_dead_letter_reason(message, reason, description)
            else:
                self.queue.move_to_dead_letter(message, reason, description)
        return True

    def renew(self, token: uuid.UUID, now: float) -> float | None:
        """Extend a lock by the lock duration; return the new expiry, or None if lost."""
        message = self.lookup_lock(token, now)
        if message is None:
            return None
        message.locked_until = now + self.queue.settings.lock_duration
        heapq.heappush(self.queue.namespace.lock_heap, (message.locked_until, token.int, self))
        return message.locked_until

    def lock_expired(self, token_int: int, locked_until: float, now: float) -> None:
        message = self.locks.get(uuid.UUID(int=token_int))
        if message is not None and message.locked_until == locked_until:
            self._failed_delivery(message, now)

    def peek(self, from_seq: int, count: int) -> list[StoredMessage]:
        """Up to ``count`` messages with sequence number >= ``from_seq``, in order, any state."""
        if count <= 0:
            return []
        seqs = sorted(seq for seq in self.messages if seq >= from_seq)[:count]
        return [self.messages[seq] for seq in seqs]

    def receive_deferred(
        self, seqs: list[int], now: float, peek_lock: bool
    ) -> list[StoredMessage] | None:
        """Lock (or remove) the deferred messages ``seqs``; None if any is not deferred here."""
        found = [self.messages.get(seq) for seq in seqs]
        if any(m is None or m.state != MessageState.DEFERRED or m.lock_token for m in found):
            return None
        result = []
        for message in found:
            assert message is not None
            if peek_lock:
                self._lock(message, now)
            else:
                message.payload = self.payload(message)
                self._remove(message)
            result.append(message)
        return result

    def counts(self) -> tuple[int, int, int, int]:
        """(active, scheduled, locked, deferred) for this entity."""
        active = scheduled = deferred = 0
        for message in self.messages.values():
            if message.lock_token is not None:
                continue
            if message.state == MessageState.ACTIVE:
                active += 1
            elif message.state == MessageState.SCHEDULED:
                scheduled += 1
            else:
                deferred += 1
        return active, scheduled, len(self.locks), deferred

    def clear(self) -> None:
        self.messages.clear()
        self.ready.clear()
        self.locks.clear()


class Queue:
    """A queue: settings, its two entities, sequence numbers, schedule and duplicate history."""

    def __init__(self, namespace: Namespace, settings: QueueSettings, next_seq: int = 1) -> None:
        self.namespace = namespace
        self.settings = settings
        self.main = Entity(self, dead_letter=False)
        self.dead_letters = Entity(self, dead_letter=True)
        self.next_seq = next_seq
        self.schedule: list[tuple[int, int]] = []
        self.expiries: list[tuple[int, int]] = []
        self.seen_ids: dict[str, tuple[float, int]] = {}
        self.seen_order: deque[tuple[float, str]] = deque()

    @property
    def name(self) -> str:
        return self.settings.name

    def _duplicate_of(self, message_id: str | None, now: float) -> int | None:
        """The sequence number of an earlier message with this id inside the window."""
        if not self.settings.requires_duplicate_detection or message_id is None:
            return None
        horizon = now - self.settings.duplicate_detection_window
        order = self.seen_order
        seen = self.seen_ids
        while order and order[0][0] < horizon:
            seen_at, old_id = order.popleft()
            if old_id in seen and seen[old_id][0] == seen_at:
                del seen[old_id]
        earlier = seen.get(message_id)
        return None if earlier is None else earlier[1]

    def _remember_id(self, message_id: str | None, seq: int, now: float) -> None:
        if self.settings.requires_duplicate_detection and message_id is not None:
            self.seen_ids[message_id] = (now, seq)
            self.seen_order.append((now, message_id))

    def _expiry_for(self, message: StoredMessage, from_ms: int) -> int | None:
        ttls = [message.ttl_ms] if message.ttl_ms else []
        if self.settings.default_ttl is not None:
            ttls.append(int(self.settings.default_ttl * 1000))
        return from_ms + min(ttls) if ttls else None

    def enqueue(self, parsed: ParsedMessage, now: float) -> int:
        """Accept a sent message and return its sequence number.

        A duplicate (duplicate detection on, same ``message_id`` inside the
        window) is dropped and the original's sequence number returned. A
        message carrying ``x-opt-scheduled-enqueue-time`` in the future is
        scheduled rather than made active.
        """
        duplicate = self._duplicate_of(parsed.message_id, now)
        if duplicate is not None:
            logger.debug("queue %s: dropped duplicate of message %d", self.name, duplicate)
            return duplicate
        seq = self.next_seq
        self.next_seq += 1
        self._remember_id(parsed.message_id, seq, now)
        now_ms = _now_ms(now)
        message = StoredMessage(seq, parsed, now_ms)
        if message.scheduled_ms is not None and message.scheduled_ms > now_ms:
            message.state = MessageState.SCHEDULED
            heapq.heappush(self.schedule, (message.scheduled_ms, seq))
        else:
            self._set_expiry(message, now_ms, parsed.absolute_expiry_ms)
        self.main.insert(message)
        return seq

    def _set_expiry(self, message: StoredMessage, now_ms: int, absolute_ms: int | None) -> None:
        expires = self._expiry_for(message, now_ms)
        if absolute_ms is not None and message.ttl_ms is None:
            expires = absolute_ms if expires is None else min(expires, absolute_ms)
        message.expires_ms = expires
        if expires is not None:
            heapq.heappush(self.expiries, (expires, message.seq))

    def cancel_scheduled(self, seqs: list[int]) -> bool:
        """Remove scheduled messages; False (and nothing removed) if any is not scheduled."""
        found = [self.main.messages.get(seq) for seq in seqs]
        if any(m is None or m.state != MessageState.SCHEDULED for m in found):
            return False
        for message in found:
            assert message is not None
            self.main._remove(message)
        return True

    def move_to_dead_letter(
        self, message: StoredMessage, reason: str | None, description: str | None
    ) -> None:
        """Move a main-entity message to the dead-letter entity with reason and description."""
        payload = self.main.payload(message)
        del self.main.messages[message.seq]
        message.payload = with_dead_letter_properties(payload, reason, description)
        message.state = MessageState.ACTIVE
        message.dead_letter_source = self.name
        message.expires_ms = None
        self.namespace.journal.deleted(self.name, message.seq)
        self.dead_letters.insert(message)

    def rewrite_dead_letter_reason(
        self, message: StoredMessage, reason: str | None, description: str | None
    ) -> None:
        entity = self.dead_letters
        payload = entity.payload(message)
        del entity.messages[message.seq]
        self.namespace.journal.deleted(self.name, message.seq)
        message.payload = with_dead_letter_properties(payload, reason, description)
        entity.insert(message)

    def expire(self, message: StoredMessage) -> None:
        """A main-entity message outlived its time to live."""
        if self.settings.dead_letter_on_expiration:
            self.main._unlock(message)
            self.move_to_dead_letter(message, TTL_REASON, TTL_DESCRIPTION)
        else:
            self.main._remove(message)

    def tick(self, now: float) -> None:
        """Activate due scheduled messages and expire lapsed ones."""
        now_ms = _now_ms(now)
        messages = self.main.messages
        while self.schedule and self.schedule[0][0] <= now_ms:
            _, seq = heapq.heappop(self.schedule)
            message = messages.get(seq)
            if message is None or message.state != MessageState.SCHEDULED:
                continue
            message.state = MessageState.ACTIVE
            message.enqueued_ms = now_ms
            self._set_expiry(message, now_ms, None)
            self.namespace.journal.updated(self.name, False, message)
            self.main._make_ready(message)
        while self.expiries and self.expiries[0][0] <= now_ms:
            _, seq = heapq.heappop(self.expiries)
            message = messages.get(seq)
            if message is None or message.state != MessageState.ACTIVE or message.lock_token:
                continue
            if message.expires_ms is not None and message.expires_ms <= now_ms:
                self.expire(message)

    def counts(self) -> QueueCounts:
        active, scheduled, locked, deferred = self.main.counts()
        return QueueCounts(
            active=active,
            scheduled=scheduled,
            locked=locked,
            deferred=deferred,
            dead_lettered=len(self.dead_letters.messages),
        )

    def purge(self) -> None:
        """Drop every message of the queue and its dead-letter entity."""
        self.main.clear()
        self.dead_letters.clear()
        self.schedule.clear()
        self.expiries.clear()
        self.namespace.journal.purged(self.name)


class Namespace:
    """All queues of the emulator, the lock-expiry schedule and the journal."""

    def __init__(self, journal: Journal | None = None, auto_create: bool = True) -> None:
        self.journal: Journal = journal if journal is not None else MemoryJournal()
        self.auto_create = auto_create
        self.queues: dict[str, Queue] = {}
        self.lock_heap: list[tuple[float, int, Entity]] = []
        #: Entities that gained ready messages since the server last dispatched.
        self.dirty: set[Entity] = set()

    def restore(self, now: float | None = None) -> None:
        """Load queues and messages from the journal (file store); locks do not survive."""
        now = time.time() if now is None else now
        for settings, next_seq, messages in self.journal.load():
            queue = Queue(self, settings, next_seq)
            self.queues[settings.name.lower()] = queue
            for dead, message in messages:
                entity = queue.dead_letters if dead else queue.main
                entity.messages[message.seq] = message
                if message.state == MessageState.SCHEDULED and message.scheduled_ms is not None:
                    heapq.heappush(queue.schedule, (message.scheduled_ms, message.seq))
                elif message.state == MessageState.ACTIVE:
                    entity._make_ready(message)
                if not dead and message.expires_ms is not None:
                    heapq.heappush(queue.expiries, (message.expires_ms, message.seq))
        self.tick(now)

    def create_queue(self, settings: QueueSettings) -> Queue:
        """Create a queue, or update the settings of an existing one with that name."""
        existing = self.queues.get(settings.name.lower())
        if existing is not None:
            existing.settings = settings
            self.journal.queue_saved(settings, existing.next_seq)
            return existing
        queue = Queue(self, settings)
        self.queues[settings.name.lower()] = queue
        self.journal.queue_saved(settings, queue.next_seq)
        return queue

    def delete_queue(self, name: str) -> None:
        queue = self.queue(name, create=False)
        queue.purge()
        del self.queues[name.lower()]
        self.journal.queue_deleted(queue.name)

    def queue(self, name: str, create: bool | None = None) -> Queue:
        """Find a queue by (case-insensitive) name, creating it if allowed."""
        queue = self.queues.get(name.lower())
        if queue is None:
            if not (self.auto_create if create is None else create):
                raise QueueNotFound(name)
            queue = self.create_queue(QueueSettings(name=name))
        return queue

    def entity(self, path: str, create: bool | None = None) -> Entity:
        """Resolve ``<queue>`` or ``<queue>/$DeadLetterQueue`` (any case) to an entity."""
        if path.lower().endswith(DEAD_LETTER_SUFFIX):
            return self.queue(path[: -len(DEAD_LETTER_SUFFIX)], create).dead_letters
        return self.queue(path, create).main

    def tick(self, now: float) -> None:
        """Expire lapsed locks, activate scheduled messages, expire old ones."""
        heap = self.lock_heap
        while heap and heap[0][0] <= now:
            locked_until, token_int, entity = heapq.heappop(heap)
            entity.lock_expired(token_int, locked_until, now)
        for queue in self.queues.values():
            if queue.schedule or queue.expiries:
                queue.tick(now)

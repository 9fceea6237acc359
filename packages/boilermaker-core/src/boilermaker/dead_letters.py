"""Dead-letter tooling: list, replay and purge a queue's dead-letter sub-queue.

Works on any :class:`~boilermaker.broker.Broker` (``InMemoryBroker``,
``AzureServiceBus``), through the dead-letter sub-queue's receiver only.

- :meth:`DeadLetterQueue.list` **peeks**: it never locks a message, so it is
  safe beside running workers and other tools.
- :meth:`DeadLetterQueue.replay` and :meth:`DeadLetterQueue.purge` act on the
  messages a peek found matching (the same ones ``list`` shows with the same
  filters, so a dry run predicts the real run). They receive with peek-lock;
  a message is only completed after its copy was sent (replay), and anything
  not acted on goes back to the dead-letter queue. Messages that do not match
  but are received on the way stay locked until the pass ends, so one pass
  never sees a message twice, then are abandoned.

Nothing is lost, but replay is at-least-once: if the tool dies (or a lock
lapses) after sending a copy and before completing the original, the
original stays dead-lettered and a later replay sends it again, with the same
replay message id, so duplicate detection on the queue drops it.

Lineage rides in application properties of the copy (``boilermaker_original_*``,
``boilermaker_dead_letter_reason``, ``boilermaker_replay_count``,
``boilermaker_replayed_at``). The original id and sequence number are those of
the first dead-lettered message; a copy replayed again keeps them and counts up.

**Graph tasks.** A graph node whose message was dead-lettered has a finished
record (``Failure``, ``RetriesExhausted``, ``Deadlettered``) and dispatch has
already told its dependents. Resending its message as it is would only re-run
its continuation, never the task. So a graph task is replayed only when a
:class:`~boilermaker.graph_dispatch.GraphRuntime` is given
(``DeadLetterQueue(broker, graphs=app.graphs)``, the app having a results
store): its record is reset to ``Scheduled`` before the copy is sent, and the
node runs again. A node that had already succeeded is not reset (its copy
just repeats the continuation, as a redelivery would). Dependents that were
skipped because the node failed stay skipped: replay re-runs the node, it
does not resume the part of the graph that was given up. Without a graph
runtime, graph tasks are reported as skipped and stay in the dead-letter queue.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from boilermaker.broker import (
    Broker,
    BrokerError,
    MessageLockLost,
    OutgoingMessage,
    PropertyValue,
    ReceivedMessage,
    Receiver,
    SubQueue,
)
from boilermaker.envelope import decode_task, encode_task
from boilermaker.exceptions import InvalidTaskFormat
from boilermaker.graph_dispatch import GraphRuntime
from boilermaker.results import NodeRecord, node_blob
from boilermaker.retries import RetryAttempts
from boilermaker.task.status import TaskStatus
from boilermaker.worker.dead_letter import PROCESSING_ERROR, TASK_FAILED

__all__ = [
    "DEAD_LETTER_REASON",
    "ORIGINAL_MESSAGE_ID",
    "ORIGINAL_SEQUENCE_NUMBER",
    "REPLAYED_AT",
    "REPLAY_COUNT",
    "DeadLetter",
    "DeadLetterFilter",
    "DeadLetterQueue",
    "DecodedTask",
    "Lineage",
    "MessageOutcome",
    "PurgeReport",
    "ReplayReport",
]

#: Application property: message id of the first dead-lettered message.
ORIGINAL_MESSAGE_ID = "boilermaker_original_message_id"
#: Application property: sequence number of the first dead-lettered message.
ORIGINAL_SEQUENCE_NUMBER = "boilermaker_original_sequence_number"
#: Application property: dead-letter reason of the message the copy was made from.
DEAD_LETTER_REASON = "boilermaker_dead_letter_reason"
#: Application property: how many times this task's message has been replayed.
REPLAY_COUNT = "boilermaker_replay_count"
#: Application property: when the copy was sent (ISO 8601, UTC).
REPLAYED_AT = "boilermaker_replayed_at"

_LINEAGE_KEYS = frozenset(
    {ORIGINAL_MESSAGE_ID, ORIGINAL_SEQUENCE_NUMBER, DEAD_LETTER_REASON, REPLAY_COUNT, REPLAYED_AT}
)
#: Properties the broker writes when dead-lettering; a replayed copy does not carry them.
_BROKER_PROPERTIES = frozenset({"DeadLetterReason", "DeadLetterErrorDescription"})

#: Reasons the worker gives after running the task (so the envelope is one attempt behind).
_REASONS_AFTER_A_RUN = frozenset({TASK_FAILED, PROCESSING_ERROR})

#: Why a graph task is not replayed without a graph runtime.
GRAPH_NEEDS_RUNTIME = (
    "graph task: its node record is finished, so resending the message would only re-run "
    "its continuation; give a results store (DeadLetterQueue(broker, graphs=app.graphs)) "
    "to reset the node and run it again"
)

#: A lock with less than this many seconds left is renewed before the copy is sent.
LOCK_MARGIN = 10.0


# -- records --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DecodedTask:
    """What a dead-lettered message's envelope says about its task.

    ``attempts`` is the envelope's count: runs before the delivery that was
    dead-lettered (see :attr:`DeadLetter.attempts_made`).
    """

    function_name: str
    task_id: str
    graph_id: str | None
    attempts: int
    args: list[Any] = field(default_factory=list, repr=False)
    kwargs: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, slots=True)
class Lineage:
    """Where a replayed message came from (read from its application properties)."""

    original_message_id: str
    original_sequence_number: int | None
    dead_letter_reason: str | None
    replay_count: int
    replayed_at: datetime | None

    @classmethod
    def from_properties(cls, properties: Mapping[str, Any]) -> Lineage | None:
        """The lineage written by a previous replay, or None for a first-time message."""
        original = properties.get(ORIGINAL_MESSAGE_ID)
        if original is None:
            return None
        replayed_at = None
        raw_time = properties.get(REPLAYED_AT)
        if isinstance(raw_time, str):
            with contextlib.suppress(ValueError):
                replayed_at = datetime.fromisoformat(raw_time)
        reason = properties.get(DEAD_LETTER_REASON)
        return cls(
            original_message_id=str(original),
            original_sequence_number=_as_int(properties.get(ORIGINAL_SEQUENCE_NUMBER)),
            dead_letter_reason=str(reason) if reason is not None else None,
            replay_count=_as_int(properties.get(REPLAY_COUNT)) or 0,
            replayed_at=replayed_at,
        )


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str | float):
        with contextlib.suppress(ValueError):
            return int(value)
    return None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message in the dead-letter sub-queue, decoded as far as it can be.

    ``task`` is None when the body is not a task envelope; ``decode_error``
    then says why. ``reason`` and ``description`` are the broker's dead-letter
    fields (Boilermaker's taxonomy: :mod:`boilermaker.worker.dead_letter`).
    """

    sequence_number: int
    message_id: str
    reason: str | None
    description: str | None
    delivery_count: int
    enqueued_time: datetime | None
    task: DecodedTask | None
    lineage: Lineage | None
    decode_error: str | None = None
    dead_letter_source: str | None = None
    application_properties: Mapping[str, Any] = field(default_factory=dict, repr=False)
    body: bytes = field(default=b"", repr=False)

    @classmethod
    def from_message(cls, message: ReceivedMessage) -> DeadLetter:
        """Read a (peeked or received) dead-letter message."""
        props = message.application_properties or {}
        reason = message.dead_letter_reason or _str_or_none(props.get("DeadLetterReason"))
        description = message.dead_letter_description or _str_or_none(
            props.get("DeadLetterErrorDescription")
        )
        task: DecodedTask | None = None
        error: str | None = None
        try:
            decoded = decode_task(message.body)
        except InvalidTaskFormat as exc:
            error = str(exc)
        else:
            task = DecodedTask(
                function_name=decoded.function_name,
                task_id=str(decoded.task_id),
                graph_id=str(decoded.graph_id) if decoded.graph_id else None,
                attempts=decoded.attempts.attempts,
                args=decoded.args,
                kwargs=decoded.kwargs,
            )
        return cls(
            sequence_number=message.sequence_number,
            message_id=message.message_id,
            reason=reason,
            description=description,
            delivery_count=message.delivery_count,
            enqueued_time=message.enqueued_time,
            task=task,
            lineage=Lineage.from_properties(props),
            decode_error=error,
            dead_letter_source=message.dead_letter_source,
            application_properties=dict(props),
            body=bytes(message.body),
        )

    @property
    def function_name(self) -> str | None:
        """The task's function, if the body decoded."""
        return self.task.function_name if self.task else None

    @property
    def attempts_made(self) -> int | None:
        """How many times the task ran, counting the run that dead-lettered it.

        A message is dead-lettered as it was received, so its envelope counts
        only the runs before that delivery: the worker's reasons say whether
        one more run happened (``TaskFailed``, ``ProcessingError``) or not
        (``ExpectationFailed``, ``InvalidTaskFormat``). For reasons set by the
        broker (``MaxDeliveryCountExceeded``) it is a lower bound. None when
        the body did not decode.
        """
        if self.task is None:
            return None
        ran = self.reason in _REASONS_AFTER_A_RUN
        return self.task.attempts + (1 if ran else 0)

    def to_dict(self, *, include_body: bool = False) -> dict[str, Any]:
        """A JSON-ready dict (times in ISO 8601; the body as text or base64 if asked)."""
        doc: dict[str, Any] = {
            "sequence_number": self.sequence_number,
            "message_id": self.message_id,
            "reason": self.reason,
            "description": self.description,
            "delivery_count": self.delivery_count,
            "attempts_made": self.attempts_made,
            "enqueued_time": _iso(self.enqueued_time),
            "dead_letter_source": self.dead_letter_source,
            "task": None,
            "decode_error": self.decode_error,
            "lineage": None,
        }
        if self.task is not None:
            doc["task"] = {
                "function_name": self.task.function_name,
                "task_id": self.task.task_id,
                "graph_id": self.task.graph_id,
                "attempts": self.task.attempts,
                "args": self.task.args,
                "kwargs": self.task.kwargs,
            }
        if self.lineage is not None:
            doc["lineage"] = {
                "original_message_id": self.lineage.original_message_id,
                "original_sequence_number": self.lineage.original_sequence_number,
                "dead_letter_reason": self.lineage.dead_letter_reason,
                "replay_count": self.lineage.replay_count,
                "replayed_at": _iso(self.lineage.replayed_at),
            }
        if include_body:
            doc["application_properties"] = {
                k: _jsonable(v) for k, v in self.application_properties.items()
            }
            try:
                doc["body"] = self.body.decode("utf-8")
            except UnicodeDecodeError:
                doc["body_base64"] = base64.b64encode(self.body).decode("ascii")
        return doc


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


# -- filters --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    """Which dead letters to act on; every given criterion must hold.

    ``reason`` compares case-insensitively; ``function_name`` and ``task_id``
    exactly. ``enqueued_since`` / ``enqueued_until`` bound the enqueued time
    (inclusive); naive datetimes are taken as UTC. A message without a
    decodable task never matches a function or task id filter.
    """

    reason: str | None = None
    function_name: str | None = None
    task_id: str | None = None
    enqueued_since: datetime | None = None
    enqueued_until: datetime | None = None
    sequence_numbers: frozenset[int] | None = None

    def __post_init__(self) -> None:
        for name in ("enqueued_since", "enqueued_until"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                object.__setattr__(self, name, value.replace(tzinfo=UTC))
        if (
            self.enqueued_since is not None
            and self.enqueued_until is not None
            and self.enqueued_since > self.enqueued_until
        ):
            raise ValueError(
                f"enqueued_since ({self.enqueued_since.isoformat()}) is after "
                f"enqueued_until ({self.enqueued_until.isoformat()})"
            )
        if self.sequence_numbers is not None and not isinstance(self.sequence_numbers, frozenset):
            object.__setattr__(self, "sequence_numbers", frozenset(self.sequence_numbers))

    def matches(self, letter: DeadLetter) -> bool:
        """Whether ``letter`` passes every criterion."""
        if (
            self.sequence_numbers is not None
            and letter.sequence_number not in self.sequence_numbers
        ):
            return False
        if self.reason is not None and (letter.reason or "").lower() != self.reason.lower():
            return False
        if self.function_name is not None and letter.function_name != self.function_name:
            return False
        if self.task_id is not None and (
            letter.task is None or letter.task.task_id != self.task_id
        ):
            return False
        if self.enqueued_since is not None or self.enqueued_until is not None:
            when = letter.enqueued_time
            if when is None:
                return False
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            if self.enqueued_since is not None and when < self.enqueued_since:
                return False
            if self.enqueued_until is not None and when > self.enqueued_until:
                return False
        return True


_EVERYTHING = DeadLetterFilter()


# -- reports --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessageOutcome:
    """What happened to one dead-lettered message.

    ``detail`` says why it was skipped or failed, or notes something about a
    replay. ``new_message_id`` is the replayed copy's id.
    """

    sequence_number: int
    message_id: str
    function_name: str | None = None
    reason: str | None = None
    detail: str | None = None
    new_message_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "sequence_number": self.sequence_number,
            "message_id": self.message_id,
            "function_name": self.function_name,
            "reason": self.reason,
            "detail": self.detail,
            "new_message_id": self.new_message_id,
        }


@dataclass(slots=True)
class ReplayReport:
    """The result of :meth:`DeadLetterQueue.replay` (on a dry run: what would happen)."""

    dry_run: bool
    replayed: list[MessageOutcome] = field(default_factory=list)
    skipped: list[MessageOutcome] = field(default_factory=list)
    failed: list[MessageOutcome] = field(default_factory=list)

    @property
    def replayed_sequence_numbers(self) -> list[int]:
        """Sequence numbers of the replayed (or, on a dry run, replayable) messages."""
        return [o.sequence_number for o in self.replayed]

    @property
    def skipped_sequence_numbers(self) -> list[int]:
        """Sequence numbers of matching messages left in the dead-letter queue on purpose."""
        return [o.sequence_number for o in self.skipped]

    @property
    def failed_sequence_numbers(self) -> list[int]:
        """Sequence numbers of messages whose replay failed (they stay dead-lettered)."""
        return [o.sequence_number for o in self.failed]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "dry_run": self.dry_run,
            "replayed": [o.to_dict() for o in self.replayed],
            "skipped": [o.to_dict() for o in self.skipped],
            "failed": [o.to_dict() for o in self.failed],
        }


@dataclass(slots=True)
class PurgeReport:
    """The result of :meth:`DeadLetterQueue.purge` (on a dry run: what would be removed)."""

    dry_run: bool
    purged: list[MessageOutcome] = field(default_factory=list)
    skipped: list[MessageOutcome] = field(default_factory=list)
    failed: list[MessageOutcome] = field(default_factory=list)

    @property
    def purged_sequence_numbers(self) -> list[int]:
        """Sequence numbers of the removed (or, on a dry run, removable) messages."""
        return [o.sequence_number for o in self.purged]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "dry_run": self.dry_run,
            "purged": [o.to_dict() for o in self.purged],
            "skipped": [o.to_dict() for o in self.skipped],
            "failed": [o.to_dict() for o in self.failed],
        }


def _outcome(
    letter: DeadLetter, detail: str | None = None, new_message_id: str | None = None
) -> MessageOutcome:
    return MessageOutcome(
        sequence_number=letter.sequence_number,
        message_id=letter.message_id,
        function_name=letter.function_name,
        reason=letter.reason,
        detail=detail,
        new_message_id=new_message_id,
    )


# -- the queue ------------------------------------------------------------------------------

#: What an action did with the message it was given.
_Settled = Literal["settled", "keep"]
_Action = Callable[[Receiver, ReceivedMessage, DeadLetter], Awaitable[_Settled]]


class _Pace:
    """Slots at most ``rate`` per second apart (no limit when rate is None)."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self._next = 0.0

    def book(self) -> float:
        """The monotonic time of the next free slot, which is now taken."""
        slot = max(time.monotonic(), self._next)
        if self.interval:
            self._next = slot + self.interval
        return slot


class DeadLetterQueue:
    """List, replay and purge the dead-letter sub-queue of ``broker``'s queue.

    Args:
        broker: The queue (any Broker). Replayed copies are sent with ``broker.send``.
        graphs: The app's graph runtime (``app.graphs``; needs a results store),
            so dead-lettered graph tasks can be reset and replayed.
        page_size: Messages per peek.
        batch_size: Most messages locked per receive while replaying or purging.
        receive_wait: Longest wait (s) for a receive; an empty receive ends a pass.
    """

    def __init__(
        self,
        broker: Broker,
        *,
        graphs: GraphRuntime | None = None,
        page_size: int = 100,
        batch_size: int = 32,
        receive_wait: float = 2.0,
    ) -> None:
        if page_size < 1 or batch_size < 1:
            raise ValueError("page_size and batch_size must be at least 1")
        if receive_wait <= 0:
            raise ValueError("receive_wait must be positive")
        self.broker = broker
        self.graphs = graphs
        self.page_size = page_size
        self.batch_size = batch_size
        self.receive_wait = receive_wait

    # -- reading --------------------------------------------------------------------------

    async def list(
        self, limit: int | None = 100, filters: DeadLetterFilter | None = None
    ) -> list[DeadLetter]:
        """Up to ``limit`` matching dead letters, by sequence number; peeks, never locks.

        ``limit=None`` reads the whole sub-queue.
        """
        found, _ = await self._scan(filters or _EVERYTHING, limit)
        return found

    async def show(self, sequence_number: int) -> DeadLetter | None:
        """The dead letter with this sequence number, or None."""
        async with self.broker.receiver(sub_queue=SubQueue.DeadLetter) as receiver:
            page = await receiver.peek(1, from_sequence_number=sequence_number)
        for message in page:
            if message.sequence_number == sequence_number:
                return DeadLetter.from_message(message)
        return None

    async def _scan(
        self, filters: DeadLetterFilter, limit: int | None, receiver: Receiver | None = None
    ) -> tuple[builtins.list[DeadLetter], int]:
        """Matching dead letters (up to ``limit``) and how many messages were peeked."""
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        if limit == 0 or filters.sequence_numbers == frozenset():
            return [], 0
        if receiver is None:
            async with self.broker.receiver(sub_queue=SubQueue.DeadLetter) as own:
                return await self._scan(filters, limit, own)
        found: builtins.list[DeadLetter] = []
        scanned = 0
        next_seq = min(filters.sequence_numbers) if filters.sequence_numbers else None
        while limit is None or len(found) < limit:
            page = await receiver.peek(self.page_size, from_sequence_number=next_seq)
            page = sorted(
                (m for m in page if next_seq is None or m.sequence_number >= next_seq),
                key=lambda m: m.sequence_number,
            )
            if not page:
                break
            for message in page:
                scanned += 1
                letter = DeadLetter.from_message(message)
                if filters.matches(letter):
                    found.append(letter)
                    if limit is not None and len(found) >= limit:
                        break
            next_seq = page[-1].sequence_number + 1
        return found, scanned

    # -- replay ---------------------------------------------------------------------------

    async def replay(
        self,
        filters: DeadLetterFilter | None = None,
        limit: int | None = None,
        dry_run: bool = False,
        rate_per_second: float | None = None,
        reset_attempts: bool = True,
    ) -> ReplayReport:
        """Send a copy of each matching dead letter to the queue, then remove it from the DLQ.

        The copy's message id is ``<original message id>:replay:<n>`` and its
        application properties carry the lineage (see module docstring).
        With ``reset_attempts`` the task is re-encoded with ``attempts = 0`` so
        it gets its full retry budget again; undecodable bodies are resent as
        they are. If sending fails the message is abandoned back into the DLQ
        and reported as failed. ``rate_per_second`` bounds the sends per
        second. A dry run peeks only and reports what would be replayed.
        """
        if rate_per_second is not None and not rate_per_second > 0:
            raise ValueError(f"rate_per_second must be positive, got {rate_per_second}")
        filters = filters or _EVERYTHING
        report = ReplayReport(dry_run=dry_run)
        if dry_run:
            letters, _ = await self._scan(filters, limit)
            for letter in letters:
                skip = await self._graph_check(letter)
                if skip is not None:
                    report.skipped.append(_outcome(letter, skip))
                else:
                    report.replayed.append(
                        _outcome(letter, new_message_id=self._replay_message_id(letter))
                    )
            return report

        pace = _Pace(rate_per_second)
        batch = self.batch_size
        if rate_per_second is not None:
            # Receive about a second of sends at a time: locks stay fresh while waiting.
            batch = max(1, min(batch, math.floor(rate_per_second)))

        async def act(receiver: Receiver, message: ReceivedMessage, letter: DeadLetter) -> _Settled:
            skip = await self._graph_check(letter)
            if skip is not None:
                report.skipped.append(_outcome(letter, skip))
                return "keep"
            try:
                await self._wait_turn(pace.book(), receiver, message)
            except MessageLockLost as exc:
                report.failed.append(_outcome(letter, f"lock lost before sending: {exc}"))
                return "settled"  # nothing to give back: it is in the DLQ again already
            except BrokerError as exc:
                report.failed.append(_outcome(letter, f"{type(exc).__name__}: {exc}"))
                return "keep"
            note: str | None = None
            try:
                note = await self._reset_graph_node(letter, reset_attempts)
                outgoing = self._replay_copy(message, letter, reset_attempts)
                await self.broker.send([outgoing])
            except Exception as exc:
                detail = f"{type(exc).__name__}: {exc}"
                if note and note.startswith("graph node reset"):
                    detail += (
                        "; its graph node was already reset to scheduled: replay again, or "
                        "recover the graph to dispatch it"
                    )
                report.failed.append(_outcome(letter, detail))
                return "keep"
            try:
                await receiver.complete(message)
            except BrokerError as exc:
                note = (
                    f"sent, but the dead-lettered original could not be removed ({exc}); "
                    "it is still in the dead-letter queue"
                )
            report.replayed.append(_outcome(letter, note, outgoing.message_id))
            return "settled"

        missing = await self._sweep(filters, limit, batch, act)
        for letter in missing:
            report.skipped.append(_outcome(letter, "no longer in the dead-letter queue"))
        return report

    def _replay_message_id(self, letter: DeadLetter) -> str:
        lineage = letter.lineage
        original = lineage.original_message_id if lineage else letter.message_id
        count = (lineage.replay_count if lineage else 0) + 1
        return f"{original}:replay:{count}"

    def _replay_copy(
        self, message: ReceivedMessage, letter: DeadLetter, reset_attempts: bool
    ) -> OutgoingMessage:
        lineage = letter.lineage
        properties: dict[str, PropertyValue] = {
            key: _property_value(value)
            for key, value in message.application_properties.items()
            if key not in _BROKER_PROPERTIES and key not in _LINEAGE_KEYS
        }
        properties[ORIGINAL_MESSAGE_ID] = (
            lineage.original_message_id if lineage else letter.message_id
        )
        original_seq = lineage.original_sequence_number if lineage else None
        properties[ORIGINAL_SEQUENCE_NUMBER] = (
            original_seq if original_seq is not None else letter.sequence_number
        )
        if letter.reason is not None:
            properties[DEAD_LETTER_REASON] = letter.reason
        properties[REPLAY_COUNT] = (lineage.replay_count if lineage else 0) + 1
        properties[REPLAYED_AT] = datetime.now(UTC).isoformat()
        body = message.body
        if reset_attempts and letter.task is not None:
            task = decode_task(body)
            task.attempts = RetryAttempts()
            body = encode_task(task)
        return OutgoingMessage(
            body=body,
            message_id=self._replay_message_id(letter),
            application_properties=properties,
            content_type=message.content_type,
            correlation_id=message.correlation_id,
            subject=message.subject,
        )

    async def _wait_turn(self, slot: float, receiver: Receiver, message: ReceivedMessage) -> None:
        """Sleep until ``slot`` (monotonic), keeping the message's lock alive meanwhile."""
        while (left := slot - time.monotonic()) > 0:
            step = left
            if message.locked_until is not None:
                lock_left = (message.locked_until - datetime.now(UTC)).total_seconds()
                step = min(step, max(0.01, lock_left / 2))
            await asyncio.sleep(step)
            await self._keep_lock(receiver, message)
        await self._keep_lock(receiver, message)

    async def _keep_lock(self, receiver: Receiver, message: ReceivedMessage) -> None:
        until = message.locked_until
        if until is None:
            return
        if until - datetime.now(UTC) < timedelta(seconds=LOCK_MARGIN):
            await receiver.renew_lock(message)

    # -- graph tasks ------------------------------------------------------------------------

    async def _graph_check(self, letter: DeadLetter) -> str | None:
        """Why a graph task cannot be replayed (None if it can, or is no graph task)."""
        task = letter.task
        if task is None or not task.graph_id:
            return None
        if self.graphs is None:
            return GRAPH_NEEDS_RUNTIME
        graph = await self.graphs.load(task.graph_id)
        if graph is None or task.task_id not in graph.tasks:
            return f"graph task: graph {task.graph_id} or its task {task.task_id} is not stored"
        got = await self.graphs.records.get(node_blob(task.graph_id, task.task_id))
        if got is None:
            return f"graph task: graph {task.graph_id} has no record for task {task.task_id}"
        if got[0].skipped:
            return "graph task: its graph skipped the node (a parent did not succeed)"
        return None

    async def _reset_graph_node(self, letter: DeadLetter, reset_attempts: bool) -> str | None:
        """Make a graph node runnable again; returns a note for the report, if any."""
        task = letter.task
        if task is None or not task.graph_id or self.graphs is None:
            return None
        name = node_blob(task.graph_id, task.task_id)
        previous: list[TaskStatus] = []

        def reset(record: NodeRecord) -> NodeRecord | None:
            previous.append(record.status)
            if record.status is TaskStatus.Success or record.skipped:
                return None
            record.status = TaskStatus.Scheduled
            record.claimed_by = None
            record.expected_message_id = None
            record.retry_at = None
            record.result = None
            record.errors = None
            record.formatted_exception = None
            if reset_attempts:
                record.attempt = 0
            return record

        await self.graphs.records.update(name, reset)
        if previous and previous[-1] is TaskStatus.Success:
            return "graph node had already succeeded: only its continuation runs again"
        if previous:
            return f"graph node reset from {previous[-1].value} to scheduled"
        return None

    # -- purge ----------------------------------------------------------------------------

    async def purge(
        self,
        filters: DeadLetterFilter | None = None,
        limit: int | None = None,
        dry_run: bool = False,
    ) -> PurgeReport:
        """Remove (complete) matching dead letters. A dry run peeks only."""
        filters = filters or _EVERYTHING
        report = PurgeReport(dry_run=dry_run)
        if dry_run:
            letters, _ = await self._scan(filters, limit)
            report.purged.extend(_outcome(letter) for letter in letters)
            return report

        async def act(receiver: Receiver, message: ReceivedMessage, letter: DeadLetter) -> _Settled:
            try:
                await receiver.complete(message)
            except BrokerError as exc:
                report.failed.append(_outcome(letter, f"{type(exc).__name__}: {exc}"))
                return "keep"
            report.purged.append(_outcome(letter))
            return "settled"

        missing = await self._sweep(filters, limit, self.batch_size, act)
        for letter in missing:
            report.skipped.append(_outcome(letter, "no longer in the dead-letter queue"))
        return report

    # -- the locked pass ------------------------------------------------------------------

    async def _sweep(
        self, filters: DeadLetterFilter, limit: int | None, batch: int, act: _Action
    ) -> builtins.list[DeadLetter]:
        """Receive the dead letters a peek found matching and ``act`` on each.

        Returns the targets that were not found (settled meanwhile by someone else).
        Every message received and not settled by ``act`` is abandoned at the end.
        """
        async with self.broker.receiver(sub_queue=SubQueue.DeadLetter) as receiver:
            targets, scanned = await self._scan(filters, limit, receiver)
            if not targets:
                return []
            pending = {letter.sequence_number: letter for letter in targets}
            held: dict[int, ReceivedMessage] = {}
            # Guard against a pass that never ends (locks lapsing as fast as we go).
            budget = 2 * scanned + 10 * batch
            received = 0
            try:
                while pending and received < budget:
                    # Ask for what is left to find, plus as many as the non-matching
                    # messages met so far (they suggest how sparse the targets are).
                    want = min(batch, len(pending) + len(held))
                    messages = await receiver.receive(want, self.receive_wait)
                    if not messages:
                        break
                    received += len(messages)
                    for message in messages:
                        seq = message.sequence_number
                        # Seen before: its earlier lock lapsed; hold the new one.
                        held[seq] = message
                        if seq not in pending:
                            continue
                        del pending[seq]
                        letter = DeadLetter.from_message(message)
                        if not filters.matches(letter):
                            continue
                        if await act(receiver, message, letter) == "settled":
                            del held[seq]
            finally:
                await self._abandon_all(receiver, held.values())
        return sorted(pending.values(), key=lambda letter: letter.sequence_number)

    @staticmethod
    async def _abandon_all(receiver: Receiver, messages: Iterable[ReceivedMessage]) -> None:
        for message in list(messages):
            # A lapsed lock means the message is back in the queue already.
            with contextlib.suppress(BrokerError):
                await receiver.abandon(message)


def _property_value(value: Any) -> PropertyValue:
    if value is None or isinstance(value, str | int | float | bool | bytes):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)

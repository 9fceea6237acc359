"""What a dead-lettered message says: its task, reason, lineage; and filters over them."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from boilermaker.broker import (
    ReceivedMessage,
)
from boilermaker.envelope import decode_task
from boilermaker.exceptions import InvalidTaskFormat
from boilermaker.reasons import PROCESSING_ERROR, TASK_FAILED

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
    fields (Boilermaker's taxonomy: :mod:`boilermaker.reasons`).
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

"""What a replay or purge did, message by message."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from boilermaker.broker import (
    ReceivedMessage,
    Receiver,
)
from boilermaker.dead_letters.records import DeadLetter


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

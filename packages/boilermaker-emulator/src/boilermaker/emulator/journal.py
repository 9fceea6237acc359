"""Where queue changes are recorded: nowhere (memory) or a file (see ``sqlite_store``).

The store calls the journal after every change that should survive a
restart. :class:`MemoryJournal` ignores them; the file store writes them to
SQLite and, since it ``keeps_payloads``, lets the store drop message bodies
from memory and read them back on delivery.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from .config import QueueSettings
from .message import StoredMessage

__all__ = ["Journal", "MemoryJournal", "RestoredQueue"]

#: A queue read back from a journal: settings, next sequence number, and
#: ``(in dead-letter entity, message)`` pairs.
RestoredQueue = tuple[QueueSettings, int, list[tuple[bool, StoredMessage]]]


class Journal(Protocol):
    """Receives every durable change of the namespace."""

    #: True when message bodies live in the journal rather than in memory.
    keeps_payloads: bool

    def queue_saved(self, settings: QueueSettings, next_seq: int) -> None: ...
    def queue_deleted(self, name: str) -> None: ...
    def inserted(self, queue: str, dead_letter: bool, message: StoredMessage) -> None: ...
    def updated(self, queue: str, dead_letter: bool, message: StoredMessage) -> None: ...
    def deleted(self, queue: str, seq: int) -> None: ...
    def purged(self, queue: str) -> None: ...
    def load_payload(self, queue: str, seq: int) -> bytes: ...
    def load(self) -> Iterable[RestoredQueue]: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class MemoryJournal:
    """The default: nothing is written, everything is lost on stop."""

    keeps_payloads = False

    def queue_saved(self, settings: QueueSettings, next_seq: int) -> None:
        pass

    def queue_deleted(self, name: str) -> None:
        pass

    def inserted(self, queue: str, dead_letter: bool, message: StoredMessage) -> None:
        pass

    def updated(self, queue: str, dead_letter: bool, message: StoredMessage) -> None:
        pass

    def deleted(self, queue: str, seq: int) -> None:
        pass

    def purged(self, queue: str) -> None:
        pass

    def load_payload(self, queue: str, seq: int) -> bytes:
        raise KeyError((queue, seq))

    def load(self) -> Iterable[RestoredQueue]:
        return []

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

"""The file store: a SQLite journal so queued and dead-lettered messages survive a restart.

Writes go into one open transaction that is committed on every server tick
(tens of milliseconds) and on stop, so a crash loses at most the last tick of
changes while a clean stop loses nothing. Message bodies stay in the file:
memory holds only per-message bookkeeping, so it stays flat as queues grow.
Locks are not persisted; after a restart locked messages are ready again.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from .config import QueueSettings
from .journal import RestoredQueue
from .message import MessageState, StoredMessage

__all__ = ["SqliteJournal"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queues (
    name TEXT PRIMARY KEY,
    settings TEXT NOT NULL,
    next_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    queue TEXT NOT NULL,
    seq INTEGER NOT NULL,
    dead_letter INTEGER NOT NULL,
    state INTEGER NOT NULL,
    delivery_count INTEGER NOT NULL,
    enqueued_ms INTEGER NOT NULL,
    scheduled_ms INTEGER,
    expires_ms INTEGER,
    message_id TEXT,
    durable INTEGER,
    priority INTEGER,
    ttl_ms INTEGER,
    annotations BLOB NOT NULL,
    dead_letter_source TEXT,
    payload BLOB NOT NULL,
    PRIMARY KEY (queue, seq)
);
"""

_COLUMNS = (
    "queue, seq, dead_letter, state, delivery_count, enqueued_ms, scheduled_ms, expires_ms,"
    " message_id, durable, priority, ttl_ms, annotations, dead_letter_source, payload"
)


class SqliteJournal:
    """A :class:`~boilermaker.emulator.journal.Journal` backed by one SQLite file."""

    keeps_payloads = True

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._db.execute("BEGIN")
        self._next_seq: dict[str, int] = {}
        self._pending = False

    def queue_saved(self, settings: QueueSettings, next_seq: int) -> None:
        self._db.execute(
            "INSERT INTO queues (name, settings, next_seq) VALUES (?, ?, ?)"
            " ON CONFLICT(name) DO UPDATE SET settings = excluded.settings",
            (settings.name, json.dumps(settings.to_dict()), next_seq),
        )
        self._pending = True

    def queue_deleted(self, name: str) -> None:
        self._db.execute("DELETE FROM queues WHERE name = ?", (name,))
        self._db.execute("DELETE FROM messages WHERE queue = ?", (name,))
        self._next_seq.pop(name, None)
        self._pending = True

    def inserted(self, queue: str, dead_letter: bool, message: StoredMessage) -> None:
        assert message.payload is not None, "a new message carries its payload"
        self._db.execute(
            f"INSERT OR REPLACE INTO messages ({_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                queue,
                message.seq,
                int(dead_letter),
                int(message.state),
                message.delivery_count,
                message.enqueued_ms,
                message.scheduled_ms,
                message.expires_ms,
                message.message_id,
                None if message.durable is None else int(message.durable),
                message.priority,
                message.ttl_ms,
                message.annotations,
                message.dead_letter_source,
                message.payload,
            ),
        )
        if message.seq >= self._next_seq.get(queue, 0):
            self._next_seq[queue] = message.seq + 1
        self._pending = True

    def updated(self, queue: str, dead_letter: bool, message: StoredMessage) -> None:
        self._db.execute(
            "UPDATE messages SET state = ?, delivery_count = ?, enqueued_ms = ?, expires_ms = ?"
            " WHERE queue = ? AND seq = ?",
            (
                int(message.state),
                message.delivery_count,
                message.enqueued_ms,
                message.expires_ms,
                queue,
                message.seq,
            ),
        )
        self._pending = True

    def deleted(self, queue: str, seq: int) -> None:
        self._db.execute("DELETE FROM messages WHERE queue = ? AND seq = ?", (queue, seq))
        self._pending = True

    def purged(self, queue: str) -> None:
        self._db.execute("DELETE FROM messages WHERE queue = ?", (queue,))
        self._pending = True

    def load_payload(self, queue: str, seq: int) -> bytes:
        row = self._db.execute(
            "SELECT payload FROM messages WHERE queue = ? AND seq = ?", (queue, seq)
        ).fetchone()
        if row is None:
            raise KeyError((queue, seq))
        return bytes(row[0])

    def load(self) -> Iterable[RestoredQueue]:
        restored: list[RestoredQueue] = []
        for name, settings_json, next_seq in self._db.execute(
            "SELECT name, settings, next_seq FROM queues ORDER BY name"
        ).fetchall():
            settings = QueueSettings.from_dict(json.loads(settings_json))
            messages: list[tuple[bool, StoredMessage]] = []
            cursor = self._db.execute(
                "SELECT seq, dead_letter, state, delivery_count, enqueued_ms, scheduled_ms,"
                " expires_ms, message_id, durable, priority, ttl_ms, annotations,"
                " dead_letter_source FROM messages WHERE queue = ? ORDER BY seq",
                (name,),
            )
            highest = 0
            for row in cursor:
                (seq, dead, state, count, enqueued, scheduled, expires, message_id, durable,
                 priority, ttl, annotations, source) = row  # fmt: skip
                message = StoredMessage(seq, None, enqueued)
                message.state = MessageState(state)
                message.delivery_count = count
                message.scheduled_ms = scheduled
                message.expires_ms = expires
                message.message_id = message_id
                message.durable = None if durable is None else bool(durable)
                message.priority = priority
                message.ttl_ms = ttl
                message.annotations = bytes(annotations)
                message.dead_letter_source = source
                messages.append((bool(dead), message))
                highest = max(highest, seq)
            next_seq = max(next_seq, highest + 1)
            self._next_seq[name] = next_seq
            restored.append((settings, next_seq, messages))
        return restored

    def flush(self) -> None:
        """Commit what changed since the last flush."""
        if not self._pending:
            return
        for name, next_seq in self._next_seq.items():
            self._db.execute(
                "UPDATE queues SET next_seq = MAX(next_seq, ?) WHERE name = ?", (next_seq, name)
            )
        self._db.execute("COMMIT")
        self._db.execute("BEGIN")
        self._pending = False

    def close(self) -> None:
        self.flush()
        self._db.execute("COMMIT")
        self._db.close()

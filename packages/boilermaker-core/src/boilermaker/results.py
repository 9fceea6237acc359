"""Task results and graph node records in a ResultsStore, under the published layout.

    task-results/{graph_id}/graph.json           the graph's structure (immutable)
    task-results/{graph_id}/{task_id}.json       one record per graph node
    task-results/{graph_id}/graph-status.json    which sinks have settled (graph end)
    task-results/{task_id}/{task_id}.json        a standalone task's result

Records are JSON supersets of :class:`TaskResult`; blob index tags carry
``graph_id``, ``status`` and ``created_date``. Updates are compare-and-swap
on the ETag just read, retried on conflict, so concurrent workers never
overwrite each other.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import Field, ValidationError

from boilermaker.ids import check_id
from boilermaker.results_store import BlobExists, LeaseConflict, PreconditionFailed, ResultsStore
from boilermaker.task.status import TaskResult, TaskStatus

PREFIX = "task-results"

#: Pause after the n-th lost compare-and-swap in a row (seconds; the last repeats). The
#: first retries are immediate; a blob held under a lease (a 1.x worker dispatching
#: the node) is waited out without hammering the store.
CONFLICT_BACKOFF = (0.0, 0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25)

#: Arrival codes: one character per edge in a record's ``arrivals``.
NOT_YET, SUCCEEDED, FAILED, SKIPPED = ".", "s", "f", "k"


# Every blob name is built here, from checked ids (boilermaker.ids.check_id): an id
# can never name a blob outside task-results/ or another container.


def graph_blob(graph_id: str) -> str:
    """Name of a graph's structure blob."""
    return f"{PREFIX}/{check_id(graph_id, 'graph id')}/graph.json"


def node_blob(graph_id: str, task_id: str) -> str:
    """Name of a graph node's record."""
    return f"{PREFIX}/{check_id(graph_id, 'graph id')}/{check_id(task_id, 'task id')}.json"


def graph_status_blob(graph_id: str) -> str:
    """Name of a graph's end-of-graph record."""
    return f"{PREFIX}/{check_id(graph_id, 'graph id')}/graph-status.json"


def standalone_blob(task_id: str) -> str:
    """Name of a standalone task's result."""
    task_id = check_id(task_id, "task id")
    return f"{PREFIX}/{task_id}/{task_id}.json"


def graph_folder(graph_id: str) -> str:
    """The folder of a graph's blobs (or of a standalone task's result), with the slash."""
    return f"{PREFIX}/{check_id(graph_id, 'graph id')}/"


Mutation = Callable[["NodeRecord"], "NodeRecord | None"]


def _now() -> datetime:
    return datetime.now(UTC)


class NodeRecord(TaskResult):
    """A task's result plus the bookkeeping graph dispatch needs.

    ``arrivals`` has one character per task this node waits on (its parents,
    or the failed task for a failure handler), in the graph's order: ``.``
    not settled yet, ``s`` succeeded, ``f`` failed, ``k`` skipped. One byte
    per edge keeps a wide join's record small however many parents it has.
    ``skipped`` means the node will never run. ``claimed_by`` is the sequence
    number of the message whose worker claimed the node.
    """

    attempt: int = 0
    claimed_by: int | None = None
    expected_message_id: str | None = None
    arrivals: str = ""
    failure_seen: bool = False
    skipped: bool = False
    created_at: datetime = Field(default_factory=_now)
    updated_at: datetime = Field(default_factory=_now)
    retry_at: datetime | None = None

    @property
    def outcome(self) -> str | None:
        """What this node tells its dependents once settled (an arrival code), else None."""
        if self.skipped:
            return SKIPPED
        if self.status is TaskStatus.Success:
            return SUCCEEDED
        if self.status.failed:
            return FAILED
        return None

    def arrivals_of(self, size: int) -> str:
        """The arrival codes, padded to ``size`` slots."""
        return self.arrivals.ljust(size, NOT_YET)

    def all_arrived(self, size: int) -> bool:
        """Whether every one of ``size`` slots has an outcome."""
        return NOT_YET not in self.arrivals_of(size)


class GraphStatusRecord(NodeRecord):
    """The end-of-graph record: which sinks settled, and whether anything failed."""


def tags_for(record: TaskResult, created: datetime | None = None) -> dict[str, str]:
    """Blob index tags of a record (graph_id, status, created_date)."""
    tags = {
        "status": str(record.status.value),
        "created_date": (created or _now()).strftime("%Y-%m-%d"),
    }
    tags["graph_id"] = str(record.graph_id or record.task_id)
    return tags


def encode_record(record: NodeRecord) -> bytes:
    """JSON bytes of a record; raises TypeError/ValueError if its result is not JSON."""
    doc = record.model_dump(mode="json")
    doc["etag"] = None  # the ETag is the blob's, not part of what is stored
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


class Records:
    """Typed, conditional access to node records in a ResultsStore."""

    def __init__(self, store: ResultsStore) -> None:
        self.store = store

    async def get(self, name: str) -> tuple[NodeRecord, str] | None:
        """The record and its ETag, or None."""
        blob = await self.store.read(name)
        if blob is None:
            return None
        try:
            record = NodeRecord.model_validate_json(blob.data)
        except ValidationError as exc:
            raise ValueError(f"record {name} is not a valid task record: {exc}") from None
        record.etag = blob.etag
        return record, blob.etag

    async def create(self, name: str, record: NodeRecord) -> bool:
        """Write a record only if none exists; False if one was already there."""
        return await self.create_etag(name, record) is not None

    async def create_etag(self, name: str, record: NodeRecord) -> str | None:
        """Write a record only if none exists: its ETag, or None if one was there."""
        try:
            return await self.store.write(
                name, encode_record(record), tags=tags_for(record), create_only=True
            )
        except BlobExists:
            return None

    async def put(self, name: str, record: NodeRecord, if_match: str | None) -> str:
        """Write a record (compare-and-swap when ``if_match`` is given); returns the ETag."""
        record.updated_at = _now()
        return await self.store.write(
            name,
            encode_record(record),
            tags=tags_for(record, record.created_at),
            if_match=if_match,
        )

    async def update(
        self, name: str, mutate: Mutation, create: Callable[[], NodeRecord] | None = None
    ) -> NodeRecord | None:
        """Read-modify-write until it sticks. ``mutate`` returns None to leave it as is.

        Returns the record as last written or read, or None if it does not exist
        (with ``create``, a missing record is ``create()`` changed by ``mutate``, and
        written only if it is still missing).
        A write refused because the blob is leased (a 1.x worker dispatching the
        node holds it for a moment) is retried like a lost compare-and-swap.
        """
        conflicts = 0
        while True:
            got = await self.get(name)
            if got is None:
                if create is None:
                    return None
                fresh = create()
                changed = mutate(fresh.model_copy(deep=True))
                if changed is None:
                    return fresh
                if await self.create_etag(name, changed) is not None:
                    return changed
                continue  # created meanwhile by someone else: read it
            record, etag = got
            changed = mutate(record.model_copy(deep=True))
            if changed is None:
                return record
            try:
                await self.put(name, changed, if_match=etag)
            except (PreconditionFailed, LeaseConflict):
                pause = CONFLICT_BACKOFF[min(conflicts, len(CONFLICT_BACKOFF) - 1)]
                conflicts += 1
                if pause:
                    await asyncio.sleep(pause)
                continue
            return changed


class CoalescingRecords(Records):
    """Records whose concurrent updates of one blob, in this process, share CAS rounds.

    Many tasks finishing at once in one worker all update a wide join's
    record. Done one by one they keep invalidating each other's ETag; here
    callers that arrive while a round is in flight join the next round, whose
    single read-modify-write applies all their changes. Each ``mutate`` is
    applied in arrival order to the same working copy, and may run again on a
    fresh copy if the write conflicts with another process.
    """

    def __init__(self, store: ResultsStore) -> None:
        super().__init__(store)
        self._waiting: dict[str, list[tuple[Mutation, asyncio.Future[NodeRecord | None]]]] = {}

    async def update_together(
        self, name: str, mutate: Mutation, create: Callable[[], NodeRecord] | None = None
    ) -> NodeRecord | None:
        """Like :meth:`Records.update`, merged with concurrent updates of ``name``."""
        future: asyncio.Future[NodeRecord | None] = asyncio.get_running_loop().create_future()
        waiting = self._waiting.get(name)
        if waiting is not None:
            waiting.append((mutate, future))
            return await future
        self._waiting[name] = [(mutate, future)]
        try:
            while batch := self._waiting[name]:
                self._waiting[name] = []
                await self._round(name, batch, create)
        finally:
            for _, other in self._waiting.pop(name, []):
                if not other.done():
                    other.set_exception(RuntimeError(f"update of {name} was abandoned"))
        return await future

    async def _round(
        self,
        name: str,
        batch: list[tuple[Mutation, asyncio.Future[NodeRecord | None]]],
        create: Callable[[], NodeRecord] | None,
    ) -> None:
        def combined(record: NodeRecord) -> NodeRecord | None:
            changed = False
            for mutate, _ in batch:
                out = mutate(record)
                if out is not None:
                    record, changed = out, True
            return record if changed else None

        try:
            result = await self.update(name, combined, create)
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for _, future in batch:
            if not future.done():
                future.set_result(result)


def result_value(value: Any) -> Any:
    """Check that a task's return value can be stored as JSON; returns it unchanged."""
    json.dumps(value, allow_nan=False)
    return value

"""Running task graphs on a broker plus a results store, each node exactly once.

How a node moves (all writes are compare-and-swap on the ETag just read):

1. ``publish`` writes ``graph.json`` and a Pending record per node (create-only,
   so a second call after a failure finishes the job without duplicates), then
   publishes the roots (message id = task id) and marks them Scheduled.
2. A worker ``claim``s a node by writing Started with its message's sequence
   number. A finished node is never run again: only its continuation is. A
   second message for a node another message has claimed is a duplicate. A
   retry is recorded (Retry, with the retry message's id) before that message
   is published; the node then takes only that message, or a redelivery of
   the one that asked for the retry.
3. When a node settles (finishes, or is skipped because it can never run), its
   ``continuation`` records its outcome in each dependent's record (its
   children and its failure handler). The writer whose arrival completes a
   dependent's set decides for it: dispatch it (all parents succeeded, or for
   a handler, its task failed) or skip it, which settles it in turn.
4. Sinks report to the graph-status record; when all have settled the graph
   has ended, and if anything failed the all-failed callback is dispatched.

Finishing a node costs blob operations in proportion to its own edges, so a
graph of N nodes and E edges costs O(N + E) in total. Every step is
idempotent: a redelivered message re-runs only the continuation, and a
continuation repeated after a crash re-dispatches what it must (duplicates are
resolved by the claim), so no crash point leaves a graph stuck.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, TypeVar

from boilermaker.ids import TaskId
from boilermaker.publishing import FOLLOW_UP_ATTEMPTS, Publication, Publisher, batches_by_size
from boilermaker.results import (
    FAILED,
    NOT_YET,
    SUCCEEDED,
    CoalescingRecords,
    GraphStatusRecord,
    Mutation,
    NodeRecord,
    graph_blob,
    graph_status_blob,
    node_blob,
)
from boilermaker.results_store import BlobExists, PreconditionFailed, ResultsStore
from boilermaker.task.graph import TaskGraph
from boilermaker.task.status import TaskStatus
from boilermaker.task.task import Task

logger = logging.getLogger("boilermaker.graph")

T = TypeVar("T")

ClaimKind = Literal["run", "finished", "skipped", "duplicate", "premature", "missing"]

#: Concurrent store operations when writing or reading a whole graph.
BULK_CONCURRENCY = 32


@dataclass(slots=True)
class Claim:
    """What a worker should do with a graph node's message."""

    kind: ClaimKind
    record: NodeRecord | None = None
    etag: str | None = None


async def bounded_gather(coros: Sequence[Awaitable[T]], limit: int = BULK_CONCURRENCY) -> list[T]:
    semaphore = asyncio.Semaphore(limit)

    async def run(coro: Awaitable[T]) -> T:
        async with semaphore:
            return await coro

    return list(await asyncio.gather(*(run(c) for c in coros)))


class GraphRuntime:
    """Graph publication, claiming and continuation over a ResultsStore (reading and
    recovery: :mod:`boilermaker.graph_recovery`)."""

    def __init__(
        self,
        store: ResultsStore,
        publisher: Publisher | Callable[[], Publisher],
        cache_size: int = 512,
    ) -> None:
        self.store = store
        self.records = CoalescingRecords(store)
        # A factory defers needing a broker until something is published, so
        # read-only use (progress, status) works with a store alone.
        self._publisher = publisher
        # The record and ETag each running node was claimed at, so recording
        # its outcome is one conditional write rather than a read and a write.
        self._claimed: OrderedDict[tuple[str, str], tuple[NodeRecord, str]] = OrderedDict()
        self._cache: OrderedDict[str, TaskGraph] = OrderedDict()
        self._cache_size = cache_size

    @property
    def publisher(self) -> Publisher:
        """The publisher dispatched nodes go out through."""
        if not isinstance(self._publisher, Publisher):
            self._publisher = self._publisher()
        return self._publisher

    # -- structure --------------------------------------------------------------------

    async def load(self, graph_id: str) -> TaskGraph | None:
        """The graph's structure (read once per process, then cached)."""
        graph = self._cache.get(graph_id)
        if graph is not None:
            self._cache.move_to_end(graph_id)
            return graph
        blob = await self.store.read(graph_blob(graph_id))
        if blob is None:
            return None
        graph = TaskGraph.model_validate_json(blob.data)
        self._remember(graph)
        return graph

    def _remember(self, graph: TaskGraph) -> None:
        self._cache[graph.graph_id] = graph
        self._cache.move_to_end(graph.graph_id)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    # -- publication ------------------------------------------------------------------

    async def publish(self, graph: TaskGraph, attempts: int = 1) -> TaskGraph:
        """Store the graph and publish its roots; safe to call again after a failure."""
        data = graph.model_dump_json().encode()
        try:
            await self.store.write(
                graph_blob(graph.graph_id),
                data,
                tags={"graph_id": str(graph.graph_id), "status": "graph"},
                create_only=True,
            )
        except BlobExists:
            existing = await self.load(graph.graph_id)
            if existing is None or existing.tasks.keys() != graph.tasks.keys():
                raise ValueError(
                    f"graph {graph.graph_id} was already published with different tasks"
                ) from None
        self._remember(graph)
        await bounded_gather(
            [
                self.records.create(
                    node_blob(graph.graph_id, task_id),
                    NodeRecord(task_id=task_id, graph_id=graph.graph_id, status=TaskStatus.Pending),
                )
                for task_id in graph.tasks
            ]
        )
        await self.records.create(
            graph_status_blob(graph.graph_id),
            GraphStatusRecord(
                task_id=TaskId(f"graph-{graph.graph_id}"),
                graph_id=graph.graph_id,
                status=TaskStatus.Pending,
            ),
        )
        pending_roots = []
        for task_id in graph.root_ids:
            got = await self.records.get(node_blob(graph.graph_id, task_id))
            if got is not None and got[0].status is TaskStatus.Pending and not got[0].skipped:
                pending_roots.append(task_id)
        # One broker batch at a time, each marked Scheduled once sent: if a
        # later batch fails, calling again publishes only what was not sent.
        for batch in self._root_batches(graph, pending_roots):
            await self.publisher.publish(batch, attempts)
            await bounded_gather([self._mark_scheduled(graph, p.task.task_id) for p in batch])
        return graph

    def _root_batches(self, graph: TaskGraph, roots: list[TaskId]) -> list[list[Publication]]:
        """The roots' publications, grouped as the publisher will send them."""
        items = [Publication(graph.task(t), message_id=str(t)) for t in roots]
        messages = [self.publisher.to_message(item) for item in items]
        by_message = {id(m): item for m, item in zip(messages, items, strict=True)}
        limit = self.publisher.broker.max_message_size
        return [[by_message[id(m)] for m in run] for run in batches_by_size(messages, limit)]

    async def _mark_scheduled(self, graph: TaskGraph, task_id: TaskId) -> None:
        def mutate(rec: NodeRecord) -> NodeRecord | None:
            if rec.status is not TaskStatus.Pending or rec.skipped:
                return None
            rec.status = TaskStatus.Scheduled
            return rec

        await self.records.update(node_blob(graph.graph_id, task_id), mutate)

    async def dispatch(self, graph: TaskGraph, task_id: TaskId) -> None:
        """Publish a ready node (message id = task id), then mark it Scheduled."""
        await self.publisher.publish(
            [Publication(graph.task(task_id), message_id=str(task_id))], FOLLOW_UP_ATTEMPTS
        )
        await self._mark_scheduled(graph, task_id)

    # -- running a node ----------------------------------------------------------------

    async def claim(self, task: Task, sequence_number: int, message_id: str) -> Claim:
        """Decide whether this message may run its node, and mark it Started if so."""
        assert task.graph_id is not None
        name = node_blob(task.graph_id, task.task_id)
        while True:
            got = await self.records.get(name)
            if got is None:
                return Claim("missing")
            record, etag = got
            if record.status.finished:
                return Claim("finished", record)
            if record.skipped:
                return Claim("skipped", record)
            if record.status is TaskStatus.Pending and not await self._may_start(task, record):
                # Dispatch marks a node Scheduled before publishing it, so this
                # message did not come from the graph (e.g. published by hand).
                return Claim("premature", record)
            if record.status is TaskStatus.Started and record.claimed_by not in (
                None,
                sequence_number,
            ):
                return Claim("duplicate", record)
            if (
                record.status is TaskStatus.Retry
                and record.expected_message_id
                and record.expected_message_id != message_id
                and record.claimed_by != sequence_number
            ):
                return Claim("duplicate", record)
            record.status = TaskStatus.Started
            record.claimed_by = sequence_number
            record.attempt = task.attempts.attempts
            record.expected_message_id = None
            try:
                new_etag = await self.records.put(name, record, if_match=etag)
            except PreconditionFailed:
                continue
            self._claimed[(task.graph_id, task.task_id)] = (record, new_etag)
            while len(self._claimed) > 10_000:
                self._claimed.popitem(last=False)
            return Claim("run", record, new_etag)

    async def _may_start(self, task: Task, record: NodeRecord) -> bool:
        """A Pending node may start if it is a root or everything it waits on has settled."""
        graph = await self.load(str(task.graph_id))
        if graph is None:
            return True
        size = len(graph.waits_on(task.task_id))
        return task.task_id in graph.root_ids or (size > 0 and record.all_arrived(size))

    async def _update_claimed(self, task: Task, mutate: Mutation) -> NodeRecord | None:
        """Apply ``mutate`` to a node this process claimed: one write if nobody else
        wrote since the claim, else a read-modify-write."""
        assert task.graph_id is not None
        name = node_blob(task.graph_id, task.task_id)
        held = self._claimed.pop((task.graph_id, task.task_id), None)
        if held is not None:
            record, etag = held
            changed = mutate(record.model_copy(deep=True))
            if changed is None:
                return record
            try:
                await self.records.put(name, changed, if_match=etag)
            except PreconditionFailed:
                pass
            else:
                return changed
        return await self.records.update(name, mutate)

    async def mark_retry(self, task: Task, message_id: str, retry_at: datetime) -> None:
        """Record that the node waits for its retry message ``message_id``.

        Called before that message is published. ``claimed_by`` is kept, so if
        the worker dies before publishing, a redelivery of the message that
        asked for the retry may still claim the node.
        """
        assert task.graph_id is not None

        def mutate(rec: NodeRecord) -> NodeRecord | None:
            if rec.status.finished:
                return None
            rec.status = TaskStatus.Retry
            rec.expected_message_id = message_id
            rec.retry_at = retry_at
            return rec

        await self._update_claimed(task, mutate)

    async def finish(
        self,
        task: Task,
        status: TaskStatus,
        *,
        result: object = None,
        errors: list[str] | None = None,
        formatted_exception: str | None = None,
    ) -> NodeRecord | None:
        """Record a node's final status (first writer wins; a finished node stays as it is)."""
        assert task.graph_id is not None
        assert status.finished

        def mutate(rec: NodeRecord) -> NodeRecord | None:
            if rec.status.finished:
                return None
            rec.status = status
            rec.result = result
            rec.errors = errors
            rec.formatted_exception = formatted_exception
            rec.attempt = task.attempts.attempts
            return rec

        return await self._update_claimed(task, mutate)

    # -- continuation ------------------------------------------------------------------

    async def continue_from(self, graph: TaskGraph, task_id: TaskId, record: NodeRecord) -> None:
        """Tell everything waiting on a settled node its outcome (idempotent)."""
        outcome = record.outcome
        if outcome is None:
            raise ValueError(f"node {task_id} has not settled (status {record.status})")
        if task_id == graph.all_failed_callback:
            return
        failure_seen = record.failure_seen or outcome == FAILED
        targets = graph.notified_by(task_id)
        if not targets:
            await self._arrive_at_end(graph, task_id, outcome, failure_seen)
            return
        await asyncio.gather(
            *(self._arrive(graph, child, task_id, outcome, failure_seen) for child in targets)
        )

    def _ready(self, graph: TaskGraph, child: TaskId, arrivals: str) -> bool:
        if child in graph.failure_parent:
            return arrivals == FAILED
        return arrivals == SUCCEEDED * len(arrivals)

    async def _arrive(
        self, graph: TaskGraph, child: TaskId, parent: TaskId, outcome: str, failure_seen: bool
    ) -> None:
        """Record ``parent``'s outcome on ``child``; the arrival that completes the set
        decides for the child in the same write: Scheduled (then published) or skipped."""
        size = len(graph.waits_on(child))
        slot = graph.wait_positions[child][parent]
        seen = {"already": False, "decided": ""}

        def arrive(rec: NodeRecord) -> NodeRecord | None:
            seen["already"], seen["decided"] = False, ""
            arrivals = rec.arrivals_of(size)
            if arrivals[slot] != NOT_YET:
                seen["already"] = True
                return None
            arrivals = arrivals[:slot] + outcome + arrivals[slot + 1 :]
            rec.arrivals = arrivals
            rec.failure_seen = rec.failure_seen or failure_seen
            if NOT_YET not in arrivals and rec.status is TaskStatus.Pending and not rec.skipped:
                if self._ready(graph, child, arrivals):
                    rec.status = TaskStatus.Scheduled
                    seen["decided"] = "dispatch"
                else:
                    rec.skipped = True
                    seen["decided"] = "skip"
            return rec

        record = await self.records.update_together(node_blob(graph.graph_id, child), arrive)
        if record is None:
            logger.error("Graph %s has no record for task %s", graph.graph_id, child)
            return
        if seen["decided"] == "dispatch":
            try:
                await self._publish_node(graph, child)
            except Exception:
                await self._unschedule(graph, child)
                raise
        elif seen["decided"] == "skip":
            await self.continue_from(graph, child, record)
        elif seen["already"] and record.all_arrived(size):
            await self.repeat_decision(graph, child, record, size)

    async def repeat_decision(
        self, graph: TaskGraph, child: TaskId, record: NodeRecord, size: int
    ) -> None:
        """A continuation run again (redelivery, recovery): redo what the deciding
        arrival did, in case it was cut short. Duplicates are resolved by the claim."""
        if record.skipped:
            await self.continue_from(graph, child, record)
            return
        if record.status not in (TaskStatus.Pending, TaskStatus.Scheduled):
            return
        if not self._ready(graph, child, record.arrivals_of(size)):
            await self._settle_as_skipped(graph, child)
            return
        if record.status is TaskStatus.Pending:
            await self.dispatch(graph, child)
        else:
            await self._publish_node(graph, child)

    async def _unschedule(self, graph: TaskGraph, task_id: TaskId) -> None:
        """Put a node whose publish failed back to Pending, so it reads as ready but
        unsent (recover finds it at once) rather than as waiting in the queue."""

        def revert(rec: NodeRecord) -> NodeRecord | None:
            if rec.status is not TaskStatus.Scheduled or rec.claimed_by is not None:
                return None
            rec.status = TaskStatus.Pending
            return rec

        try:
            await self.records.update(node_blob(graph.graph_id, task_id), revert)
        except Exception:
            logger.exception(
                "Could not return task %s of graph %s to Pending", task_id, graph.graph_id
            )

    async def _publish_node(self, graph: TaskGraph, task_id: TaskId) -> None:
        await self.publisher.publish(
            [Publication(graph.task(task_id), message_id=str(task_id))], FOLLOW_UP_ATTEMPTS
        )

    async def _settle_as_skipped(self, graph: TaskGraph, task_id: TaskId) -> None:
        def skip(rec: NodeRecord) -> NodeRecord | None:
            if rec.status is not TaskStatus.Pending or rec.skipped:
                return None
            rec.skipped = True
            return rec

        record = await self.records.update(node_blob(graph.graph_id, task_id), skip)
        if record is not None and record.skipped:
            await self.continue_from(graph, task_id, record)

    async def _arrive_at_end(
        self, graph: TaskGraph, sink: TaskId, outcome: str, failure_seen: bool
    ) -> None:
        """Record a sink's outcome on the graph-status record; the last one ends the graph."""
        size = len(graph.sink_ids)
        slot = graph.sink_positions[sink]

        def arrive(rec: NodeRecord) -> NodeRecord | None:
            arrivals = rec.arrivals_of(size)
            if arrivals[slot] != NOT_YET:
                return None
            rec.arrivals = arrivals[:slot] + outcome + arrivals[slot + 1 :]
            rec.failure_seen = rec.failure_seen or failure_seen
            if rec.all_arrived(size):
                rec.status = TaskStatus.Failure if rec.failure_seen else TaskStatus.Success
            return rec

        record = await self.records.update_together(graph_status_blob(graph.graph_id), arrive)
        if record is not None and record.status.finished:
            await self.settle_all_failed_callback(graph, record.failure_seen)

    async def settle_all_failed_callback(self, graph: TaskGraph, failed: bool) -> None:
        """After the graph ended: dispatch the all-failed callback if anything failed,
        else mark it skipped. Safe to repeat."""
        callback = graph.all_failed_callback
        if callback is None:
            return
        decided = {"dispatch": False}

        def decide(rec: NodeRecord) -> NodeRecord | None:
            decided["dispatch"] = False
            if rec.status is not TaskStatus.Pending or rec.skipped:
                return None
            if failed:
                rec.status = TaskStatus.Scheduled
                decided["dispatch"] = True
            else:
                rec.skipped = True
            return rec

        record = await self.records.update(node_blob(graph.graph_id, callback), decide)
        if record is None:
            return
        if decided["dispatch"] or (failed and record.status is TaskStatus.Scheduled):
            await self._publish_node(graph, callback)

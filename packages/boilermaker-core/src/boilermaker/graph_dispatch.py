"""Running task graphs on a broker plus a results store, each node exactly once.

How a node moves (the transitions are in :mod:`boilermaker.graph_node`; every
write is a compare-and-swap on the ETag just read):

1. ``publish`` writes ``graph.json`` and a Pending record per node (create-only,
   so a second call after a failure finishes the job without duplicates), then
   publishes the roots (message id = task id) and marks them Scheduled.
2. A worker ``claim``s a node by writing Started with its message's sequence
   number. A finished node is never run again: only its continuation is. A
   second message for a node another message has claimed is a duplicate. A
   retry is recorded (Retry, with the retry message's id) before that message
   is published; the node then takes only that message, or a redelivery of
   the one that asked for the retry.
3. When a node settles (finished or skipped, and everything it waits on has
   arrived), its ``continuation`` records its outcome in each dependent's
   record (its children and its failure handlers). The writer whose arrival
   makes a dependent decidable decides for it in the same write: dispatch it
   or skip it, which settles it in turn.
4. Sinks report to the graph-status record; when all have settled the graph
   has ended, and if anything failed the all-failed callback is dispatched.

Finishing a node costs blob operations in proportion to its own edges, so a
graph of N nodes and E edges costs O(N + E) in total. Every step is
idempotent: a redelivered message re-runs only the continuation, and a
continuation repeated after a crash re-dispatches what it must (duplicates are
resolved by the claim), so no crash point leaves a graph stuck.

Graphs published by 1.x (protocol 1) are dispatched the 1.x way instead
(:mod:`boilermaker.graph_legacy`), so old and new workers can share them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, TypeVar

from boilermaker import graph_node
from boilermaker.graph_node import Decision, Step, Waiting
from boilermaker.ids import TaskId
from boilermaker.publishing import FOLLOW_UP_ATTEMPTS, Publication, Publisher, batches_by_size
from boilermaker.results import (
    FAILED,
    SUCCEEDED,
    CoalescingRecords,
    GraphStatusRecord,
    NodeRecord,
    graph_blob,
    graph_status_blob,
    node_blob,
)
from boilermaker.results_store import BlobExists, PreconditionFailed, ResultsStore
from boilermaker.task.graph import LEGACY_PROTOCOL, TaskGraph
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
    """Await ``coros`` with at most ``limit`` running at once; results in order."""
    semaphore = asyncio.Semaphore(limit)

    async def run(coro: Awaitable[T]) -> T:
        async with semaphore:
            return await coro

    return list(await asyncio.gather(*(run(c) for c in coros)))


def waiting_of(graph: TaskGraph, task_id: TaskId) -> Waiting:
    """How many arrivals ``task_id`` waits for, and whether it is a failure handler."""
    return Waiting(len(graph.waits_on(task_id)), graph.is_handler(task_id))


def fresh_record(graph: TaskGraph, task_id: TaskId) -> NodeRecord:
    """The record of a node nothing has happened to yet (what a missing record means)."""
    return NodeRecord(task_id=task_id, graph_id=graph.graph_id, status=TaskStatus.Pending)


def single_wait(graph: TaskGraph, task_id: TaskId) -> bool:
    """Whether the node waits on exactly one other (a chain link, a handler of one task).

    Such a node's outcome is known from its one parent alone, so its dispatch
    writes nothing: the parent's continuation publishes it, and its claim
    reads the parent's record to see that it may run.
    """
    return graph.protocol != LEGACY_PROTOCOL and len(graph.waits_on(task_id)) == 1


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
        # Nodes known to have succeeded (final: a reset never undoes a success), so a
        # fan-out's children read their parent's record once per process, not each.
        self._succeeded: OrderedDict[tuple[str, str], bool] = OrderedDict()

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
        graph = TaskGraph.from_stored(blob.data)
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
        await self.store_graph(graph)
        pending_roots = []
        for task_id in graph.root_ids:
            got = await self.records.get(node_blob(graph.graph_id, task_id))
            if got is None or graph_node.undecided(got[0]):
                pending_roots.append(task_id)
        # One broker batch at a time, each marked Scheduled once sent: if a
        # later batch fails, calling again publishes only what was not sent.
        for batch in self._root_batches(graph, pending_roots):
            await self.publisher.publish(batch, attempts)
            await bounded_gather([self._mark_scheduled(graph, p.task.task_id) for p in batch])
        return graph

    async def store_graph(self, graph: TaskGraph) -> None:
        """Write ``graph.json`` and the end-of-graph record, creating only what is
        missing (so it can be called again); refuses another graph under the same id.

        Node records are written when something first happens to a node (a root
        is published, an arrival is recorded, a node is claimed or skipped): a
        missing record reads as Pending. Graphs of the 1.x protocol get a Pending
        record per node, as 1.x workers expect.
        """
        graph.check()
        try:
            await self.store.write(
                graph_blob(graph.graph_id),
                graph.to_stored(),
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
        if graph.protocol == LEGACY_PROTOCOL:
            await bounded_gather(
                [
                    self.records.create(node_blob(graph.graph_id, t), fresh_record(graph, t))
                    for t in graph.tasks
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

    def _root_batches(self, graph: TaskGraph, roots: list[TaskId]) -> list[list[Publication]]:
        """The roots' publications, grouped as the publisher will send them."""
        items = [self.publication(graph, t) for t in roots]
        messages = [self.publisher.to_message(item) for item in items]
        by_message = {id(m): item for m, item in zip(messages, items, strict=True)}
        limit = self.publisher.broker.max_message_size
        return [[by_message[id(m)] for m in run] for run in batches_by_size(messages, limit)]

    async def _mark_scheduled(self, graph: TaskGraph, task_id: TaskId) -> None:
        await self.records.update(
            node_blob(graph.graph_id, task_id),
            Step(graph_node.mark_scheduled),
            create=lambda: fresh_record(graph, task_id),
        )

    @staticmethod
    def publication(
        graph: TaskGraph, task_id: TaskId, message_id: str = "", task: Task | None = None
    ) -> Publication:
        """A node's message (message id = task id unless given). Nodes of graphs of the
        current protocol go wrapped, so 1.x workers refuse them instead of running them."""
        return Publication(
            task if task is not None else graph.task(task_id),
            message_id=message_id or str(task_id),
            wrapped=graph.protocol != LEGACY_PROTOCOL,
        )

    async def publish_node(self, graph: TaskGraph, task_id: TaskId, message_id: str = "") -> None:
        """Send a node's message (message id = task id unless given)."""
        await self.publisher.publish(
            [self.publication(graph, task_id, message_id)], FOLLOW_UP_ATTEMPTS
        )

    async def dispatch(self, graph: TaskGraph, task_id: TaskId) -> None:
        """Publish a ready node (message id = task id), then mark it Scheduled."""
        await self.publish_node(graph, task_id)
        await self._mark_scheduled(graph, task_id)

    # -- running a node ----------------------------------------------------------------

    async def claim(self, task: Task, sequence_number: int, message_id: str) -> Claim:
        """Decide whether this message may run its node, and mark it Started if so."""
        assert task.graph_id is not None
        graph = await self.load(task.graph_id)
        task_id = task.task_id
        name = node_blob(task.graph_id, task_id)
        lazy = graph is not None and single_wait(graph, task_id)
        # A dispatched single-wait node has no record yet: try creating it first.
        got = None if lazy else await self.records.get(name)
        while True:
            if got is None:
                if graph is None or graph.protocol == LEGACY_PROTOCOL:
                    got = await self.records.get(name) if lazy else None
                    if got is None:
                        return Claim("missing")
                    continue
                record, etag = fresh_record(graph, task_id), None
            else:
                record, etag = got
            startable = True
            if record.status is TaskStatus.Pending and graph is not None:
                startable = await self._may_start(graph, task_id, record)
            elif lazy and graph is not None and not record.outcome:
                # Scheduled by recovery or replay: its arrival is still implied only.
                await self.fill_implicit_arrival(graph, task_id, record)
            change = graph_node.claim(
                record,
                sequence_number=sequence_number,
                message_id=message_id,
                attempt=task.attempts.attempts,
                startable=startable,
            )
            if not change.changed:
                return Claim(change.value, record)
            try:
                if etag is None:
                    new_etag = await self.records.create_etag(name, record)
                    if new_etag is None:  # it exists after all (a duplicate, a skip)
                        got = await self.records.get(name)
                        continue
                else:
                    new_etag = await self.records.put(name, record, if_match=etag)
            except PreconditionFailed:
                got = await self.records.get(name)
                continue
            self._claimed[(task.graph_id, task_id)] = (record, new_etag)
            while len(self._claimed) > 10_000:
                self._claimed.popitem(last=False)
            return Claim("run", record, new_etag)

    async def _may_start(self, graph: TaskGraph, task_id: TaskId, record: NodeRecord) -> bool:
        """Whether a Pending node's message came from the graph.

        Dispatch marks a node Scheduled in the same write that decides it, so a
        message for a Pending node that is not decidable was published by hand.
        A single-wait node is decided by its parent's record, whose outcome it
        takes into its own (1.x publishes before it writes Scheduled, so there
        the parents' statuses decide).
        """
        if graph.protocol == LEGACY_PROTOCOL:
            from boilermaker.graph_legacy import is_ready

            return await is_ready(self, graph, task_id)
        if task_id in graph.root_ids:
            return True
        await self.fill_implicit_arrival(graph, task_id, record)
        return graph_node.may_start(record, waiting_of(graph, task_id), False)

    async def fill_implicit_arrival(
        self, graph: TaskGraph, task_id: TaskId, record: NodeRecord
    ) -> None:
        """Give a single-wait node's record the arrival its parent's record implies
        (dispatching it wrote none); no change for other nodes or an unsettled parent."""
        if not single_wait(graph, task_id) or record.arrivals:
            return
        (parent,) = graph.waits_on(task_id)
        key = (graph.graph_id, parent)
        if key in self._succeeded:
            self._succeeded.move_to_end(key)
            record.arrivals = SUCCEEDED
            record.failure_seen = record.failure_seen or self._succeeded[key]
            return
        got = await self.records.get(node_blob(graph.graph_id, parent))
        if got is None or got[0].outcome is None:
            return
        outcome = got[0].outcome
        if outcome == SUCCEEDED:
            self._remember_success(graph.graph_id, parent, got[0].failure_seen)
        record.arrivals = outcome
        record.failure_seen = record.failure_seen or got[0].failure_seen or outcome == FAILED

    def _remember_success(self, graph_id: str, task_id: str, failure_seen: bool) -> None:
        self._succeeded[(graph_id, task_id)] = failure_seen
        self._succeeded.move_to_end((graph_id, task_id))
        while len(self._succeeded) > 10_000:
            self._succeeded.popitem(last=False)

    async def _update_claimed(self, task: Task, step: Step[bool]) -> NodeRecord | None:
        """Apply ``step`` to a node this process claimed: one write if nobody else
        wrote since the claim, else a read-modify-write."""
        assert task.graph_id is not None
        name = node_blob(task.graph_id, task.task_id)
        held = self._claimed.pop((task.graph_id, task.task_id), None)
        if held is not None:
            record, etag = held
            changed = step(record.model_copy(deep=True))
            if changed is None:
                return record
            try:
                await self.records.put(name, changed, if_match=etag)
            except PreconditionFailed:
                pass
            else:
                return changed
        updated = await self.records.update(name, step)
        if updated is not None:
            return updated
        # Never claimed (its function is unknown here): what it waits on is settled.
        graph = await self.load(task.graph_id)
        if graph is None or task.task_id not in graph.tasks:
            return None
        fresh = fresh_record(graph, task.task_id)
        if fresh.status is TaskStatus.Pending:
            await self._may_start(graph, task.task_id, fresh)
        return await self.records.update(name, step, create=lambda: fresh)

    async def mark_retry(self, task: Task, message_id: str, retry_at: datetime) -> None:
        """Record that the node waits for its retry message ``message_id`` (called
        before that message is published)."""
        await self._update_claimed(
            task, Step(lambda rec: graph_node.record_retry(rec, message_id, retry_at))
        )

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
        record = await self._update_claimed(
            task,
            Step(
                lambda rec: graph_node.record_outcome(
                    rec,
                    status,
                    result=result,
                    errors=errors,
                    formatted_exception=formatted_exception,
                    attempt=task.attempts.attempts,
                )
            ),
        )
        if record is not None and record.status is TaskStatus.Success:
            self._remember_success(task.graph_id, task.task_id, record.failure_seen)
        return record

    # -- continuation ------------------------------------------------------------------

    async def continue_from(
        self, graph: TaskGraph, task_id: TaskId, record: NodeRecord, *, repeat: bool = False
    ) -> None:
        """Tell everything waiting on a settled node its outcome (idempotent).

        A node that finished before everything it waits on arrived (a shared
        failure handler that ran at the first failure) has not settled yet: the
        last arrival continues from it. ``repeat``: this continuation may have
        run before (a redelivered message), so single-wait dependents already
        under way are not published again.
        """
        if graph.protocol == LEGACY_PROTOCOL:
            from boilermaker.graph_legacy import continue_legacy

            await continue_legacy(self, graph, task_id)
            return
        outcome = record.outcome
        if outcome is None:
            raise ValueError(f"node {task_id} has not settled (status {record.status})")
        if task_id == graph.all_failed_callback_id:
            return
        if not graph_node.has_settled(record, waiting_of(graph, task_id)):
            return
        failure_seen = record.failure_seen or outcome == FAILED
        targets = graph.notified_by(task_id)
        if not targets:
            await self._arrive_at_end(graph, task_id, outcome, failure_seen)
            return
        await asyncio.gather(
            *(self._tell(graph, child, task_id, outcome, failure_seen, repeat) for child in targets)
        )

    async def _tell(
        self,
        graph: TaskGraph,
        child: TaskId,
        parent: TaskId,
        outcome: str,
        failure_seen: bool,
        repeat: bool,
    ) -> None:
        """Tell ``child`` its parent's outcome. A single-wait child to be dispatched is
        only published (its record is written by its claim); every other arrival is
        recorded on the child's record."""
        if single_wait(graph, child):
            probe = NodeRecord(task_id=child, status=TaskStatus.Pending, arrivals=outcome)
            if graph_node.decision_for(probe, waiting_of(graph, child)) is Decision.DISPATCH:
                if repeat:
                    got = await self.records.get(node_blob(graph.graph_id, child))
                    if got is not None and not graph_node.undecided(got[0]):
                        return  # claimed already: its own message carries it on
                await self.publish_node(graph, child)
                return
        await self._arrive(graph, child, parent, outcome, failure_seen)

    async def _arrive(
        self, graph: TaskGraph, child: TaskId, parent: TaskId, outcome: str, failure_seen: bool
    ) -> None:
        """Record ``parent``'s outcome on ``child`` and carry out what that decided."""
        waiting = waiting_of(graph, child)
        slot = graph.wait_positions[child][parent]
        step = Step(
            lambda rec: graph_node.arrive(
                rec, slot=slot, outcome=outcome, failure_seen=failure_seen, waiting=waiting
            )
        )
        record = await self.records.update_together(
            node_blob(graph.graph_id, child), step, create=lambda: fresh_record(graph, child)
        )
        if record is None:
            logger.error("Graph %s has no record for task %s", graph.graph_id, child)
            return
        arrival = step.value
        assert arrival is not None
        if arrival.decision is Decision.DISPATCH:
            try:
                await self.publish_node(graph, child)
            except Exception:
                await self.records.update(
                    node_blob(graph.graph_id, child), Step(graph_node.unschedule)
                )
                raise
        elif arrival.decision is Decision.SKIP or graph_node.has_settled(record, waiting):
            # Skipped now, or (a shared handler) finished before this last arrival.
            await self.continue_from(graph, child, record)
        elif arrival.already:
            await self.reconsider(graph, child, record)

    async def reconsider(self, graph: TaskGraph, task_id: TaskId, record: NodeRecord) -> None:
        """Redo what deciding for a node did, in case it was cut short (a continuation
        run again by a redelivery, or by recovery). Duplicates are resolved by the claim."""
        waiting = waiting_of(graph, task_id)
        if record.outcome is not None:
            await self.continue_from(graph, task_id, record)
            return
        if record.status not in (TaskStatus.Pending, TaskStatus.Scheduled):
            return
        decision = graph_node.decision_for(record, waiting)
        if decision is Decision.SKIP:
            skipped = await self.records.update(
                node_blob(graph.graph_id, task_id),
                Step(graph_node.skip),
                create=lambda: record.model_copy(),
            )
            if skipped is not None and skipped.skipped:
                await self.continue_from(graph, task_id, skipped)
        elif decision is Decision.DISPATCH:
            if record.status is TaskStatus.Pending:
                await self.dispatch(graph, task_id)
            else:
                await self.publish_node(graph, task_id)

    async def _arrive_at_end(
        self, graph: TaskGraph, sink: TaskId, outcome: str, failure_seen: bool
    ) -> None:
        """Record a sink's outcome on the graph-status record; the last one ends the graph."""
        size = len(graph.sink_ids)
        slot = graph.sink_positions[sink]

        def arrive(rec: NodeRecord) -> NodeRecord | None:
            arrivals = rec.arrivals_of(size)
            if arrivals[slot] != "." or rec.status.finished:
                return None
            rec.arrivals = arrivals[:slot] + outcome + arrivals[slot + 1 :]
            rec.failure_seen = rec.failure_seen or failure_seen
            if rec.all_arrived(size):
                rec.status = TaskStatus.Failure if rec.failure_seen else TaskStatus.Success
            return rec

        record = await self.records.update_together(graph_status_blob(graph.graph_id), arrive)
        if record is not None and record.status.finished:
            await self.end(graph, record.failure_seen)

    async def end(self, graph: TaskGraph, failed: bool) -> bool:
        """After the graph ended: dispatch the all-failed callback if anything failed,
        else mark it skipped. Safe to repeat; True if it was (re)published."""
        callback = graph.all_failed_callback_id
        if callback is None:
            return False
        waiting = Waiting(1, handler=True)
        outcome = FAILED if failed else "s"
        step = Step(
            lambda rec: graph_node.arrive(
                rec, slot=0, outcome=outcome, failure_seen=failed, waiting=waiting
            )
        )
        record = await self.records.update(
            node_blob(graph.graph_id, callback), step, create=lambda: fresh_record(graph, callback)
        )
        if record is None:
            return False
        if failed and record.status is TaskStatus.Scheduled:
            await self.publish_node(graph, callback)
            return True
        return False

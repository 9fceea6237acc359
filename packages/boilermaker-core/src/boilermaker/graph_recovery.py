"""Reading a graph's progress and recovering nodes that stalled.

Reading costs one record per node, so it is for people and tools (the CLI's
``graph status``), not for every step of a worker; :func:`has_ended` reads
the single end-of-graph record. :func:`recover` is the operator's tool for
messages that were lost outside the protocol's control (dead-lettered by the
broker, a publish that failed for good).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from boilermaker.graph_dispatch import GraphRuntime, bounded_gather
from boilermaker.ids import GraphId, TaskId
from boilermaker.publishing import FOLLOW_UP_ATTEMPTS, Publication
from boilermaker.results import NodeRecord, graph_status_blob, node_blob
from boilermaker.task.graph import TaskGraph
from boilermaker.task.status import TaskStatus

logger = logging.getLogger("boilermaker.graph")


@dataclass(frozen=True, slots=True)
class GraphProgress:
    """A snapshot of every node's status (costs one read per node)."""

    graph_id: GraphId
    statuses: dict[TaskId, TaskStatus]
    skipped: frozenset[TaskId]
    ended: bool
    failed: bool

    @property
    def complete(self) -> bool:
        """Every node finished or skipped, the all-failed callback included."""
        return self.ended and all(
            status.finished or task_id in self.skipped for task_id, status in self.statuses.items()
        )


async def has_ended(runtime: GraphRuntime, graph_id: str) -> bool:
    """Whether every sink has settled (one read, whatever the graph's size)."""
    got = await runtime.records.get(graph_status_blob(graph_id))
    return got is not None and got[0].status.finished


async def read_progress(runtime: GraphRuntime, graph_id: str) -> GraphProgress | None:
    """Every node's status; reads one record per node."""
    graph = await runtime.load(graph_id)
    if graph is None:
        return None
    ids = list(graph.tasks)
    got = await bounded_gather([runtime.records.get(node_blob(graph_id, t)) for t in ids])
    end = await runtime.records.get(graph_status_blob(graph_id))
    statuses: dict[TaskId, TaskStatus] = {}
    skipped: set[TaskId] = set()
    for task_id, item in zip(ids, got, strict=True):
        if item is None:
            statuses[task_id] = TaskStatus.Pending
            continue
        statuses[task_id] = item[0].status
        if item[0].skipped:
            skipped.add(task_id)
    ended = end is not None and end[0].status.finished
    failed = end is not None and end[0].failure_seen
    return GraphProgress(graph.graph_id, statuses, frozenset(skipped), ended, failed)


async def recover(runtime: GraphRuntime, graph_id: str, stalled_after: timedelta) -> list[TaskId]:
    """Re-dispatch nodes that stalled; returns the ids acted on.

    Stalled: Scheduled, Started or Retry (past its retry time) for longer
    than ``stalled_after``; Pending nodes whose dependencies have all
    settled, or roots never published. Re-dispatched messages get a fresh
    message id so duplicate detection does not drop them; the claim
    resolves any duplicate delivery.
    """
    graph = await runtime.load(graph_id)
    if graph is None:
        raise LookupError(f"graph {graph_id} not found")
    now = datetime.now(UTC)
    acted: list[TaskId] = []
    for task_id in graph.tasks:
        name = node_blob(graph_id, task_id)
        got = await runtime.records.get(name)
        if got is None:
            continue
        record, _ = got
        if record.skipped or record.status.finished:
            continue
        if record.status in (TaskStatus.Scheduled, TaskStatus.Started, TaskStatus.Retry):
            since = record.updated_at
            if record.status is TaskStatus.Retry and record.retry_at:
                since = max(since, record.retry_at)
            if now - since < stalled_after:
                continue
            await _redispatch(runtime, graph, task_id)
            acted.append(task_id)
            continue
        size = len(graph.waits_on(task_id))
        if task_id in graph.root_ids:
            await runtime.dispatch(graph, task_id)
            acted.append(task_id)
        elif size and record.all_arrived(size):
            # Re-run the decision the last arrival should have made.
            await runtime.repeat_decision(graph, task_id, record, size)
            acted.append(task_id)
    end = await runtime.records.get(graph_status_blob(graph_id))
    callback = graph.all_failed_callback
    if callback is not None and end is not None and end[0].status.finished:
        got = await runtime.records.get(node_blob(graph_id, callback))
        pending = got is not None and got[0].status is TaskStatus.Pending and not got[0].skipped
        if pending:
            await runtime.settle_all_failed_callback(graph, end[0].failure_seen)
            if end[0].failure_seen:
                acted.append(callback)
    return acted


async def _redispatch(runtime: GraphRuntime, graph: TaskGraph, task_id: TaskId) -> None:
    name = node_blob(graph.graph_id, task_id)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    message_id = f"{task_id}:recover:{stamp}"

    def reset(rec: NodeRecord) -> NodeRecord | None:
        if rec.status.finished or rec.skipped:
            return None
        rec.status = TaskStatus.Scheduled
        rec.claimed_by = None
        rec.expected_message_id = None
        return rec

    record = await runtime.records.update(name, reset)
    if record is None or record.status is not TaskStatus.Scheduled:
        return
    task = graph.task(task_id).model_copy(deep=True)
    task.attempts.attempts = record.attempt
    await runtime.publisher.publish([Publication(task, message_id=message_id)], FOLLOW_UP_ATTEMPTS)
    logger.warning("Recovered graph %s task %s as message %s", graph.graph_id, task_id, message_id)

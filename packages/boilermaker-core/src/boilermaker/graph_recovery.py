"""Reading a graph's progress and recovering nodes that stalled.

Reading costs one record per node, so it is for people and tools (the CLI's
``graph status``), not for every step of a worker; :func:`has_ended` reads
the single end-of-graph record. :func:`recover` is the operator's tool for
messages that were lost outside the protocol's control (dead-lettered by the
broker, a publish that failed for good).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from boilermaker import graph_node
from boilermaker.graph_dispatch import GraphRuntime, bounded_gather, fresh_record, waiting_of
from boilermaker.graph_legacy import redispatch_ready
from boilermaker.graph_node import Decision, Step
from boilermaker.ids import GraphId, TaskId
from boilermaker.publishing import FOLLOW_UP_ATTEMPTS
from boilermaker.results import NodeRecord, graph_status_blob, node_blob
from boilermaker.task.graph import LEGACY_PROTOCOL, TaskGraph
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


async def read_graph(runtime: GraphRuntime, graph_id: str) -> TaskGraph | None:
    """The graph with every node's record as its ``results`` (one read per node).

    Works for graphs of either protocol; the reading methods of
    :class:`~boilermaker.task.graph.TaskGraph` (``is_complete``,
    ``detect_stalled_tasks``, ...) then apply.
    """
    graph = await runtime.load(graph_id)
    if graph is None:
        return None
    ids = list(graph.tasks)
    got = await bounded_gather([runtime.records.get(node_blob(graph_id, t)) for t in ids])
    view = graph.model_copy()
    # Nothing has happened yet to a node without a record (this version writes one
    # only when something does): it is Pending.
    missing_is_pending = graph.protocol != LEGACY_PROTOCOL
    view.set_results(
        {
            t: item[0] if item is not None else fresh_record(graph, t)
            for t, item in zip(ids, got, strict=True)
            if item is not None or missing_is_pending
        },
        skipped=[
            t for t, item in zip(ids, got, strict=True) if item is not None and item[0].skipped
        ],
    )
    return view


async def read_progress(runtime: GraphRuntime, graph_id: str) -> GraphProgress | None:
    """Every node's status; reads one record per node."""
    graph = await read_graph(runtime, graph_id)
    if graph is None:
        return None
    return await progress_of(runtime, graph)


async def progress_of(runtime: GraphRuntime, graph: TaskGraph) -> GraphProgress:
    """The progress of a graph already read by :func:`read_graph` (at most one more
    read: the end-of-graph record), so a caller that shows both reads each record once."""
    graph_id = graph.graph_id
    statuses = {t: graph.get_status(t) or TaskStatus.Pending for t in graph.tasks}
    if graph.protocol == LEGACY_PROTOCOL:
        # 1.x keeps no end-of-graph record and never marks a node skipped.
        never = graph.will_not_run()
        ended = graph.is_terminal_failed() or graph.completed_successfully()
        return GraphProgress(
            graph.graph_id, statuses, frozenset(never), ended, graph.has_failures()
        )
    end = await runtime.records.get(graph_status_blob(graph_id))
    skipped = frozenset(t for t in graph.tasks if graph.is_skipped(t))
    ended = end is not None and end[0].status.finished
    failed = end is not None and end[0].failure_seen
    return GraphProgress(graph.graph_id, statuses, skipped, ended, failed)


@dataclass(slots=True)
class RecoveryReport:
    """What :func:`recover_nodes` did, node by node.

    ``recovered`` maps each node published again to its message id;
    ``failed`` maps each node whose recovery raised to the exception (the
    other nodes were still tried).
    """

    graph_id: GraphId
    recovered: dict[TaskId, str] = field(default_factory=dict)
    failed: dict[TaskId, Exception] = field(default_factory=dict)


async def recover(runtime: GraphRuntime, graph_id: str, stalled_after: timedelta) -> list[TaskId]:
    """Re-dispatch nodes that stalled; returns the ids acted on.

    Stalled: Scheduled, Started or Retry (past its retry time) for longer
    than ``stalled_after``; Pending nodes whose dependencies allow them to run,
    or roots never published. Re-dispatched messages get a fresh message id
    (``<task_id>:recovery:<unix time>``) so duplicate detection does not drop
    them; the claim resolves any duplicate delivery. If a node's recovery
    fails, the others are still tried, then the first error is raised
    (:func:`recover_nodes` reports every node instead).
    """
    report = await recover_nodes(runtime, graph_id, stalled_after)
    if report.failed:
        raise next(iter(report.failed.values()))
    return list(report.recovered)


async def recover_nodes(
    runtime: GraphRuntime, graph_id: str, stalled_after: timedelta
) -> RecoveryReport:
    """:func:`recover`, reporting what happened to each node (published, with its
    message id, or failed, with the error) instead of raising at the first failure.

    Raises LookupError if the graph is not stored.
    """
    graph = await runtime.load(graph_id)
    if graph is None:
        raise LookupError(f"graph {graph_id} not found")
    report = RecoveryReport(graph.graph_id)
    now = datetime.now(UTC)
    for task_id in graph.tasks:
        try:
            message_id = await _recover_node(runtime, graph, task_id, now, stalled_after)
        except Exception as exc:
            logger.error("Recovering graph %s task %s failed: %s", graph_id, task_id, exc)
            report.failed[task_id] = exc
            continue
        if message_id is not None:
            report.recovered[task_id] = message_id
    callback = graph.all_failed_callback_id
    if (
        graph.protocol != LEGACY_PROTOCOL
        and callback is not None
        and callback not in report.recovered
        and callback not in report.failed
    ):
        # The end of the graph decides the callback; redo it if that was cut short.
        try:
            end = await runtime.records.get(graph_status_blob(graph_id))
            got = await runtime.records.get(node_blob(graph_id, callback))
            ended = end is not None and end[0].status.finished
            if ended and got is not None and graph_node.undecided(got[0]):
                assert end is not None
                if await runtime.end(graph, end[0].failure_seen):
                    report.recovered[callback] = str(callback)
        except Exception as exc:
            logger.error("Recovering graph %s task %s failed: %s", graph_id, callback, exc)
            report.failed[callback] = exc
    return report


async def _recover_node(
    runtime: GraphRuntime,
    graph: TaskGraph,
    task_id: TaskId,
    now: datetime,
    stalled_after: timedelta,
) -> str | None:
    """Recover one node if it needs it; the message id it was published under, else None."""
    got = await runtime.records.get(node_blob(graph.graph_id, task_id))
    if got is None:
        if graph.protocol == LEGACY_PROTOCOL:
            return None
        record = fresh_record(graph, task_id)  # nothing has happened to it yet
    else:
        record = got[0]
    if record.status is TaskStatus.Pending:
        await runtime.fill_implicit_arrival(graph, task_id, record)
    if record.skipped or record.status.finished:
        return None
    if record.status in (TaskStatus.Scheduled, TaskStatus.Started, TaskStatus.Retry):
        # 1.x records say nothing of when they were written: stalled for as long as asked.
        since = record.updated_at if "updated_at" in record.model_fields_set else None
        if record.status is TaskStatus.Retry and record.retry_at:
            since = max(since, record.retry_at) if since else record.retry_at
        if since is not None and now - since < stalled_after:
            return None
        return await redispatch(runtime, graph, task_id)
    if await _dispatch_if_ready(runtime, graph, task_id, record):
        return str(task_id)  # dispatched as the graph would have: message id = task id
    return None


async def _dispatch_if_ready(
    runtime: GraphRuntime, graph: TaskGraph, task_id: TaskId, record: NodeRecord
) -> bool:
    """A Pending node: dispatch it if it is ready (re-running the decision the last
    arrival should have made); True if anything was published."""
    if graph.protocol == LEGACY_PROTOCOL:
        return await redispatch_ready(runtime, graph, task_id)
    if task_id == graph.all_failed_callback_id:
        return False  # decided by the end of the graph, below
    if task_id in graph.root_ids:
        await runtime.dispatch(graph, task_id)
        return True
    waiting = waiting_of(graph, task_id)
    if graph_node.decision_for(record, waiting) is Decision.NONE:
        return False
    await runtime.reconsider(graph, task_id, record)
    return graph_node.decision_for(record, waiting) is Decision.DISPATCH


def recovery_message_id(task_id: str, action: str = "recovery") -> str:
    """``<task_id>:<action>:<unix time>``: a fresh id duplicate detection will not drop."""
    return f"{task_id}:{action}:{int(time.time())}"


async def redispatch(
    runtime: GraphRuntime,
    graph: TaskGraph,
    task_id: TaskId,
    action: str = "recovery",
    *,
    rerun_failed: bool = False,
) -> str | None:
    """Reset a node to Scheduled, unclaimed, and publish it again under a fresh message
    id (``<task_id>:<action>:<unix time>``); returns that id, or None if the node has
    no record, succeeded or was skipped, or (without ``rerun_failed``) failed.

    ``rerun_failed`` also resets a failed node (clearing its outcome) so the claim
    lets it run again: what ``boilermaker invoke --force`` asks for.
    """
    step = Step(lambda rec: graph_node.reset(rec, rerun_failed=rerun_failed, reset_attempts=False))
    record = await runtime.records.update(node_blob(graph.graph_id, task_id), step)
    if record is None or record.status is not TaskStatus.Scheduled:
        return None
    message_id = recovery_message_id(task_id, action)
    task = graph.task(task_id).model_copy(deep=True)
    task.attempts.attempts = record.attempt
    await runtime.publisher.publish(
        [runtime.publication(graph, task_id, message_id, task)], FOLLOW_UP_ATTEMPTS
    )
    logger.warning("Recovered graph %s task %s as message %s", graph.graph_id, task_id, message_id)
    return message_id

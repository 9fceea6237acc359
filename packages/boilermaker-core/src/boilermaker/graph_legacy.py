"""Dispatching graphs published by the 1.x library (protocol 1), the 1.x way.

Such a graph's records carry no arrivals: whether a node is ready is read off
its parents' statuses (all succeeded; for a failure handler, one of its tasks
failed). A ready Pending node is dispatched under a blob lease taken with the
ETag just read, as 1.x workers do: the lease elects one dispatcher among old
and new workers alike (a lost lease means another worker has it), the node is
published (message id = task id, so a repeat is dropped by duplicate
detection), marked Scheduled under the lease, and the lease released. A
crash before the Scheduled write leaves the node Pending: the redelivered
parent dispatches it again.

This costs a read of each parent per dependent and, for a graph with an
all-failed callback, a read of every node per settlement: the published
library's price, paid only for graphs it published.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

from boilermaker.results import encode_record, node_blob, tags_for
from boilermaker.results_store import LeaseConflict, PreconditionFailed, ResultsStoreError
from boilermaker.task.status import TaskStatus

if TYPE_CHECKING:
    from boilermaker.graph_dispatch import GraphRuntime
    from boilermaker.ids import TaskId
    from boilermaker.task.graph import TaskGraph

logger = logging.getLogger("boilermaker.graph")

#: Seconds a dispatch lease is taken for (the shortest Azure allows, as 1.x does).
LEASE_SECONDS = 15


async def _view(runtime: GraphRuntime, graph: TaskGraph, ids: list[TaskId]) -> TaskGraph:
    """A copy of the (shared, cached) graph with the records of ``ids`` as its results."""
    from boilermaker.graph_dispatch import bounded_gather

    got = await bounded_gather([runtime.records.get(node_blob(graph.graph_id, t)) for t in ids])
    view = graph.model_copy()
    view.set_results(
        {t: item[0] for t, item in zip(ids, got, strict=True) if item is not None},
        skipped=[
            t for t, item in zip(ids, got, strict=True) if item is not None and item[0].skipped
        ],
    )
    return view


async def is_ready(runtime: GraphRuntime, graph: TaskGraph, task_id: TaskId) -> bool:
    """Whether the node may run now, judged by its parents' statuses."""
    view = await _view(runtime, graph, graph.waits_on(task_id))
    return view.task_is_ready(task_id)


async def continue_legacy(runtime: GraphRuntime, graph: TaskGraph, task_id: TaskId) -> None:
    """After ``task_id`` finished: dispatch each dependent that is now ready, and the
    all-failed callback once the graph has ended with a failure."""
    for child in graph.notified_by(task_id):
        if await is_ready(runtime, graph, child):
            await _dispatch_under_lease(runtime, graph, child)
    callback = graph.all_failed_callback_id
    if callback is not None:
        view = await _view(runtime, graph, list(graph.tasks))
        if view.is_terminal_failed() and view.get_status(callback) is TaskStatus.Pending:
            await _dispatch_under_lease(runtime, graph, callback)


async def _dispatch_under_lease(runtime: GraphRuntime, graph: TaskGraph, task_id: TaskId) -> bool:
    """Publish a Pending node and mark it Scheduled while holding its lease; False if
    it was not Pending or another worker holds it."""
    name = node_blob(graph.graph_id, task_id)
    got = await runtime.records.get(name)
    if got is None:
        logger.error("Graph %s has no record for task %s", graph.graph_id, task_id)
        return False
    record, etag = got
    if record.status is not TaskStatus.Pending:
        return False
    try:
        lease = await runtime.store.acquire_lease(name, LEASE_SECONDS, if_match=etag)
    except (LeaseConflict, PreconditionFailed):
        return False  # another worker is dispatching it, or already has
    try:
        await runtime.publish_node(graph, task_id)
        record.status = TaskStatus.Scheduled
        await runtime.store.write(
            name, encode_record(record), tags=tags_for(record, record.created_at), lease_id=lease
        )
    finally:
        with contextlib.suppress(ResultsStoreError):
            await runtime.store.release_lease(name, lease)
    return True


async def redispatch_ready(runtime: GraphRuntime, graph: TaskGraph, task_id: TaskId) -> bool:
    """Recovery: dispatch a Pending node whose parents allow it; True if it was."""
    if task_id == graph.all_failed_callback_id:
        ready = (await _view(runtime, graph, list(graph.tasks))).is_terminal_failed()
    elif task_id in graph.root_ids:
        ready = True
    else:
        ready = await is_ready(runtime, graph, task_id)
    return ready and await _dispatch_under_lease(runtime, graph, task_id)

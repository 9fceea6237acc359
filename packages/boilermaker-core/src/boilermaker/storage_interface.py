"""The published 1.x results-store methods, on any store of this version.

1.x applications read graphs and results through ``BlobClientStorage``
methods (``load_graph``, ``load_task_result``, ``store_task_result``, ...).
:class:`StorageInterface` provides them on top of the
:class:`~boilermaker.results_store.ResultsStore` operations, so both
``boilermaker.storage.BlobClientStorage`` and
``boilermaker.memory.InMemoryResultsStore`` answer them, for graphs written by
either version.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from boilermaker.ids import GraphId, TaskId
from boilermaker.results import NodeRecord, Records, encode_record, node_blob, tags_for
from boilermaker.results_store import LeaseConflict, PreconditionFailed, ResultsStoreError
from boilermaker.task.status import TaskResult, TaskResultSlim

if TYPE_CHECKING:
    from boilermaker.graph_dispatch import GraphRuntime
    from boilermaker.results_store import ResultsStore
    from boilermaker.task.graph import TaskGraph


def _read_only_runtime(store: ResultsStore) -> GraphRuntime:
    from boilermaker.graph_dispatch import GraphRuntime

    def no_publisher() -> Any:
        raise RuntimeError("reading a graph publishes nothing")

    return GraphRuntime(store, no_publisher)


def _record_name(task_id: str, graph_id: str | None) -> str:
    return node_blob(graph_id or task_id, task_id)


class StorageInterface:
    """The 1.x methods, for a class that also implements the ResultsStore protocol."""

    async def load_graph(self, graph_id: GraphId | str, full: bool = False) -> TaskGraph | None:
        """The graph with every node's record in ``results`` (TaskResultSlim with its
        ETag; TaskResult, with result and errors, when ``full``); None if not stored."""
        from boilermaker.graph_recovery import read_graph

        if not graph_id:
            raise ValueError("load_graph() needs a graph_id")
        graph = await read_graph(_read_only_runtime(self._store()), str(graph_id))
        if graph is None:
            return None
        results: dict[TaskId, TaskResult | TaskResultSlim] = {}
        for task_id, record in graph.results.items():
            results[task_id] = _view(record, full) if isinstance(record, NodeRecord) else record
        graph.set_results(results, skipped=[t for t in graph.tasks if graph.is_skipped(t)])
        return graph

    async def load_graph_slim_from_tags(self, graph_id: GraphId | str) -> TaskGraph | None:
        """The graph with each node's status (as :meth:`load_graph` without ``full``)."""
        return await self.load_graph(graph_id)

    async def load_task_result(
        self, task_id: TaskId | str, graph_id: GraphId | str | None = None
    ) -> TaskResult | None:
        """A node's (or, without ``graph_id``, a standalone task's) record with its ETag."""
        name = _record_name(str(task_id), str(graph_id) if graph_id else None)
        got = await Records(self._store()).get(name)
        return None if got is None else TaskResult.model_validate(got[0].model_dump())

    async def store_task_result(
        self,
        task_result: TaskResult | TaskResultSlim,
        etag: str | None = None,
        lease_id: str | None = None,
    ) -> None:
        """Write a task's status (and result) to its record.

        ``etag``: only if the record is unchanged since (else PreconditionFailed);
        ``lease_id``: the lease the record is held under. The record's dispatch
        bookkeeping (this version's) is kept.
        """
        store = self._store()
        records = Records(store)
        name = _record_name(str(task_result.task_id), task_result.graph_id)
        fields = task_result.model_dump(exclude={"etag"})

        def merge(current: NodeRecord | None) -> NodeRecord:  # a Mutation, or a fresh record
            if current is None:
                return NodeRecord.model_validate(fields)
            return current.model_copy(update=fields)

        if etag is not None or lease_id is not None:
            got = await records.get(name)
            record = merge(got[0] if got else None)
            await store.write(
                name,
                encode_record(record),
                tags=tags_for(record, record.created_at),
                if_match=etag,
                lease_id=lease_id,
            )
            return
        if await records.update(name, merge) is None and not await records.create(
            name, merge(None)
        ):
            await records.update(name, merge)

    async def store_graph(self, graph: TaskGraph) -> TaskGraph:
        """Write the graph and a Pending record per node (as 1.x did), publishing nothing."""
        from boilermaker.graph_dispatch import bounded_gather, fresh_record

        await _read_only_runtime(self._store()).store_graph(graph)
        records = Records(self._store())
        await bounded_gather(
            [
                records.create(node_blob(graph.graph_id, t), fresh_record(graph, t))
                for t in graph.tasks
            ]
        )
        return graph

    async def try_acquire_lease(
        self,
        task_id: TaskId | str,
        graph_id: GraphId | str,
        etag: str | None = None,
        lease_duration: int = 15,
    ) -> str | None:
        """Lease a node's record (guarded by ``etag`` when given); None if another
        holder has it or it changed since ``etag``."""
        try:
            return await self._store().acquire_lease(
                node_blob(str(graph_id), str(task_id)), lease_duration, if_match=etag
            )
        except (LeaseConflict, PreconditionFailed):
            return None

    async def delete_blobs_batch(self, blob_names: Sequence[str]) -> list[str]:
        """Delete blobs (names relative to the container); returns those that could not
        be deleted. A blob already gone is not a failure."""
        try:
            await self._store().delete_many(list(blob_names))
            return []
        except ResultsStoreError:
            pass  # find out which, one by one
        failed: list[str] = []
        for name in blob_names:
            try:
                await self._store().delete_many([name])
            except ResultsStoreError:
                failed.append(name)
        return failed

    def _store(self) -> ResultsStore:
        return self  # type: ignore[return-value]


def _view(record: NodeRecord, full: bool) -> TaskResult | TaskResultSlim:
    """A record as 1.x's reading side expects it."""
    model = TaskResult if full else TaskResultSlim
    return model.model_validate(record.model_dump())


def lease_target(first: str, second: str, third: str | None) -> tuple[str, str]:
    """``(blob name, lease id)`` from ``release_lease``'s two forms: this version's
    ``(name, lease_id)`` and 1.x's ``(task_id, graph_id, lease_id)``."""
    if third is None:
        return first, second
    return node_blob(second, first), third

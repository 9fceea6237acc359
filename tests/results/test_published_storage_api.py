"""The published 1.x store methods (load_graph, store_task_result, leases by task, ...)
on the blob store (Azurite) and on core's in-memory store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from boilermaker.memory import InMemoryResultsStore
from boilermaker.results_store import PreconditionFailed
from boilermaker.storage import BlobClientStorage, StorageInterface
from boilermaker.task import Task, TaskGraphBuilder, TaskResult, TaskResultSlim, TaskStatus
from tests.conftest import unique_container_name


@pytest.fixture(params=["memory", "blob"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if request.param == "memory":
        yield InMemoryResultsStore()
        return
    azurite = request.getfixturevalue("azurite")
    blob = BlobClientStorage.from_connection_string(
        azurite.connection_string, container_name=unique_container_name(), create_container=True
    )
    await blob.ensure_container()
    try:
        yield blob
    finally:
        await blob.container_client.delete_container()
        await blob.close()


def seed_graph() -> tuple[Any, dict[str, Task]]:
    tasks = {n: Task.si(n) for n in ("fetch", "process", "cleanup")}
    graph = (
        TaskGraphBuilder()
        .add(tasks["fetch"], on_failure=tasks["cleanup"])
        .then(tasks["process"])
        .build()
    )
    return graph, tasks


async def test_store_and_load_a_graph(store: StorageInterface) -> None:
    graph, tasks = seed_graph()
    assert await store.store_graph(graph) is graph
    loaded = await store.load_graph(graph.graph_id)
    assert loaded is not None
    assert loaded.edges == graph.edges
    assert loaded.fail_edges == graph.fail_edges
    assert set(loaded.results) == set(graph.tasks)
    slim = loaded.results[tasks["fetch"].task_id]
    assert type(slim) is TaskResultSlim
    assert slim.status is TaskStatus.Pending
    assert slim.etag
    assert not loaded.is_complete()
    assert await store.load_graph("no-such-graph") is None


async def test_store_task_result_then_load_it_full(store: StorageInterface) -> None:
    graph, tasks = seed_graph()
    await store.store_graph(graph)
    fetch = tasks["fetch"].task_id
    await store.store_task_result(
        TaskResult(task_id=fetch, graph_id=graph.graph_id, status=TaskStatus.Success, result=[1])
    )
    got = await store.load_task_result(fetch, graph.graph_id)
    assert got is not None
    assert got.status is TaskStatus.Success
    assert got.result == [1]
    full = await store.load_graph(graph.graph_id, full=True)
    assert full is not None
    assert isinstance(full.results[fetch], TaskResult)
    assert full.get_status(fetch) is TaskStatus.Success
    assert full.task_is_ready(tasks["process"].task_id)


async def test_store_task_result_with_a_stale_etag_is_refused(store: StorageInterface) -> None:
    graph, tasks = seed_graph()
    await store.store_graph(graph)
    fetch = tasks["fetch"].task_id
    before = await store.load_task_result(fetch, graph.graph_id)
    assert before is not None
    assert before.etag
    started = TaskResult(task_id=fetch, graph_id=graph.graph_id, status=TaskStatus.Started)
    await store.store_task_result(started, etag=before.etag)
    with pytest.raises(PreconditionFailed):
        await store.store_task_result(started, etag=before.etag)


async def test_standalone_results_live_under_their_own_id(store: StorageInterface) -> None:
    await store.store_task_result(
        TaskResult(task_id="solo-1", status=TaskStatus.Failure, errors=["boom"])  # type: ignore[arg-type]
    )
    got = await store.load_task_result("solo-1")
    assert got is not None
    assert got.errors == ["boom"]
    assert got.graph_id is None


async def test_leases_by_task_and_graph(store: Any) -> None:
    graph, tasks = seed_graph()
    await store.store_graph(graph)
    fetch = tasks["fetch"].task_id
    current = await store.load_task_result(fetch, graph.graph_id)
    lease = await store.try_acquire_lease(fetch, graph.graph_id, etag=current.etag)
    assert lease is not None
    assert await store.try_acquire_lease(fetch, graph.graph_id) is None
    await store.release_lease(fetch, graph.graph_id, lease)
    assert await store.try_acquire_lease(fetch, graph.graph_id, etag='"0xstale"') is None
    again = await store.try_acquire_lease(fetch, graph.graph_id)
    assert again is not None
    await store.release_lease(fetch, graph.graph_id, again)


async def test_delete_blobs_batch_treats_missing_blobs_as_deleted(store: Any) -> None:
    graph, tasks = seed_graph()
    await store.store_graph(graph)
    names = [f"task-results/{graph.graph_id}/{t}.json" for t in tasks.values() for t in [t.task_id]]
    assert await store.delete_blobs_batch([*names, "task-results/gone/gone.json"]) == []
    assert await store.load_task_result(tasks["fetch"].task_id, graph.graph_id) is None


async def test_find_blobs_by_tags_takes_an_expression(blob_store: BlobClientStorage) -> None:
    graph, _tasks = seed_graph()
    await blob_store.store_graph(graph)
    found = [
        blob.name
        async for blob in blob_store.find_blobs_by_tags(
            f"\"graph_id\" = '{graph.graph_id}' AND \"status\" = 'pending'"
        )
    ]
    assert len(found) == len(graph.tasks) + 1  # the nodes and the end-of-graph record


async def test_the_1x_blob_helpers(blob_store: BlobClientStorage) -> None:
    assert blob_store.task_result_prefix == "task-results"
    assert blob_store.az_storage_url.startswith("http")
    assert "?" not in blob_store.az_storage_url
    await blob_store.upload_blob("notes/a.txt", "hello")
    assert await blob_store.download_blob("notes/a.txt") == b"hello"
    assert await blob_store.list_blobs("notes/") == ["notes/a.txt"]
    await blob_store.delete_blob("notes/a.txt")
    await blob_store.delete_blob("notes/a.txt")  # already gone: not an error
    assert await blob_store.list_blobs("notes/") == []

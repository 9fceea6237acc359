"""Boilermaker with BlobClientStorage: graphs, standalone results, and the published layout."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from boilermaker import Boilermaker
from boilermaker.memory import InMemoryBroker
from boilermaker.storage import BlobClientStorage
from boilermaker.task import TaskGraphBuilder, TaskStatus


def make_app(store: BlobClientStorage) -> Boilermaker:
    app = Boilermaker({"ran": []}, InMemoryBroker(), results_storage=store)

    @app.task()
    async def fetch(state: dict[str, Any], source: str) -> dict[str, str]:
        state["ran"].append(("fetch", source))
        return {"source": source}

    @app.task()
    async def measure(state: dict[str, Any], n: int) -> int:
        state["ran"].append(("measure", n))
        return n * n

    @app.task()
    async def save(state: dict[str, Any]) -> str:
        state["ran"].append(("save",))
        return "saved"

    @app.task()
    async def cleanup(state: dict[str, Any]) -> None:
        state["ran"].append(("cleanup",))

    @app.task()
    async def add(state: dict[str, Any], a: int, b: int) -> int:
        return a + b

    return app


async def test_graph_and_standalone_task_end_to_end(blob_store: BlobClientStorage) -> None:
    app = make_app(blob_store)
    first = app.create_task("fetch", "feed")
    left, right = app.create_task("measure", 3), app.create_task("measure", 4)
    last = app.create_task("save")
    handler = app.create_task("cleanup")
    graph = (
        TaskGraphBuilder()
        .add(first)
        .on_failure(first.task_id, handler)
        .parallel(left, right, depends_on=first)
        .then(last)
        .build()
    )
    await app.publish_graph(graph)
    standalone = await app.apply_async("add", 2, 3)

    await app.run_until_idle(timeout=30)

    progress = await app.wait_for_graph(graph.graph_id, timeout=10)
    assert progress.complete
    assert not progress.failed
    for task in (first, left, right, last):
        assert progress.statuses[task.task_id] is TaskStatus.Success
    assert handler.task_id in progress.skipped
    assert ("cleanup",) not in app.state["ran"]
    assert sorted(app.state["ran"], key=str) == sorted(
        [("fetch", "feed"), ("measure", 3), ("measure", 4), ("save",)], key=str
    )

    # The builder stores copies carrying the graph id; the caller's tasks have none.
    assert (await app.get_result(graph.task(left.task_id), timeout=5)).result == 9
    assert (await app.get_result(last, timeout=5, graph_id=graph.graph_id)).result == "saved"
    result = await app.get_result(standalone, timeout=10)
    assert result.status is TaskStatus.Success
    assert result.result == 5
    assert result.task_id == standalone.task_id
    await app.close()
    assert blob_store.closed


async def test_a_failing_standalone_task_records_its_error(blob_store: BlobClientStorage) -> None:
    app = Boilermaker({}, InMemoryBroker(), results_storage=blob_store)

    @app.task(should_dead_letter=False)
    async def explode(state: Any) -> None:
        raise ValueError("boom")

    task = await app.apply_async(explode)
    await app.run_until_idle(timeout=30)
    result = await app.get_result(task, timeout=10)
    assert result.status is TaskStatus.Failure
    assert result.errors
    assert "boom" in " ".join(result.errors)


async def test_blobs_follow_the_published_layout_and_tags(blob_store: BlobClientStorage) -> None:
    app = make_app(blob_store)
    first, second = app.create_task("fetch", "a"), app.create_task("measure", 2)
    graph = TaskGraphBuilder().sequence(first, second).build()
    await app.publish_graph(graph)
    standalone = await app.apply_async("add", 1, 1)
    await app.run_until_idle(timeout=30)
    await app.wait_for_graph(graph.graph_id, timeout=10)

    gid = graph.graph_id
    names = await blob_store.list_names("task-results/")
    assert f"task-results/{gid}/graph.json" in names
    assert f"task-results/{gid}/{first.task_id}.json" in names
    assert f"task-results/{gid}/{second.task_id}.json" in names
    standalone_name = f"task-results/{standalone.task_id}/{standalone.task_id}.json"
    assert standalone_name in names

    nodes = sorted(f"task-results/{gid}/{t.task_id}.json" for t in (first, second))
    # Core's end-of-graph record carries the graph's tags too.
    assert await blob_store.find_by_tags({"graph_id": gid, "status": "success"}) == sorted(
        [*nodes, f"task-results/{gid}/graph-status.json"]
    )
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    for name in [*nodes, standalone_name]:
        blob = await blob_store.read(name)
        assert blob is not None
        assert set(blob.tags) == {"graph_id", "status", "created_date"}
        assert blob.tags["status"] == "success"
        assert blob.tags["created_date"] == today
        index = await blob_store.container_client.get_blob_client(name).get_blob_tags()
        assert dict(index) == dict(blob.tags)
    assert await blob_store.find_by_tags({"graph_id": str(standalone.task_id)}) == [standalone_name]
    await app.close()

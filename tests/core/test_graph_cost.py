"""Blob operations per graph node stay flat as graphs grow (O(N + E), not O(N^2))."""

from __future__ import annotations

from typing import Any

import pytest

from boilermaker import Boilermaker, TaskGraph
from boilermaker.memory import InMemoryBroker, InMemoryResultsStore
from boilermaker.task import TaskGraphBuilder

SIZES = (10, 100, 1000)


async def noop(state: Any, i: int) -> None:
    return None


def chain(app: Boilermaker, n: int) -> TaskGraph:
    return TaskGraphBuilder().sequence(*(app.create_task(noop, i) for i in range(n))).build()


def fan_out(app: Boilermaker, n: int) -> TaskGraph:
    """1 -> (n - 2) -> 1."""
    root, join = app.create_task(noop, 0), app.create_task(noop, n - 1)
    middle = [app.create_task(noop, i) for i in range(1, n - 1)]
    return TaskGraphBuilder().add(root).parallel(*middle, depends_on=root).then(join).build()


async def operations_per_node(shape: Any, n: int) -> float:
    store = InMemoryResultsStore()
    app = Boilermaker({}, InMemoryBroker(), results_storage=store)
    app.register_async(noop)
    graph = shape(app, n)
    assert len(graph) == n
    await app.publish_graph(graph)
    await app.run_until_idle(timeout=60, concurrency=32)
    ops = store.total_operations()
    progress = await app.graph_progress(graph.graph_id)
    assert progress is not None
    assert progress.complete
    assert not progress.failed
    return ops / n


@pytest.mark.slow
@pytest.mark.parametrize("shape", [chain, fan_out], ids=["chain", "fan-out"])
async def test_blob_operations_per_node_stay_flat_as_the_graph_grows(shape: Any) -> None:
    per_node = {n: await operations_per_node(shape, n) for n in SIZES}
    assert per_node[1000] <= 1.5 * per_node[10], per_node
    assert per_node[100] <= 1.5 * per_node[10], per_node

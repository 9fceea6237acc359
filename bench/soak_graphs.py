"""The soak's graphs: what each is built to do, and checking that it did (``bench/soak.py``).

:func:`plan_graph` builds one of four shapes of 10-18 nodes, each node a
``graph_node`` run named ``g<graph>-<node>``, and says how each node must
end; :func:`check_graphs` reads every node's record against that.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.soak_worker import graph_node
from boilermaker import Boilermaker
from boilermaker.task import Task, TaskGraph, TaskGraphBuilder, TaskStatus


@dataclass
class PlannedGraph:
    """A graph and what each of its nodes must end as: ``success``, ``failure``, ``skipped``."""

    graph: TaskGraph
    expected: dict[str, str]
    ids: dict[str, str]

    def runs_expected(self, name: str) -> int:
        return 0 if self.expected[name] == "skipped" else 1


def plan_graph(app: Boilermaker, index: int, sleep: float) -> PlannedGraph:
    """Graph ``index``: one of four shapes of 10-18 nodes, by ``index % 4``."""
    expected: dict[str, str] = {}
    ids: dict[str, str] = {}

    def node(label: str, end: str = "success", **kwargs: Any) -> Task:
        name = f"g{index:02d}-{label}"
        task = app.create_task(graph_node, name, sleep=sleep, **kwargs)
        expected[name], ids[name] = end, str(task.task_id)
        return task

    builder = TaskGraphBuilder()
    kind = index % 4
    if kind == 0:  # fan-out / fan-in
        width = 8 + index % 9
        builder.add(node("root")).parallel(*[node(f"m{i}") for i in range(width)])
        builder.then(node("join"))
    elif kind == 1:  # a chain
        builder.sequence(*[node(f"c{i}") for i in range(10 + index % 6)])
    elif kind == 2:  # parallel chains between a root and a join
        root = node("root")
        builder.add(root)
        lasts = []
        for b in range(3):
            previous = root
            for i in range(4):
                task = node(f"b{b}-{i}")
                builder.add(task, depends_on=previous)
                previous = task
            lasts.append(previous)
        builder.add(node("join"), depends_on=lasts)
    else:  # a fan-out whose failing node has a handler; the join is skipped
        builder.add(node("root"))
        middle = [node(f"m{i}") for i in range(9)]
        failing = node("fails", end="failure", fail=True)
        builder.parallel(*middle, failing).then(node("join", end="skipped"))
        builder.on_failure(failing.task_id, node("handler"))
    return PlannedGraph(builder.build(), expected, ids)


async def publish_until_stored(app: Boilermaker, graph: TaskGraph, timeout: float) -> int:
    """Publish ``graph``, trying again while the store is down; returns the failed tries."""
    failed = 0
    deadline = time.monotonic() + timeout
    while True:
        try:
            await app.publish_graph(graph)
            return failed
        except Exception:
            failed += 1
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def wait_for_graphs(app: Boilermaker, plans: Sequence[PlannedGraph], timeout: float) -> int:
    """Wait until every graph has completed; returns how many did."""
    pending = {plan.graph.graph_id for plan in plans}
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for graph_id in list(pending):
            try:
                progress = await app.graph_progress(graph_id)
            except Exception:
                continue
            if progress is not None and progress.complete:
                pending.discard(graph_id)
        if pending:
            await asyncio.sleep(0.5)
    return len(plans) - len(pending)


async def check_graphs(app: Boilermaker, plans: Sequence[PlannedGraph]) -> list[str]:
    """Every node's final record against what its graph was built to do."""
    problems: list[str] = []
    for plan in plans:
        progress = await app.graph_progress(plan.graph.graph_id)
        if progress is None:
            problems.append(f"graph {plan.graph.graph_id} has no records")
            continue
        for name, end in plan.expected.items():
            task_id = plan.ids[name]
            status = progress.statuses.get(task_id)  # type: ignore[call-overload]
            got = "skipped" if task_id in progress.skipped else str(status)
            want = {"success": TaskStatus.Success, "failure": TaskStatus.Failure}.get(end, end)
            if got != str(want):
                problems.append(f"{name} ended {got}, expected {end}")
    return problems

"""``boilermaker graph``: a task graph's progress, and recovery of stalled nodes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import click

from boilermaker.cli.connection import (
    ResultsOptions,
    ServiceBusOptions,
    results_options,
    run,
    service_bus_options,
)
from boilermaker.cli.output import echo_json, table, when
from boilermaker.cli.times import DURATION
from boilermaker.ids import TaskId
from boilermaker.results import NodeRecord, Records, graph_blob, graph_status_blob, node_blob
from boilermaker.results_store import ResultsStore
from boilermaker.task.graph import TaskGraph

_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")

#: Node records read at once by ``graph status``.
READ_CONCURRENCY = 16


@click.group()
def graph() -> None:
    """Inspect and recover task graphs (needs the results store)."""


@dataclass(frozen=True, slots=True)
class NodeView:
    """One node of a graph as ``graph status`` shows it."""

    task_id: str
    function_name: str
    role: str
    record: NodeRecord | None

    @property
    def status(self) -> str:
        """The node's status; ``skipped`` for a node that will never run."""
        if self.record is None:
            return "pending"
        return "skipped" if self.record.skipped else self.record.status.value

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        record = self.record
        return {
            "task_id": self.task_id,
            "function_name": self.function_name,
            "role": self.role,
            "status": self.status,
            "attempt": record.attempt if record else 0,
            "updated_at": record.updated_at.isoformat() if record else None,
            "errors": record.errors if record else None,
        }


def _role(graph: TaskGraph, task_id: str) -> str:
    if task_id == graph.all_failed_callback_id:
        return "all-failed"
    if graph.is_handler(TaskId(task_id)):
        return "on-failure"
    if task_id in graph.root_ids:
        return "root"
    return "node"


async def read_graph(
    store: ResultsStore, graph_id: str
) -> tuple[TaskGraph, list[NodeView], NodeRecord | None] | None:
    """The graph, a view of each node, and its end record; None if it is not stored."""
    blob = await store.read(graph_blob(graph_id))
    if blob is None:
        return None
    structure = TaskGraph.from_stored(blob.data)
    records = Records(store)
    semaphore = asyncio.Semaphore(READ_CONCURRENCY)

    async def view(task_id: TaskId) -> NodeView:
        async with semaphore:
            got = await records.get(node_blob(graph_id, task_id))
        return NodeView(
            task_id=str(task_id),
            function_name=structure.tasks[task_id].function_name,
            role=_role(structure, task_id),
            record=got[0] if got else None,
        )

    views = list(await asyncio.gather(*(view(task_id) for task_id in structure.tasks)))
    end = await records.get(graph_status_blob(graph_id))
    return structure, views, end[0] if end else None


@graph.command("status")
@click.argument("graph_id")
@_json_option
@results_options
def status_command(graph_id: str, as_json: bool, results: ResultsOptions) -> None:
    """Show every node's status in graph GRAPH_ID."""
    results.check()

    async def go() -> tuple[TaskGraph, list[NodeView], NodeRecord | None] | None:
        store = results.store()
        try:
            return await read_graph(store, graph_id)
        finally:
            await store.close()

    found = run(go())
    if found is None:
        raise click.ClickException(
            f"graph {graph_id} is not in results container {results.container}"
        )
    _structure, views, end = found
    ended = end is not None and end.status.finished
    failed = end is not None and end.failure_seen
    if as_json:
        echo_json(
            {
                "graph_id": graph_id,
                "ended": ended,
                "failed": failed,
                "nodes": [view.to_dict() for view in views],
            }
        )
        return
    rows = [
        [
            view.task_id,
            view.function_name,
            view.role,
            view.status,
            str(view.record.attempt) if view.record else "0",
            when(view.record.updated_at) if view.record else "-",
            "; ".join(view.record.errors or []) if view.record else "",
        ]
        for view in views
    ]
    click.echo(
        table(["TASK ID", "FUNCTION", "ROLE", "STATUS", "ATTEMPT", "UPDATED (UTC)", "ERRORS"], rows)
    )
    state = "ended" if ended else "running"
    if ended:
        state += ", with failures" if failed else ", all succeeded"
    click.echo(f"Graph {graph_id}: {len(views)} node(s), {state}.")


@graph.command("recover")
@click.argument("graph_id")
@click.option(
    "--stalled-after",
    type=DURATION,
    default="1h",
    show_default=True,
    help="Re-dispatch nodes scheduled, started or retrying for longer than this.",
)
@_json_option
@results_options
@service_bus_options
def recover_command(
    graph_id: str,
    stalled_after: float,
    as_json: bool,
    results: ResultsOptions,
    bus: ServiceBusOptions,
) -> None:
    """Re-dispatch stalled nodes of graph GRAPH_ID.

    Stalled: scheduled, started or retrying for longer than --stalled-after,
    or pending although everything it waits on has settled. A re-dispatched
    node runs at most once more: its claim resolves duplicates.
    """
    from datetime import timedelta

    from boilermaker.app import Boilermaker

    results.check()
    bus.check()

    async def go() -> list[str]:
        app = Boilermaker(None, bus.broker(), results_storage=results.store())
        try:
            acted = await app.recover_graph(graph_id, timedelta(seconds=stalled_after))
        except LookupError:
            raise click.ClickException(
                f"graph {graph_id} is not in results container {results.container}"
            ) from None
        finally:
            await app.close()
        return [str(task_id) for task_id in acted]

    acted = run(go())
    if as_json:
        echo_json({"graph_id": graph_id, "redispatched": acted})
        return
    if not acted:
        click.echo(f"Graph {graph_id}: nothing stalled.")
        return
    click.echo(f"Graph {graph_id}: re-dispatched {len(acted)} node(s):")
    for task_id in acted:
        click.echo(f"  {task_id}")

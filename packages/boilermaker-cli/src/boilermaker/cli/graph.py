"""Graph commands: ``graph status`` / ``graph recover``, and 1.4.1's ``inspect``, ``recover``
and ``invoke``.

Each pair is one implementation: ``graph status`` and ``inspect`` read and
render a graph through :mod:`boilermaker.cli.graph_view`; ``graph recover``
and ``recover`` both run :func:`boilermaker.graph_recovery.recover_nodes`.
The 1.4.1 commands keep its exit statuses: 0 fine, 1 stalled (``inspect``)
or some node not recovered (``recover``), 2 error (usage errors included).
"""

from __future__ import annotations

import webbrowser
from pathlib import Path
from typing import Any

import click

from boilermaker.cli.connection import (
    ResultsOptions,
    ServiceBusOptions,
    results_options,
    service_bus_options,
)
from boilermaker.cli.errors import CommandError, run
from boilermaker.cli.graph_picture import default_picture_path, write_picture
from boilermaker.cli.graph_view import (
    GraphView,
    NodeView,
    node_detail,
    node_table,
    read_view,
    summary,
    view_of,
)
from boilermaker.cli.output import echo_json, redact
from boilermaker.cli.times import DURATION
from boilermaker.graph_recovery import RecoveryReport, progress_of, read_graph, recover_nodes
from boilermaker.graph_recovery import redispatch as redispatch_node
from boilermaker.ids import TaskId

#: Exit statuses of the 1.4.1 commands.
EXIT_OK, EXIT_STALLED, EXIT_ERROR = 0, 1, 2
#: Also 1: some node could not be recovered.
EXIT_SOME_FAILED = 1

_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


class BlobId(click.ParamType):
    """A graph or task id: it becomes part of a blob name, so no path separators."""

    name = "id"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = str(value)
        if not text or len(text) > 200:
            self.fail(f"{text!r} is not an id: 1-200 characters", param, ctx)
        if any(c in text for c in "/\\") or text in (".", "..") or not text.isprintable():
            self.fail(
                f"{text!r} is not an id: no '/', '\\', control characters, '.' or '..'",
                param,
                ctx,
            )
        return text


BLOB_ID = BlobId()


def _not_found(graph_id: str, results: ResultsOptions, exit_code: int) -> CommandError:
    return CommandError(
        f"graph {graph_id} is not in results container {results.container}", exit_code
    )


def load_view(results: ResultsOptions, graph_id: str, exit_code: int) -> GraphView:
    """Read graph ``graph_id`` (an error with ``exit_code`` if it is not stored).

    Reads only, so through :meth:`ResultsOptions.reader` (no Azure SDK to import
    when a connection string is the setting).
    """
    results.check()

    async def go() -> GraphView | None:
        store = results.reader()
        try:
            return await read_view(store, graph_id)
        finally:
            await store.close()

    view = run(go(), exit_code, read_only=True)
    if view is None:
        raise _not_found(graph_id, results, exit_code)
    return view


def show_view(view: GraphView, as_json: bool) -> None:
    """Print the graph: the JSON document, or the node table and a summary line."""
    if as_json:
        echo_json(view.to_dict())
        return
    click.echo(node_table(view))
    click.echo(summary(view))


@click.group()
def graph() -> None:
    """Inspect and recover task graphs (needs the results store)."""


@graph.command("status")
@click.argument("graph_id", type=BLOB_ID)
@_json_option
@results_options
def status_command(graph_id: str, as_json: bool, results: ResultsOptions) -> None:
    """Show every node's status in graph GRAPH_ID (the same report as "inspect")."""
    show_view(load_view(results, graph_id, exit_code=1), as_json)


# -- inspect ----------------------------------------------------------------------------------


@click.command("inspect")
@click.option("--graph", "graph_id", type=BLOB_ID, required=True, help="The graph to show.")
@click.option("--task", "task_id", type=BLOB_ID, help="Show this node of the graph in detail.")
@_json_option
@click.option(
    "--visual",
    is_flag=True,
    help="Write an HTML picture of the graph (works offline) and print its path.",
)
@click.option(
    "--output",
    "output",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Where --visual writes the page (default: a file in the temporary directory).",
)
@click.option("--open", "open_browser", is_flag=True, help="Open the --visual page in a browser.")
@results_options
def inspect(
    graph_id: str,
    task_id: str | None,
    as_json: bool,
    visual: bool,
    output: Path | None,
    open_browser: bool,
    results: ResultsOptions,
) -> None:
    """Show graph --graph: every node's status, or one node (--task), as a table,
    JSON (--json) or an HTML picture (--visual).

    Exit status: 0 healthy, 1 stalled nodes found (Scheduled, Started or Retry;
    with --task: that node is stalled), 2 error.
    """
    if visual and as_json:
        raise click.UsageError("--visual and --json cannot be combined (choose one output)")
    if visual and task_id:
        raise click.UsageError("--visual draws the whole graph; it cannot be combined with --task")
    if (output or open_browser) and not visual:
        raise click.UsageError("--output and --open go with --visual")
    view = load_view(results, graph_id, exit_code=EXIT_ERROR)
    node = view.node(task_id) if task_id else None
    if task_id and node is None:
        known = ", ".join(n.task_id for n in view.nodes[:10])
        more = ", ..." if len(view.nodes) > 10 else ""
        raise CommandError(f"task {task_id} is not in graph {graph_id} ({known}{more})", EXIT_ERROR)
    if visual:
        path = write_picture(view, output or default_picture_path(view.graph_id))
        click.echo(str(path))
        if open_browser:
            webbrowser.open(path.resolve().as_uri())
    elif node is not None:
        if as_json:
            echo_json({**view.to_dict(), "task": node.detail_dict(view.graph_id)})
        else:
            click.echo(node_detail(view, node))
    else:
        show_view(view, as_json)
    stalled = node.stalled if node is not None else bool(view.stalled)
    raise click.exceptions.Exit(EXIT_STALLED if stalled else EXIT_OK)


# -- recover ----------------------------------------------------------------------------------


def recover_graph(
    results: ResultsOptions,
    bus: ServiceBusOptions,
    graph_id: str,
    stalled_after: float,
    exit_code: int,
) -> tuple[RecoveryReport, dict[TaskId, str]]:
    """Recover graph ``graph_id`` with ``recover_nodes``; the report, and each node's
    function name (for printing it)."""
    from datetime import timedelta

    from boilermaker.app import Boilermaker

    results.check()
    bus.check()

    async def go() -> tuple[RecoveryReport, dict[TaskId, str]] | None:
        app = Boilermaker(None, bus.broker(), results_storage=results.store())
        try:
            runtime = app.graphs
            structure = await runtime.load(graph_id)
            if structure is None:
                return None
            names = {t: task.function_name for t, task in structure.tasks.items()}
            report = await recover_nodes(runtime, graph_id, timedelta(seconds=stalled_after))
            return report, names
        finally:
            await app.close()

    found = run(go(), exit_code)
    if found is None:
        raise _not_found(graph_id, results, exit_code)
    return found


def show_recovery(report: RecoveryReport, names: dict[TaskId, str], as_json: bool) -> None:
    """Print what recovery did, node by node."""
    if as_json:
        echo_json(
            {
                "graph_id": str(report.graph_id),
                "recovered": [
                    {"task_id": t, "function_name": names.get(t), "message_id": m}
                    for t, m in report.recovered.items()
                ],
                "failed": [
                    {"task_id": t, "function_name": names.get(t), "error": redact(str(e))}
                    for t, e in report.failed.items()
                ],
                "redispatched": list(report.recovered),
            }
        )
        return
    if not report.recovered and not report.failed:
        click.echo(f"Graph {report.graph_id}: nothing stalled.")
        return
    for task_id, message_id in report.recovered.items():
        click.echo(f"Recovered  {names.get(task_id)} ({task_id}) as message {message_id}")
    for task_id, error in report.failed.items():
        click.echo(f"Failed     {names.get(task_id)} ({task_id}): {redact(str(error))}")
    click.echo(
        f"Graph {report.graph_id}: re-dispatched {len(report.recovered)} node(s)"
        + (f", {len(report.failed)} failed." if report.failed else ".")
    )


_stalled_after_help = (
    "Re-dispatch nodes scheduled, started or retrying for longer than this; Pending nodes "
    "whose dependencies allow them to run are dispatched too."
)


@graph.command("recover")
@click.argument("graph_id", type=BLOB_ID)
@click.option(
    "--stalled-after", type=DURATION, default="1h", show_default=True, help=_stalled_after_help
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
    """Re-dispatch stalled nodes of graph GRAPH_ID (exit 1 if any failed).

    A re-dispatched node gets message id <task_id>:recovery:<unix time> and
    runs at most once more: its claim resolves duplicates.
    """
    report, names = recover_graph(results, bus, graph_id, stalled_after, exit_code=1)
    show_recovery(report, names, as_json)
    if report.failed:
        raise click.exceptions.Exit(EXIT_SOME_FAILED)


@click.command("recover")
@click.option("--graph", "graph_id", type=BLOB_ID, required=True, help="The graph to recover.")
@click.option(
    "--stalled-after", type=DURATION, default="0s", show_default=True, help=_stalled_after_help
)
@_json_option
@results_options
@service_bus_options
def recover(
    graph_id: str,
    stalled_after: float,
    as_json: bool,
    results: ResultsOptions,
    bus: ServiceBusOptions,
) -> None:
    """Re-publish the Scheduled, Started and Retry nodes of graph --graph.

    Each gets message id <task_id>:recovery:<unix time>. Exit status: 0 all
    recovered (or nothing to do), 1 some failed, 2 error. The same as
    "graph recover", with nothing held back by default.
    """
    report, names = recover_graph(results, bus, graph_id, stalled_after, exit_code=EXIT_ERROR)
    show_recovery(report, names, as_json)
    raise click.exceptions.Exit(EXIT_SOME_FAILED if report.failed else EXIT_OK)


# -- invoke -----------------------------------------------------------------------------------


def _refusal(node: NodeView, force: bool) -> str | None:
    """Why ``invoke`` will not publish this node, or None."""
    record = node.record
    if record is None:
        return f"task {node.task_id} has no record in the graph; nothing to run it against"
    if record.skipped:
        return (
            f"task {node.task_id} was skipped (the graph decided it never runs); "
            "it cannot be invoked"
        )
    if record.status.succeeded:
        return (
            f"task {node.task_id} succeeded; a node that succeeded never runs again "
            "(its claim refuses it), so invoking it would do nothing"
        )
    if record.status.finished and not force:
        return f"task {node.task_id} is finished ({record.status.value}); pass --force to re-run it"
    return None


@click.command("invoke")
@click.argument("task_id", type=BLOB_ID)
@click.option("--graph", "graph_id", type=BLOB_ID, required=True, help="The task's graph.")
@click.option(
    "--force", is_flag=True, help="Also re-run a task that failed (its node is reset first)."
)
@_json_option
@results_options
@service_bus_options
def invoke(
    task_id: str,
    graph_id: str,
    force: bool,
    as_json: bool,
    results: ResultsOptions,
    bus: ServiceBusOptions,
) -> None:
    """Publish node TASK_ID of graph --graph now, as message <task_id>:invoke:<unix time>.

    Its node is reset to Scheduled (unclaimed) first so a worker runs it. A
    finished task needs --force; one that succeeded or was skipped cannot be
    re-run. Exit status: 0 published, 2 error.
    """
    from boilermaker.app import Boilermaker

    results.check()
    bus.check()

    async def go() -> tuple[NodeView, str]:
        app = Boilermaker(None, bus.broker(), results_storage=results.store())
        try:
            runtime = app.graphs
            graph = await read_graph(runtime, graph_id)
            if graph is None:
                raise _not_found(graph_id, results, EXIT_ERROR)
            view = view_of(graph, await progress_of(runtime, graph))
            node = view.node(task_id)
            if node is None:
                raise CommandError(f"task {task_id} is not in graph {graph_id}", EXIT_ERROR)
            refusal = _refusal(node, force)
            if refusal is not None:
                raise CommandError(refusal, EXIT_ERROR)
            message_id = await redispatch_node(
                runtime, graph, TaskId(task_id), "invoke", rerun_failed=force
            )
            if message_id is None:
                raise CommandError(
                    f"task {task_id} changed while it was being invoked; inspect it and retry",
                    EXIT_ERROR,
                )
            return node, message_id
        finally:
            await app.close()

    node, message_id = run(go(), EXIT_ERROR)
    if as_json:
        echo_json(
            {
                "graph_id": graph_id,
                "task_id": task_id,
                "function_name": node.function_name,
                "previous_status": node.status,
                "message_id": message_id,
            }
        )
        return
    click.echo(f"Invoked  {node.function_name} ({task_id}) as message {message_id}")

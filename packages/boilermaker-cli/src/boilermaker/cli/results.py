"""``boilermaker results get``: a task's stored status, result or error."""

from __future__ import annotations

from typing import Any

import click

from boilermaker.cli.connection import ResultsOptions, results_options
from boilermaker.cli.errors import run
from boilermaker.cli.graph_view import record_lines
from boilermaker.cli.output import echo_json
from boilermaker.exceptions import ResultNotReady
from boilermaker.results import NodeRecord, Records, node_blob, standalone_blob


@click.group()
def results() -> None:
    """Read task results from the results store."""


@results.command("get")
@click.argument("task_id")
@click.option("--graph-id", help="The graph the task belongs to (graph tasks are stored under it).")
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=0,
    help="Seconds to wait for the task to finish (default: read once).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@results_options
def get_command(
    task_id: str, graph_id: str | None, wait: float, as_json: bool, results: ResultsOptions
) -> None:
    """Show the stored status and result (or error) of task TASK_ID.

    With --wait, waits for the task to finish and exits with status 1 if it
    has not finished in time (the record so far is still shown).
    """
    results.check()

    async def go() -> tuple[NodeRecord | None, bool]:
        store = results.reader()  # reads only (waiting included)
        timed_out = False
        try:
            if wait > 0:
                from boilermaker.app import Boilermaker

                app = Boilermaker(None, results_storage=store)
                try:
                    await app.get_result(task_id, timeout=wait, graph_id=graph_id)
                except ResultNotReady as exc:
                    timed_out = True
                    click.echo(f"Not finished after {wait:g}s: {exc}", err=True)
            name = node_blob(graph_id, task_id) if graph_id else standalone_blob(task_id)
            got = await Records(store).get(name)
            return (got[0] if got else None), timed_out
        finally:
            await store.close()

    record, timed_out = run(go(), read_only=True)
    if record is None:
        where = (
            f"graph {graph_id}"
            if graph_id
            else "standalone results (pass --graph-id for graph tasks)"
        )
        raise click.ClickException(f"no result stored for task {task_id} in {where}")
    _print_record(record, as_json)
    if timed_out:
        raise click.exceptions.Exit(1)


def _print_record(record: NodeRecord, as_json: bool) -> None:
    if as_json:
        doc: dict[str, Any] = record.model_dump(mode="json")
        echo_json(doc)
        return
    lines = [
        f"Task id:    {record.task_id}",
        f"Graph id:   {record.graph_id or '-'}",
        *record_lines(record),
    ]
    click.echo("\n".join(lines))

"""Publish one task graph (Service Bus + blob results store) and exit without running it.

    python graph_publish.py --connection-string CS --queue NAME --storage-connection-string SCS
                            --blob-url URL --account-key KEY --container NAME

Runs unchanged under either library (only the clients' construction differs,
in ``workload.py``). The graph: ``root`` with a failure handler
``on_root_failed``, then ``left`` and ``right`` in parallel, joined by
``join``, then ``tail``::

    root -> (left, right) -> join -> tail        root --failure--> on_root_failed

Prints ``{"library": ..., "graph_id": ..., "nodes": {task_id: function},
"fail_nodes": {task_id: function}, "close_error": ...}``.
"""

from __future__ import annotations

import argparse
import asyncio

from workload import close_quietly, emit, log_to_stderr, results_store, service_bus_client

from boilermaker import Boilermaker
from boilermaker.task import TaskGraphBuilder


async def root(state): ...
async def left(state): ...
async def right(state): ...
async def join(state): ...
async def tail(state): ...
async def on_root_failed(state): ...


GRAPH_FUNCTIONS = (root, left, right, join, tail, on_root_failed)


class State:
    """Nothing runs here; an object, since 1.4.1 cannot weakly reference a dict."""


async def main(args: argparse.Namespace) -> int:
    state = State()  # the app may hold it weakly: this reference keeps it alive
    store = results_store(
        args.storage_connection_string, args.blob_url, args.account_key, args.container
    )
    app = Boilermaker(
        state,
        service_bus_client(args.connection_string, args.queue),
        results_storage=store,
    )
    app.register_many_async(list(GRAPH_FUNCTIONS))
    graph = (
        TaskGraphBuilder()
        .add(app.create_task(root), on_failure=app.create_task(on_root_failed))
        .parallel(app.create_task(left), app.create_task(right))
        .then(app.create_task(join))
        .then(app.create_task(tail))
        .build()
    )
    await app.publish_graph(graph)
    emit(
        {
            "graph_id": str(graph.graph_id),
            "nodes": {str(t): task.function_name for t, task in graph.children.items()},
            "fail_nodes": {str(t): task.function_name for t, task in graph.fail_children.items()},
            "close_error": await close_quietly(app),
        }
    )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    for name in (
        "connection-string",
        "queue",
        "storage-connection-string",
        "blob-url",
        "account-key",
        "container",
    ):
        parser.add_argument(f"--{name}", required=True)
    log_to_stderr()
    raise SystemExit(asyncio.run(main(parser.parse_args())))

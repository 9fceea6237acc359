"""Read a task graph's progress from the blob results store, as an application would.

    python graph_read.py --storage-connection-string SCS --blob-url URL --account-key KEY
                         --container NAME --graph-id ID

Runs unchanged under either library, through the reading side of the
documented API: ``load_graph`` and the graph's ``get_status``,
``completed_successfully``, ``is_complete``, ``has_failures`` and
``detect_stalled_tasks``. Prints ``{"library": ..., "found": bool,
"statuses": {function: status}, "fail_statuses": {...}, "completed_successfully":
..., "is_complete": ..., "has_failures": ..., "stalled": [function, ...]}``.
"""

from __future__ import annotations

import argparse
import asyncio

from workload import emit, log_to_stderr, results_store


def status_name(status) -> str | None:
    return None if status is None else str(getattr(status, "value", status))


async def main(args: argparse.Namespace) -> int:
    store = results_store(
        args.storage_connection_string, args.blob_url, args.account_key, args.container
    )
    try:
        graph = await store.load_graph(args.graph_id)
        if graph is None:
            emit({"found": False})
            return 0
        emit(
            {
                "found": True,
                "statuses": {
                    task.function_name: status_name(graph.get_status(task_id))
                    for task_id, task in graph.children.items()
                },
                "fail_statuses": {
                    task.function_name: status_name(graph.get_status(task_id))
                    for task_id, task in graph.fail_children.items()
                },
                "completed_successfully": graph.completed_successfully(),
                "is_complete": graph.is_complete(),
                "has_failures": graph.has_failures(),
                "stalled": sorted(name for _id, name, _status in graph.detect_stalled_tasks()),
            }
        )
    finally:
        close = getattr(store, "close", None)
        if close is not None:
            await close()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    for name in ("storage-connection-string", "blob-url", "account-key", "container", "graph-id"):
        parser.add_argument(f"--{name}", required=True)
    log_to_stderr()
    raise SystemExit(asyncio.run(main(parser.parse_args())))

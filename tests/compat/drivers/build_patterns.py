"""Build the published examples' graph patterns and print their shape as one JSON line.

    python build_patterns.py

Runs unchanged under either library (1.4.1's interpreter or ours). Each
pattern is built with ``TaskGraphBuilder`` from ``Task.si`` tasks of distinct
async functions, then described through the graph's reading attributes
(``children``, ``fail_children``, ``edges``, ``fail_edges``,
``all_failed_callback_id``) with every task id replaced by its function name,
so two graphs compare edge by edge. A pattern that cannot be built or read
reports ``{"error": "..."}`` instead; the other patterns still run.

Output: ``{"library": VERSION, "patterns": {NAME: SHAPE | {"error": ...}}}``.
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
import traceback

from boilermaker.task import Task, TaskChain, TaskGraphBuilder


async def fetch(state): ...
async def process(state): ...
async def save(state): ...
async def notify(state): ...
async def cleanup(state): ...
async def aggregate(state): ...
async def a1(state): ...
async def a2(state): ...
async def b1(state): ...
async def b2(state): ...
async def join(state): ...
async def handler(state): ...
async def first(state): ...
async def second(state): ...
async def third(state): ...


def si(fn):
    return Task.si(fn)


def sequential():
    return TaskGraphBuilder().add(si(fetch)).then(si(process)).then(si(save)).build()


def fan_out():
    return TaskGraphBuilder().add(si(fetch)).parallel(si(notify), si(cleanup)).build()


def fan_in():
    builder = TaskGraphBuilder().parallel(si(fetch), si(process), si(save))
    return builder.then(si(aggregate)).build()


def diamond():
    builder = TaskGraphBuilder().add(si(fetch)).parallel(si(process), si(save))
    return builder.then(si(aggregate)).build()


def independent_chains_join():
    return (
        TaskGraphBuilder()
        .add_chain(TaskChain(si(a1), si(a2)), depends_on=None)
        .add_chain(TaskChain(si(b1), si(b2)), depends_on=None)
        .then(si(join))
        .build()
    )


def inline_failure_handler():
    return TaskGraphBuilder().add(si(fetch), on_failure=si(handler)).then(si(process)).build()


def chain_shared_failure_handler():
    chain = TaskChain(si(first), si(second), si(third), on_any_failure=si(handler))
    return TaskGraphBuilder().add_chain(chain).build()


def add_then_add():
    return TaskGraphBuilder().add(si(first)).add(si(second)).build()


def parallel_shared_failure_handler():
    builder = TaskGraphBuilder().add(si(fetch))
    return builder.parallel(si(notify), si(cleanup), on_failure=si(handler)).build()


def sequence_call():
    return TaskGraphBuilder().sequence(si(first), si(second), si(third)).build()


def explicit_roots_and_depends_on():
    chain = TaskChain(si(a1), si(a2))
    start = si(first)
    return (
        TaskGraphBuilder()
        .add(start, depends_on=None)
        .add_chain(chain, depends_on=None)
        .add(si(second), depends_on=None)
        .add(si(join), depends_on=[start, chain])
        .build()
    )


def all_failed_callback():
    return TaskGraphBuilder().add(si(first)).then(si(second)).build(on_all_failed=si(handler))


PATTERNS = {
    "sequential": sequential,
    "fan_out": fan_out,
    "fan_in": fan_in,
    "diamond": diamond,
    "independent_chains_join": independent_chains_join,
    "inline_failure_handler": inline_failure_handler,
    "chain_shared_failure_handler": chain_shared_failure_handler,
    "add_then_add": add_then_add,
    "parallel_shared_failure_handler": parallel_shared_failure_handler,
    "sequence": sequence_call,
    "explicit_roots_and_depends_on": explicit_roots_and_depends_on,
    "all_failed_callback": all_failed_callback,
}


def shape(graph):
    """The graph with task ids replaced by function names (each name is one task here)."""
    tasks = {**graph.children, **graph.fail_children}
    names = {task_id: task.function_name for task_id, task in tasks.items()}

    def name(task_id):
        return names.get(task_id, f"<unknown id {task_id}>")

    def edges(mapping):
        return {
            name(parent): sorted(name(kid) for kid in kids)
            for parent, kids in sorted(mapping.items(), key=lambda item: name(item[0]))
            if kids
        }

    all_failed = graph.all_failed_callback_id
    return {
        "nodes": sorted(name(t) for t in graph.children),
        "fail_nodes": sorted(name(t) for t in graph.fail_children),
        "edges": edges(graph.edges),
        "fail_edges": edges(graph.fail_edges),
        "all_failed_callback": None if all_failed is None else name(all_failed),
    }


def main():
    out = {}
    for pattern, build in PATTERNS.items():
        try:
            out[pattern] = shape(build())
        except Exception as exc:
            last = traceback.extract_tb(exc.__traceback__)[-1]
            out[pattern] = {
                "error": f"{type(exc).__name__}: {exc}",
                "where": f"{last.name}: {last.line}",
            }
    library = importlib.metadata.version("boilermaker-servicebus")
    print(json.dumps({"library": library, "patterns": out}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

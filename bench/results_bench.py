"""Task graphs on the blob results store (Azurite): time to completion and blob operations per node.

    uv run python -m bench.results_bench [--sizes 10,100,1000] [--quick]

Each run gets a fresh container in one Azurite server, core's in-memory broker
and one worker at the default concurrency. Reported per run: seconds from
``publish_graph`` to a drained queue, nodes per second, and blob requests per
node by kind (``BlobClientStorage.operations``). The flatness rows show that a
node's cost does not grow with the graph (O(N + E) requests in total).

Implementations are pluggable (:data:`RUNNERS`): each runner takes a scenario
and the Azurite server and returns a :class:`Measurement`, so the published
1.4.1 library can be measured the same way beside this one.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from boilermaker import Boilermaker
from boilermaker.memory import InMemoryBroker
from boilermaker.storage import BlobClientStorage
from boilermaker.storage.azurite import Azurite
from boilermaker.task import TaskGraph, TaskGraphBuilder

Shape = Literal["fan", "chain"]
OPERATION_KINDS = ("read", "write", "lease", "find", "list", "delete")


@dataclass(frozen=True, slots=True)
class Scenario:
    """A graph shape and its total node count.

    ``fan``: one root, ``nodes - 2`` parallel tasks, one task joining them.
    ``chain``: ``nodes`` tasks one after another.
    """

    shape: Shape
    nodes: int

    @property
    def label(self) -> str:
        if self.shape == "fan":
            return f"fan-out 1 -> {self.nodes - 2} -> 1"
        return f"chain of {self.nodes}"


@dataclass(slots=True)
class Measurement:
    """What one implementation did on one scenario."""

    implementation: str
    scenario: Scenario
    seconds: float
    operations: Counter[str] = field(default_factory=Counter)

    @property
    def total_operations(self) -> int:
        return sum(self.operations.values())

    @property
    def per_node(self) -> float:
        return self.total_operations / self.scenario.nodes

    @property
    def nodes_per_second(self) -> float:
        return self.scenario.nodes / self.seconds if self.seconds else float("inf")


Runner = Callable[[Scenario, Azurite], Awaitable[Measurement]]


# -- this library -----------------------------------------------------------------------


def build_graph(app: Boilermaker, scenario: Scenario) -> TaskGraph:
    """The scenario's graph of no-op ``node`` tasks."""
    tasks = [app.create_task("node", i) for i in range(scenario.nodes)]
    builder = TaskGraphBuilder()
    if scenario.shape == "chain":
        builder.sequence(*tasks)
    else:
        if scenario.nodes < 3:
            raise ValueError("a fan-out needs at least 3 nodes")
        root, *middle, sink = tasks
        builder.add(root).parallel(middle).then(sink)
    return builder.build()


async def run_boilermaker(scenario: Scenario, azurite: Azurite) -> Measurement:
    """This library: BlobClientStorage on Azurite, InMemoryBroker, one default worker."""
    container = f"bench-{scenario.shape}-{scenario.nodes}-{time.monotonic_ns()}"
    store = BlobClientStorage.from_connection_string(
        azurite.connection_string, container, create_container=True
    )
    await store.ensure_container()
    app = Boilermaker({}, InMemoryBroker(), results_storage=store)

    async def node(state: Any, i: int) -> None:
        return None

    app.register_async(node)
    graph = build_graph(app, scenario)
    try:
        started = time.perf_counter()
        await app.publish_graph(graph)
        await app.run_until_idle(timeout=900)
        seconds = time.perf_counter() - started
        operations = Counter(store.operations)
        progress = await app.graph_progress(graph.graph_id)
        if progress is None or not progress.complete or progress.failed:
            raise RuntimeError(f"{scenario.label}: the graph did not complete ({progress})")
        return Measurement("boilermaker 2.0", scenario, seconds, operations)
    finally:
        await store.container_client.delete_container()
        await app.close()


#: Implementations to measure, by name. The published 1.4.1 library joins here
#: once it can run against the Service Bus emulator.
RUNNERS: dict[str, Runner] = {"boilermaker 2.0": run_boilermaker}


# -- reporting --------------------------------------------------------------------------


def format_table(rows: Sequence[Measurement], title: str) -> str:
    """A plain-text table of measurements."""
    header = (
        f"{'implementation':<16} {'scenario':<24} {'nodes':>5} {'seconds':>8} "
        f"{'nodes/s':>8} {'ops/node':>8} " + " ".join(f"{kind:>6}" for kind in OPERATION_KINDS)
    )
    lines = [title, header, "-" * len(header)]
    for m in rows:
        per_kind = " ".join(
            f"{m.operations.get(kind, 0) / m.scenario.nodes:>6.2f}" for kind in OPERATION_KINDS
        )
        lines.append(
            f"{m.implementation:<16} {m.scenario.label:<24} {m.scenario.nodes:>5} "
            f"{m.seconds:>8.2f} {m.nodes_per_second:>8.1f} {m.per_node:>8.2f} {per_kind}"
        )
    return "\n".join(lines)


async def measure(
    scenarios: Sequence[Scenario], azurite: Azurite, runners: dict[str, Runner]
) -> list[Measurement]:
    """Run every scenario with every runner, one at a time."""
    results = []
    for scenario in scenarios:
        for name, runner in runners.items():
            print(f"  {name}: {scenario.label} ...", file=sys.stderr, flush=True)
            results.append(await runner(scenario, azurite))
    return results


async def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--sizes",
        default="10,100,1000",
        help="node counts for the flatness runs (default 10,100,1000)",
    )
    parser.add_argument("--quick", action="store_true", help="only the two headline runs")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]

    headline = [Scenario("fan", 102), Scenario("chain", 100)]
    flatness = [] if args.quick else [Scenario(s, n) for s in ("chain", "fan") for n in sizes]

    if not Azurite.available():
        print("Azurite is not installed: run `npm ci` at the repository root", file=sys.stderr)
        return 2
    with Azurite() as azurite:
        first = await measure(headline, azurite, RUNNERS)
        print(format_table(first, "Task graphs on Azurite, one worker, default concurrency"))
        if flatness:
            rows = await measure(flatness, azurite, RUNNERS)
            print()
            print(format_table(rows, "Blob operations per node as the graph grows"))
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))

"""Task graphs on the Service Bus emulator and Azurite: Boilermaker beside the published 1.4.1.

    uv run python -m bench.graph_bench [--quick] [--skip-published]

One emulator and one Azurite serve every run. Each run gets a fresh queue
(duplicate detection on) and a fresh container, and one worker at the
default concurrency (ours: 16 tasks in flight; 1.4.1: one message at a time,
its only mode). Every node is a no-op, so the figures are the cost of graph
dispatch itself.

Measured per run:

- **time to completion**: from the start of ``publish_graph`` until the sink's
  record says Success (the sink's function signals the harness, which then
  reads that record every 10 ms through a separate, uncounted client). Both
  sides are warmed up first with a one-node graph, so connection set-up is
  not counted;
- **tasks/s**: nodes / time to completion;
- **blob requests per node**: every HTTP request to Azurite from publishing
  and from the worker, until the graph has gone quiet, divided by the number
  of nodes. Ours is read from ``BlobClientStorage.operations`` and checked
  against an HTTP-level count; 1.4.1 is counted at the HTTP level only. The
  HTTP count is azure-storage-blob's ``raw_request_hook`` (run for every
  request actually sent, retries included), passed to our store's client and,
  for 1.4.1, to the ``BlobServiceClient`` it builds for every operation (a
  subclass of its ``BlobClientStorage`` overrides ``get_blob_service_client``).

Last, each shape's worst requests per node over every graph measured is set
against issue 14's ceilings (a chain node at most 4.5 requests, a fan-out
node at most 5; the protocol before it needed 6.0 and 6.5), with 1.4.1's
figure from the same run beside it.

The published ``boilermaker-servicebus==1.4.1`` runs in a subprocess, in the
pinned environment the compatibility tests use (``tests/compat/published_env.py``,
installed by ``make install``, or here on first use). It is wired with its
``Boilermaker``, the toolbox's ``ManagedAzureServiceBusSender`` on the
emulator's connection string (its readiness message set to the library's own
debug task, as its ``AzureServiceBus`` wrapper does), and its
``BlobClientStorage`` on Azurite's account URL with the account key as
credential. 1.4.1 holds ``state`` through a weak proxy, so the child keeps
the strong reference.

Then ops/node of ours alone for chains and fan-outs (1 -> N-2 -> 1) of 10,
100 and 1,000 nodes, which should stay flat.

Targets: fan-out/fan-in and chain >= 5x faster than 1.4.1; ops/node flat
from 10 to 1,000 nodes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.compat import published_env

from boilermaker import Boilermaker
from boilermaker.emulator.config import QueueSettings
from boilermaker.emulator.server import ServiceBusEmulator
from boilermaker.results import Records, node_blob
from boilermaker.service_bus import AzureServiceBus
from boilermaker.storage import BlobClientStorage
from boilermaker.storage.azurite import ACCOUNT_KEY, Azurite
from boilermaker.task import TaskGraph, TaskGraphBuilder, TaskStatus

REPO_ROOT = Path(__file__).resolve().parent.parent
PUBLISHED_VERSION = published_env.VERSION
PUBLISHED_CHILD = REPO_ROOT / ".bench" / f"graph_child_{PUBLISHED_VERSION}.py"

#: How long the graph must have made no blob request to count as quiet.
QUIET = 0.5


@dataclass(frozen=True, slots=True)
class Shape:
    """A graph shape: ``fanout`` is 1 -> nodes-2 -> 1, ``chain`` is nodes in a row."""

    kind: str
    nodes: int

    @property
    def label(self) -> str:
        if self.kind == "fanout":
            return f"fan-out 1->{self.nodes - 2}->1"
        return f"chain of {self.nodes}"


@dataclass(frozen=True, slots=True)
class Result:
    """One measured run."""

    impl: str
    shape: Shape
    seconds: float
    requests: int
    http_requests: int
    by_kind: dict[str, int]

    @property
    def tasks_per_second(self) -> float:
        return self.shape.nodes / self.seconds

    @property
    def per_node(self) -> float:
        return self.requests / self.shape.nodes

    @classmethod
    def from_json(cls, doc: dict[str, Any], shape: Shape) -> Result:
        return cls(
            impl=doc["impl"],
            shape=shape,
            seconds=doc["seconds"],
            requests=doc["requests"],
            http_requests=doc["requests"],
            by_kind=doc["by_kind"],
        )


# -- ours -------------------------------------------------------------------------------


class Sink:
    """Shared state of the benchmark tasks: counts runs, signals when the sink ran."""

    def __init__(self) -> None:
        self.runs = 0
        self.sink_ran = asyncio.Event()


async def node(state: Sink, i: int, sink: bool = False) -> None:
    state.runs += 1
    if sink:
        state.sink_ran.set()


def build(app: Boilermaker, shape: Shape) -> TaskGraph:
    """The graph for ``shape``; the last task is the sink."""
    n = shape.nodes
    if shape.kind == "chain":
        tasks = [app.create_task(node, i, sink=(i == n - 1)) for i in range(n)]
        return TaskGraphBuilder().sequence(*tasks).build()
    root = app.create_task(node, 0)
    middle = [app.create_task(node, i) for i in range(1, n - 1)]
    join = app.create_task(node, n - 1, sink=True)
    builder = TaskGraphBuilder().add(root)
    return builder.parallel(*middle, depends_on=root).then(join).build()


def sink_id(graph: TaskGraph) -> str:
    (sink,) = graph.sink_ids
    return sink


class HttpCount:
    """azure-storage-blob ``raw_request_hook``: counts requests sent, by method."""

    def __init__(self) -> None:
        self.by_method: Counter[str] = Counter()
        self.last = time.monotonic()

    def __call__(self, request: Any) -> None:
        self.by_method[request.http_request.method] += 1
        self.last = time.monotonic()

    @property
    def total(self) -> int:
        return sum(self.by_method.values())


async def until_quiet(count: HttpCount, timeout: float = 60.0) -> None:
    """Wait until no blob request has been sent for ``QUIET`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        idle = time.monotonic() - count.last
        if idle >= QUIET:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"blob requests did not stop within {timeout}s")
        await asyncio.sleep(QUIET - idle)


async def wait_for_success(records: Records, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        got = await records.get(name)
        if got is not None and got[0].status is TaskStatus.Success:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} did not succeed within {timeout}s")
        await asyncio.sleep(0.01)


async def run_ours(
    emulator: ServiceBusEmulator, azurite: Azurite, shape: Shape, timeout: float = 600
) -> Result:
    queue = new_queue(emulator)
    container = f"bench-{uuid.uuid4().hex[:16]}"
    http = HttpCount()
    store = BlobClientStorage.from_connection_string(
        azurite.connection_string, container, create_container=True, raw_request_hook=http
    )
    watcher = BlobClientStorage.from_connection_string(azurite.connection_string, container)
    await store.ensure_container()
    state = Sink()
    app = Boilermaker(
        state,
        AzureServiceBus.from_connection_string(emulator.connection_string, queue),
        results_storage=store,
    )
    app.register_async(node)
    worker = app.worker(install_signal_handlers=False)
    running = asyncio.create_task(worker.run())
    records = Records(watcher)
    try:
        # Warm-up: connections to the queue and to Azurite.
        warm = TaskGraphBuilder().add(app.create_task(node, 0, sink=True)).build()
        await app.publish_graph(warm)
        await state.sink_ran.wait()
        await wait_for_success(records, node_blob(warm.graph_id, sink_id(warm)), timeout)
        await until_quiet(http)

        graph = build(app, shape)
        state.sink_ran.clear()
        store.operations.clear()
        http.by_method.clear()
        started = time.perf_counter()
        await app.publish_graph(graph)
        await asyncio.wait_for(state.sink_ran.wait(), timeout)
        await wait_for_success(records, node_blob(graph.graph_id, sink_id(graph)), timeout)
        seconds = time.perf_counter() - started
        await until_quiet(http)
        assert state.runs == shape.nodes + 1, f"{state.runs} runs for {shape.nodes} nodes"
        return Result(
            impl="ours",
            shape=shape,
            seconds=seconds,
            requests=sum(store.operations.values()),
            http_requests=http.total,
            by_kind=dict(store.operations),
        )
    finally:
        worker.stop()
        await running
        await store.container_client.delete_container()
        await watcher.close()
        await app.close()
        emulator.delete_queue(queue)


def new_queue(emulator: ServiceBusEmulator) -> str:
    name = f"graph-bench-{uuid.uuid4().hex[:12]}"
    emulator.create_queue(QueueSettings(name=name, requires_duplicate_detection=True))
    return name


# -- the published library, in its own venv -----------------------------------------------

CHILD_SOURCE = '''
"""Runs one graph on boilermaker-servicebus 1.4.1 (written by bench/graph_bench.py)."""

import argparse, asyncio, json, os, time
from collections import Counter

from aio_azure_clients_toolbox import ManagedAzureServiceBusSender
from azure.storage.blob.aio import BlobServiceClient
from boilermaker.app import Boilermaker
from boilermaker.sample import STATIC_DEBUG_TASK
from boilermaker.storage import BlobClientStorage
from boilermaker.task import TaskGraphBuilder, TaskStatus

QUIET = 0.5


class HttpCount:
    def __init__(self):
        self.by_method = Counter()
        self.last = time.monotonic()

    def __call__(self, request):
        self.by_method[request.http_request.method] += 1
        self.last = time.monotonic()


class CountedStorage(BlobClientStorage):
    """1.4.1 builds a BlobServiceClient per operation; this one counts its requests."""

    count = None

    def get_blob_service_client(self):
        return BlobServiceClient(
            self.az_storage_url, credential=self.credentials, raw_request_hook=self.count
        )


class State:
    """1.4.1 keeps only a weak proxy to its state: main() holds this one."""

    def __init__(self):
        self.runs = 0
        self.sink_ran = asyncio.Event()


async def node(state, i, sink=False):
    state.runs += 1
    if sink:
        state.sink_ran.set()


def build(app, kind, n):
    if kind == "chain":
        tasks = [app.create_task(node, i, sink=(i == n - 1)) for i in range(n)]
        return TaskGraphBuilder().sequence(*tasks).build(), tasks[-1]
    root = app.create_task(node, 0)
    middle = [app.create_task(node, i) for i in range(1, n - 1)]
    join = app.create_task(node, n - 1, sink=True)
    graph = TaskGraphBuilder().add(root).parallel(*middle).then(join).build()
    return graph, join


async def wait_for_success(storage, task_id, graph_id, timeout):
    deadline = time.monotonic() + timeout
    while True:
        got = await storage.load_task_result(task_id, graph_id)
        if got is not None and got.status == TaskStatus.Success:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{task_id} did not succeed within {timeout}s")
        await asyncio.sleep(0.01)


async def until_quiet(count):
    while time.monotonic() - count.last < QUIET:
        await asyncio.sleep(0.05)


async def main(args):
    count = HttpCount()
    storage = CountedStorage(args.blob_url, args.container, args.account_key)
    storage.count = count
    watcher = BlobClientStorage(args.blob_url, args.container, args.account_key)
    sender = ManagedAzureServiceBusSender(
        "sb://localhost",
        args.queue,
        connection_string=args.sb_connection_string,
        ready_message=STATIC_DEBUG_TASK.model_dump_json(),
    )
    state = State()
    app = Boilermaker(state, sender, results_storage=storage)
    app.register_async(node)
    worker = asyncio.create_task(app.run())

    warm = TaskGraphBuilder().add(app.create_task(node, 0, sink=True)).build()
    await app.publish_graph(warm)
    await state.sink_ran.wait()
    (warm_sink,) = warm.children
    await wait_for_success(watcher, warm_sink, warm.graph_id, args.timeout)
    await until_quiet(count)

    graph, sink = build(app, args.kind, args.nodes)
    state.sink_ran.clear()
    state.runs = 0
    count.by_method.clear()
    started = time.perf_counter()
    await app.publish_graph(graph)
    await asyncio.wait_for(state.sink_ran.wait(), args.timeout)
    await wait_for_success(watcher, sink.task_id, graph.graph_id, args.timeout)
    seconds = time.perf_counter() - started
    await until_quiet(count)
    doc = {
        "impl": "1.4.1",
        "seconds": seconds,
        "runs": state.runs,
        "requests": sum(count.by_method.values()),
        "by_kind": dict(count.by_method),
    }
    print("RESULT " + json.dumps(doc), flush=True)
    worker.cancel()
    # Its worker and pools do not always wind down promptly; the figures are out.
    os._exit(0)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    for name in ("sb-connection-string", "queue", "blob-url", "account-key", "container", "kind"):
        p.add_argument("--" + name, required=True)
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--timeout", type=float, default=600)
    asyncio.run(main(p.parse_args()))
'''


def ensure_published_venv() -> Path:
    """The pinned 1.4.1 environment (installed once, shared with the compatibility tests),
    with the child script written beside the benchmarks; its python."""
    python = published_env.ensure()
    PUBLISHED_CHILD.parent.mkdir(exist_ok=True)
    PUBLISHED_CHILD.write_text(CHILD_SOURCE)
    return python


async def run_published(
    python: Path, emulator: ServiceBusEmulator, azurite: Azurite, shape: Shape, timeout: float
) -> Result:
    queue = new_queue(emulator)
    container = f"bench-{uuid.uuid4().hex[:16]}"
    store = BlobClientStorage.from_connection_string(
        azurite.connection_string, container, create_container=True
    )
    await store.ensure_container()
    try:
        proc = await asyncio.create_subprocess_exec(
            str(python),
            str(PUBLISHED_CHILD),
            "--sb-connection-string",
            emulator.connection_string,
            "--queue",
            queue,
            "--blob-url",
            azurite.blob_endpoint,
            "--account-key",
            ACCOUNT_KEY,
            "--container",
            container,
            "--kind",
            shape.kind,
            "--nodes",
            str(shape.nodes),
            "--timeout",
            str(timeout),
            cwd=PUBLISHED_CHILD.parent,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout + 60)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        text = out.decode(errors="replace")
        for line in text.splitlines():
            if line.startswith("RESULT "):
                doc = json.loads(line.removeprefix("RESULT "))
                if doc["runs"] != shape.nodes:
                    raise RuntimeError(f"1.4.1 ran {doc['runs']} tasks for {shape.nodes} nodes")
                return Result.from_json(doc, shape)
        raise RuntimeError(f"1.4.1 run failed (exit {proc.returncode}):\n{text[-4000:]}")
    finally:
        await store.container_client.delete_container()
        await store.close()
        emulator.delete_queue(queue)


# -- report ---------------------------------------------------------------------------------


def comparison_table(pairs: Sequence[tuple[Result, Result | None]]) -> str:
    head = (
        f"{'graph':<22}{'impl':>7}{'seconds':>10}{'tasks/s':>10}{'blob req/node':>15}"
        f"{'speed-up':>10}{'target':>9}"
    )
    lines = [head, "-" * len(head)]
    for ours, published in pairs:
        for r in (published, ours):
            if r is None:
                continue
            lines.append(
                f"{r.shape.label:<22}{r.impl:>7}{r.seconds:>10.2f}{r.tasks_per_second:>10.1f}"
                f"{r.per_node:>15.1f}"
                + (
                    f"{published.seconds / ours.seconds:>9.1f}x"
                    f"{'met' if published.seconds / ours.seconds >= 5 else 'MISSED':>9}"
                    if r is ours and published is not None
                    else ""
                )
            )
    return "\n".join(lines)


def flatness_table(rows: Sequence[Result]) -> str:
    head = f"{'graph':<24}{'seconds':>9}{'tasks/s':>9}{'req/node':>10}{'http/node':>11}  by kind"
    lines = [head, "-" * len(head)]
    for r in rows:
        kinds = ", ".join(f"{k} {v / r.shape.nodes:.1f}" for k, v in sorted(r.by_kind.items()))
        lines.append(
            f"{r.shape.label:<24}{r.seconds:>9.2f}{r.tasks_per_second:>9.1f}{r.per_node:>10.2f}"
            f"{r.http_requests / r.shape.nodes:>11.2f}  {kinds}"
        )
    for kind in ("fanout", "chain"):
        per_node = [r.per_node for r in rows if r.shape.kind == kind]
        if len(per_node) >= 2:
            spread = max(per_node) / min(per_node)
            verdict = "flat" if spread <= 1.5 else "NOT flat"
            lines.append(
                f"{kind}: req/node {min(per_node):.2f} .. {max(per_node):.2f} "
                f"(max/min {spread:.2f}: {verdict})"
            )
    return "\n".join(lines)


#: Issue 14's ceilings on blob requests per node (the protocol before it: 6.0 and 6.5).
REQUEST_GOALS = {"chain": 4.5, "fanout": 5.0}


def request_goals(pairs: Sequence[tuple[Result, Result | None]], rows: Sequence[Result]) -> str:
    """Each shape's worst blob requests per node, from every graph of it measured here,
    against issue 14's ceiling, with 1.4.1's figure from this run beside it."""
    head = f"{'goal (issue 14)':<38}{'ours':>7}{'1.4.1':>8}{'wanted':>9}{'result':>9}"
    lines = [head, "-" * len(head)]
    for kind, ceiling in REQUEST_GOALS.items():
        ours = [r.per_node for r in rows if r.shape.kind == kind]
        ours += [o.per_node for o, _ in pairs if o.shape.kind == kind]
        published = [p.per_node for o, p in pairs if p is not None and o.shape.kind == kind]
        if not ours:
            continue
        worst = max(ours)
        base = f"{max(published):.1f}" if published else "-"
        label = f"blob requests per {'chain' if kind == 'chain' else 'fan-out'} node, worst"
        lines.append(
            f"{label:<38}{worst:>7.2f}{base:>8}{'<= ' + format(ceiling, 'g'):>9}"
            f"{'met' if worst <= ceiling else 'NOT MET':>9}"
        )
    return "\n".join(lines)


async def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="20-node graphs and flatness at 10 and 100 only"
    )
    parser.add_argument("--skip-published", action="store_true", help="do not run 1.4.1")
    parser.add_argument("--timeout", type=float, default=600.0, help="per run, seconds")
    args = parser.parse_args(argv)

    compared = 20 if args.quick else 100
    sizes = (10, 100) if args.quick else (10, 100, 1000)
    python = None if args.skip_published else ensure_published_venv()
    began = time.perf_counter()
    with Azurite() as azurite, ServiceBusEmulator(mode="process", port=0) as emulator:
        pairs: list[tuple[Result, Result | None]] = []
        for kind in ("fanout", "chain"):
            shape = Shape(kind, compared + 2 if kind == "fanout" else compared)
            ours = await run_ours(emulator, azurite, shape, args.timeout)
            published = None
            if python is not None:
                published = await run_published(python, emulator, azurite, shape, args.timeout)
            pairs.append((ours, published))
            print(f"  done: {shape.label}", flush=True)
        flat: list[Result] = []
        for kind in ("fanout", "chain"):
            for n in sizes:
                flat.append(await run_ours(emulator, azurite, Shape(kind, n), args.timeout))
                print(f"  done: {flat[-1].shape.label}", flush=True)

    print()
    print("Graphs on the Service Bus emulator + Azurite, one worker at default concurrency")
    print(comparison_table(pairs))
    print()
    print("Ours: blob requests per node as the graph grows")
    print(flatness_table(flat))
    print()
    print(request_goals(pairs, flat))
    print(f"\ntotal {time.perf_counter() - began:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

"""Task graphs on the Service Bus emulator and Azurite, run by real workers.

Nothing here is mocked: tasks travel through the emulator over AMQP with the
real ``azure-servicebus`` SDK, node records live in Azurite, and workers are
the real engine, in this process (each on its own ``AzureServiceBus`` and
``BlobClientStorage``) or as separate processes (``graph_worker.py``) that the
crash tests kill. Every node is ``graph_worker.step``; each test counts how
many times each node's function ran and checks every node's final status.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import unique_container_name
from tests.e2e.graph_worker import RunLog, build_app, step

from boilermaker import Boilermaker, RetryPolicy, Task
from boilermaker.emulator.config import QueueSettings
from boilermaker.emulator.server import ServiceBusEmulator
from boilermaker.emulator.store import QueueCounts
from boilermaker.graph_recovery import GraphProgress
from boilermaker.results import Records, graph_status_blob, node_blob
from boilermaker.service_bus import AzureServiceBus
from boilermaker.storage import BlobClientStorage
from boilermaker.storage.azurite import Azurite
from boilermaker.task import TaskChain, TaskGraph, TaskGraphBuilder, TaskStatus
from boilermaker.worker import Worker

pytestmark = pytest.mark.slow

WORKER_SCRIPT = Path(__file__).with_name("graph_worker.py")
REPO_ROOT = Path(__file__).resolve().parents[2]


# -- services -------------------------------------------------------------------------


@pytest.fixture
def make_queue(servicebus_emulator: ServiceBusEmulator) -> Iterator[Callable[..., str]]:
    """Create queues with per-test settings; deleted afterwards."""
    made: list[str] = []

    def make(**settings: Any) -> str:
        name = f"graph-{uuid.uuid4().hex[:12]}"
        settings.setdefault("requires_duplicate_detection", True)
        servicebus_emulator.create_queue(QueueSettings(name=name, **settings))
        made.append(name)
        return name

    yield make
    for name in made:
        try:
            servicebus_emulator.delete_queue(name)
        except Exception:
            pass


@pytest.fixture
async def container(azurite: Azurite) -> AsyncIterator[str]:
    """A fresh blob container in Azurite; removed afterwards."""
    name = unique_container_name("graph")
    store = BlobClientStorage.from_connection_string(
        azurite.connection_string, name, create_container=True
    )
    await store.ensure_container()
    try:
        yield name
    finally:
        await store.container_client.delete_container()
        await store.close()


class Cluster:
    """A publisher app plus workers on one queue and one container.

    Every app built here has its own ``AzureServiceBus`` and
    ``BlobClientStorage`` (so its own connections and graph cache); in-process
    apps share one :class:`RunLog`.
    """

    def __init__(
        self, emulator: ServiceBusEmulator, azurite: Azurite, queue: str, container: str
    ) -> None:
        self.emulator = emulator
        self.azurite = azurite
        self.queue = queue
        self.container = container
        self.log = RunLog()
        self._apps: list[Boilermaker] = []
        self._workers: list[tuple[Worker, asyncio.Task[None]]] = []
        self.publisher = self.app()

    def app(self) -> Boilermaker:
        broker = AzureServiceBus.from_connection_string(self.emulator.connection_string, self.queue)
        store = BlobClientStorage.from_connection_string(
            self.azurite.connection_string, self.container
        )
        app = build_app(broker, store, self.log)
        self._apps.append(app)
        return app

    @property
    def records(self) -> Records:
        """Node records, read through the publisher's store."""
        store = self.publisher.results_storage
        assert store is not None
        return Records(store)

    def node(self, name: str, policy: RetryPolicy | None = None, **options: Any) -> Task:
        """A ``step`` task for node ``name`` (``options``: sleep, fail, retries)."""
        return self.publisher.create_task(step, name, policy=policy, **options)

    def start_workers(self, count: int = 1, concurrency: int = 4) -> None:
        for _ in range(count):
            worker = self.app().worker(
                concurrency=concurrency, install_signal_handlers=False, shutdown_grace=1.0
            )
            self._workers.append((worker, asyncio.create_task(worker.run())))

    async def stop_workers(self) -> None:
        workers, self._workers = self._workers, []
        for worker, _ in workers:
            worker.stop()
        for _, running in workers:
            await running

    @property
    def workers(self) -> list[Worker]:
        return [worker for worker, _ in self._workers]

    async def run(
        self, graph: TaskGraph, workers: int = 1, concurrency: int = 4, timeout: float = 60.0
    ) -> GraphProgress:
        """Publish ``graph``, run workers until it has completed, then stop them."""
        await self.publisher.publish_graph(graph)
        self.start_workers(workers, concurrency)
        try:
            return await self.wait(graph, timeout)
        finally:
            await self.stop_workers()

    async def wait(self, graph: TaskGraph, timeout: float = 60.0) -> GraphProgress:
        """Wait until the graph has completed; its final progress.

        Polls the end-of-graph record (one read) rather than every node, so
        waiting does not compete with the workers for Azurite.
        """
        deadline = time.monotonic() + timeout
        while True:
            end = await self.records.get(graph_status_blob(graph.graph_id))
            if end is not None and end[0].status.finished:
                break
            assert time.monotonic() < deadline, f"graph did not end within {timeout}s"
            await asyncio.sleep(0.05)
        left = max(1.0, deadline - time.monotonic())
        progress = await self.publisher.wait_for_graph(
            graph.graph_id, timeout=left, poll_interval=0.1
        )
        assert progress.complete
        return progress

    async def drained(self, timeout: float = 10.0, dead_lettered: int = 0) -> QueueCounts:
        """Wait until the queue holds nothing but ``dead_lettered`` dead letters."""
        expected = QueueCounts(0, 0, 0, 0, dead_lettered)
        deadline = time.monotonic() + timeout
        while True:
            counts = self.emulator.counts(self.queue)
            if counts == expected or time.monotonic() > deadline:
                assert counts == expected
                return counts
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        await self.stop_workers()
        for app in self._apps:
            await app.close()


@pytest.fixture
async def cluster(
    servicebus_emulator: ServiceBusEmulator,
    azurite: Azurite,
    make_queue: Callable[..., str],
    container: str,
) -> AsyncIterator[Cluster]:
    c = Cluster(servicebus_emulator, azurite, make_queue(), container)
    try:
        yield c
    finally:
        await c.close()


def by_name(graph: TaskGraph, progress: GraphProgress) -> dict[str, TaskStatus | str]:
    """Each node's final status by name; ``skipped`` for nodes that can never run."""
    return {
        task.args[0]: "skipped" if task_id in progress.skipped else progress.statuses[task_id]
        for task_id, task in graph.tasks.items()
    }


def ids_by_name(graph: TaskGraph) -> dict[str, str]:
    return {task.args[0]: task_id for task_id, task in graph.tasks.items()}


def seed_graph(c: Cluster, fetch_fails: bool = False) -> TaskGraph:
    """The seed README's fetch -> process -> save, with a handler for fetch failing."""
    fetch = c.node("fetch", fail=fetch_fails)
    cleanup = c.node("cleanup")
    return (
        TaskGraphBuilder()
        .add(fetch)
        .on_failure(fetch.task_id, cleanup)
        .then(c.node("process"))
        .then(c.node("save"))
        .build()
    )


# -- the seed's graph -------------------------------------------------------------------


async def test_seed_graph_success_runs_each_step_once_and_skips_the_handler(
    cluster: Cluster,
) -> None:
    graph = seed_graph(cluster)
    progress = await cluster.run(graph)

    assert cluster.log.order == ["fetch", "process", "save"]
    assert cluster.log.runs == Counter(fetch=1, process=1, save=1)
    assert by_name(graph, progress) == {
        "fetch": TaskStatus.Success,
        "process": TaskStatus.Success,
        "save": TaskStatus.Success,
        "cleanup": "skipped",
    }
    assert not progress.failed
    save = graph.task(ids_by_name(graph)["save"])
    assert (await cluster.publisher.get_result(save)).result == "save done"
    await cluster.drained()


async def test_seed_graph_failure_runs_the_handler_and_never_the_dependents(
    cluster: Cluster,
) -> None:
    graph = seed_graph(cluster, fetch_fails=True)
    progress = await cluster.run(graph)

    assert cluster.log.runs == Counter(fetch=1, cleanup=1)
    assert by_name(graph, progress) == {
        "fetch": TaskStatus.Failure,
        "process": "skipped",
        "save": "skipped",
        "cleanup": TaskStatus.Success,
    }
    assert progress.failed
    fetch = graph.task(ids_by_name(graph)["fetch"])
    result = await cluster.publisher.get_result(fetch)
    assert result.errors == ["ValueError: fetch failed"]
    await cluster.drained(dead_lettered=1)


# -- shapes -----------------------------------------------------------------------------


async def test_fan_out_to_fifty_then_join_runs_every_node_once(cluster: Cluster) -> None:
    root = cluster.node("root")
    middle = [cluster.node(f"mid-{i}") for i in range(50)]
    graph = (
        TaskGraphBuilder()
        .add(root)
        .parallel(*middle, depends_on=root)
        .then(cluster.node("join"))
        .build()
    )
    progress = await cluster.run(graph, concurrency=16)

    assert len(cluster.log.runs) == 52
    assert set(cluster.log.runs.values()) == {1}
    assert cluster.log.order[0] == "root"
    assert cluster.log.order[-1] == "join"
    assert set(progress.statuses.values()) == {TaskStatus.Success}
    assert not progress.skipped
    assert not progress.failed
    await cluster.drained()


async def test_diamond_joins_once_after_both_branches(cluster: Cluster) -> None:
    a, b, c, d = (cluster.node(n, sleep=0.1) for n in "abcd")
    graph = TaskGraphBuilder().add(a).parallel(b, c, depends_on=a).then(d).build()
    progress = await cluster.run(graph)

    assert cluster.log.runs == Counter(a=1, b=1, c=1, d=1)
    assert cluster.log.order[0] == "a"
    assert set(cluster.log.order[1:3]) == {"b", "c"}
    assert cluster.log.order[3] == "d"
    assert set(by_name(graph, progress).values()) == {TaskStatus.Success}
    await cluster.drained()


async def test_independent_chains_merge_into_one_node(cluster: Cluster) -> None:
    names = ("a1", "a2", "a3", "b1", "b2", "c1", "merge")
    a1, a2, a3, b1, b2, c1, merge = (cluster.node(n) for n in names)
    graph = (
        TaskGraphBuilder()
        .add_chain(TaskChain(a1, a2, a3))
        .add_chain(TaskChain(b1, b2))
        .add(c1)
        .add(merge, depends_on=[a3, b2, c1])
        .build()
    )
    progress = await cluster.run(graph)

    assert cluster.log.runs == Counter(dict.fromkeys(names, 1))
    pos = {name: i for i, name in enumerate(cluster.log.order)}
    assert pos["a1"] < pos["a2"] < pos["a3"] < pos["merge"]
    assert pos["b1"] < pos["b2"] < pos["merge"]
    assert pos["c1"] < pos["merge"]
    assert set(by_name(graph, progress).values()) == {TaskStatus.Success}
    await cluster.drained()


# -- retries -----------------------------------------------------------------------------


async def test_retries_inside_a_graph_wait_their_delay_then_continue(cluster: Cluster) -> None:
    policy = RetryPolicy(max_tries=5, delay=1)
    a, b, c = cluster.node("a"), cluster.node("b", policy=policy, retries=2), cluster.node("c")
    graph = TaskGraphBuilder().sequence(a, b, c).build()
    progress = await cluster.run(graph)

    assert cluster.log.runs == Counter(a=1, b=3, c=1)
    assert cluster.log.order == ["a", "b", "b", "b", "c"]
    first, second, third = cluster.log.times["b"]
    # Each retry is a scheduled message, delivered no earlier than its delay.
    assert second - first >= 0.9
    assert third - second >= 0.9
    assert set(by_name(graph, progress).values()) == {TaskStatus.Success}
    result = await cluster.publisher.get_result(graph.task(b.task_id))
    assert result.result == "b done"
    assert not progress.failed
    await cluster.drained()


async def test_exhausted_retries_run_the_handler_skip_dependents_and_all_failed_once(
    cluster: Cluster,
) -> None:
    policy = RetryPolicy(max_tries=3, delay=1)
    a, b, c, d = (
        cluster.node("a"),
        cluster.node("b", policy, retries=99),
        *(cluster.node(n) for n in "cd"),
    )
    handler, all_failed = cluster.node("b-handler"), cluster.node("all-failed")
    graph = (
        TaskGraphBuilder()
        .add(a)
        .then(b, on_failure=handler)
        .then(c)
        .add(d, depends_on=a)
        .build(on_all_failed=all_failed)
    )
    progress = await cluster.run(graph)
    # Anything still to come (a second all-failed, a late dependent) would show now.
    await cluster.drained(dead_lettered=1)

    assert cluster.log.runs == Counter({"a": 1, "b": 3, "d": 1, "b-handler": 1, "all-failed": 1})
    assert by_name(graph, progress) == {
        "a": TaskStatus.Success,
        "b": TaskStatus.RetriesExhausted,
        "c": "skipped",
        "d": TaskStatus.Success,
        "b-handler": TaskStatus.Success,
        "all-failed": TaskStatus.Success,
    }
    assert progress.failed
    assert cluster.log.order.index("b-handler") > cluster.log.order.index("b")
    assert cluster.log.order[-1] == "all-failed"


# -- duplicates and racing workers ---------------------------------------------------------


async def test_a_node_message_delivered_twice_runs_the_node_once(cluster: Cluster) -> None:
    a, b, c = cluster.node("a"), cluster.node("b", sleep=1.0), cluster.node("c")
    graph = TaskGraphBuilder().sequence(a, b, c).build()
    b_task = graph.task(b.task_id)
    await cluster.publisher.publish_graph(graph)
    cluster.start_workers(1, concurrency=4)

    # While b runs, a second message for it arrives (a different message id,
    # so the queue's duplicate detection does not drop it).
    deadline = time.monotonic() + 30
    while cluster.log.runs["b"] == 0:
        assert time.monotonic() < deadline, "b never started"
        await asyncio.sleep(0.02)
    await cluster.publisher.publish_task(b_task, unique_msg_id=f"{b.task_id}:again-1")
    progress = await cluster.wait(graph)

    # And once more after the whole graph has finished.
    await cluster.publisher.publish_task(b_task, unique_msg_id=f"{b.task_id}:again-2")
    await cluster.drained()
    (worker,) = cluster.workers
    await cluster.stop_workers()

    assert cluster.log.runs == Counter(a=1, b=1, c=1)
    assert worker.stats.received == 5
    assert worker.stats.succeeded == 3
    # The first extra message came while b ran and was skipped; the second found b
    # finished, so only b's continuation ran again (and changed nothing).
    assert worker.stats.duplicates_skipped == 1
    assert worker.stats.dead_lettered == 0
    final = await cluster.publisher.graph_progress(graph.graph_id)
    assert final == progress
    assert set(by_name(graph, progress).values()) == {TaskStatus.Success}


@pytest.mark.parametrize("workers", [2, 4])
async def test_racing_workers_run_every_node_exactly_once(
    servicebus_emulator: ServiceBusEmulator,
    azurite: Azurite,
    make_queue: Callable[..., str],
    container: str,
    workers: int,
) -> None:
    # No duplicate detection: a node dispatched twice would show as a second message.
    queue = make_queue(requires_duplicate_detection=False)
    cluster = Cluster(servicebus_emulator, azurite, queue, container)
    try:
        # root -> 20 mids -> 20 posts (one each) -> left/right halves -> join, and beside
        # them a branch that fails, so its handler and the all-failed callback race too.
        root = cluster.node("root")
        mids = [cluster.node(f"mid-{i}", sleep=0.02) for i in range(20)]
        posts = [cluster.node(f"post-{i}") for i in range(20)]
        left, right = cluster.node("left"), cluster.node("right")
        builder = TaskGraphBuilder().add(root).parallel(*mids, depends_on=root)
        for mid, post in zip(mids, posts, strict=True):
            builder.add(post, depends_on=mid)
        builder.add(left, depends_on=posts[:10]).add(right, depends_on=posts[10:])
        builder.add(cluster.node("join"), depends_on=[left, right])
        builder.add(
            cluster.node("flaky", fail=True),
            depends_on=root,
            on_failure=cluster.node("flaky-handler"),
        )
        graph = builder.build(on_all_failed=cluster.node("all-failed"))

        await cluster.publisher.publish_graph(graph)
        cluster.start_workers(workers, concurrency=4)
        stats = [w.stats for w in cluster.workers]
        progress = await cluster.wait(graph)
        await cluster.drained(dead_lettered=1)
        await cluster.stop_workers()

        assert len(graph) == 47
        assert len(cluster.log.runs) == len(graph)
        assert set(cluster.log.runs.values()) == {1}
        statuses = by_name(graph, progress)
        assert statuses.pop("flaky") is TaskStatus.Failure
        assert set(statuses.values()) == {TaskStatus.Success}
        assert progress.failed
        assert cluster.log.order[-1] == "all-failed"
        assert sum(s.received - s.control_messages for s in stats) == len(graph)
        assert sum(s.succeeded for s in stats) == len(graph) - 1
        assert sum(1 for s in stats if s.received) >= 2, "the workers did not share the graph"
    finally:
        await cluster.close()


# -- crashes: worker processes that die --------------------------------------------------


class WorkerProcesses:
    """``graph_worker.py`` processes on one queue and container, counting runs in a file."""

    def __init__(self, cluster: Cluster, runs_file: Path) -> None:
        self.cluster = cluster
        self.runs_file = runs_file
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, concurrency: int = 4, **extra_env: str) -> subprocess.Popen[str]:
        env = dict(os.environ)
        env.update(
            GRAPH_SB_CONNECTION_STRING=self.cluster.emulator.connection_string,
            GRAPH_QUEUE=self.cluster.queue,
            GRAPH_BLOB_CONNECTION_STRING=self.cluster.azurite.connection_string,
            GRAPH_CONTAINER=self.cluster.container,
            GRAPH_RUNS_FILE=str(self.runs_file),
            GRAPH_CONCURRENCY=str(concurrency),
            PYTHONUNBUFFERED="1",
            **extra_env,
        )
        proc = subprocess.Popen(
            [sys.executable, str(WORKER_SCRIPT)],
            env=env,
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.procs.append(proc)
        return proc

    def start_standby(self) -> Callable[[], None]:
        """Start a worker that waits to be told to go; returns the function that tells it."""
        go = self.runs_file.with_name(f"go-{len(self.procs)}")
        self.start(GRAPH_START_WHEN=str(go))
        return go.touch

    def runs(self) -> Counter[str]:
        return RunLog.read(self.runs_file)

    async def wait_until(self, condition: Callable[[], Any], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; output:\n{self.output()}")
            await asyncio.sleep(0.02)

    def output(self) -> str:
        """What every finished worker printed (for failure messages)."""
        out = []
        for proc in self.procs:
            if proc.poll() is not None and proc.stdout is not None:
                out.append(proc.stdout.read())
        return "\n---\n".join(out)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


@pytest.fixture
async def crash_cluster(
    servicebus_emulator: ServiceBusEmulator,
    azurite: Azurite,
    make_queue: Callable[..., str],
    container: str,
    tmp_path: Path,
) -> AsyncIterator[tuple[Cluster, WorkerProcesses]]:
    """A queue whose locks expire in 2 s, so a dead worker's messages come back quickly."""
    cluster = Cluster(servicebus_emulator, azurite, make_queue(lock_duration=2.0), container)
    processes = WorkerProcesses(cluster, tmp_path / "runs.txt")
    try:
        yield cluster, processes
    finally:
        processes.stop_all()
        await cluster.close()


async def node_status(cluster: Cluster, graph: TaskGraph, task_id: str) -> TaskStatus | None:
    got = await cluster.records.get(node_blob(graph.graph_id, task_id))
    return None if got is None else got[0].status


@pytest.mark.parametrize("when", ["before", "after"])
async def test_worker_killed_at_the_first_write_of_a_dispatched_child(
    crash_cluster: tuple[Cluster, WorkerProcesses], when: str
) -> None:
    """A single-parent child is dispatched by publishing its message only; the first
    write of its record is its claim. The worker dies at that write: just before it,
    or just after it succeeded (the node then reads Started, by a dead worker)."""
    cluster, processes = crash_cluster
    root = cluster.node("root")
    children = [cluster.node(f"child-{i}") for i in range(4)]
    graph = (
        TaskGraphBuilder()
        .add(root)
        .parallel(*children, depends_on=root)
        .then(cluster.node("join"))
        .build()
    )
    target = children[0].task_id
    await cluster.publisher.publish_graph(graph)

    # One task at a time: the first child claimed is the target.
    doomed = processes.start(
        concurrency=1,
        GRAPH_EXIT_ON_SCHEDULED=target,
        GRAPH_EXIT_WHEN=when,
        GRAPH_EXIT_STATUS="started",
    )
    fresh_worker_go = processes.start_standby()
    await processes.wait_until(lambda: doomed.poll() is not None, "the worker to exit", 30)
    assert doomed.returncode == 1, processes.output()
    assert processes.runs() == Counter(root=1)
    expected = None if when == "before" else TaskStatus.Started
    assert await node_status(cluster, graph, target) is expected
    assert await node_status(cluster, graph, root.task_id) is TaskStatus.Success

    fresh_worker_go()
    progress = await cluster.wait(graph)
    await cluster.drained()

    assert processes.runs() == Counter(
        {"root": 1, "join": 1, **{f"child-{i}": 1 for i in range(4)}}
    )
    assert set(progress.statuses.values()) == {TaskStatus.Success}


async def test_worker_killed_mid_task_leaves_the_node_to_a_fresh_worker(
    crash_cluster: tuple[Cluster, WorkerProcesses],
) -> None:
    cluster, processes = crash_cluster
    a, slow, d, c = (
        cluster.node("a"),
        cluster.node("slow", sleep=3.0),
        cluster.node("d"),
        cluster.node("c"),
    )
    graph = TaskGraphBuilder().add(a).parallel(slow, d, depends_on=a).then(c).build()
    await cluster.publisher.publish_graph(graph)

    first = processes.start()
    fresh_worker_go = processes.start_standby()
    await processes.wait_until(lambda: processes.runs()["slow"] == 1, "slow to start", 30)
    deadline = time.monotonic() + 10
    while await node_status(cluster, graph, d.task_id) is not TaskStatus.Success:
        assert time.monotonic() < deadline, "d did not finish"
        await asyncio.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    assert processes.runs() == Counter(a=1, slow=1, d=1)
    assert await node_status(cluster, graph, slow.task_id) is TaskStatus.Started

    # Its lock expires within 2 s; the fresh worker gets the message again.
    fresh_worker_go()
    progress = await cluster.wait(graph)
    await cluster.drained()

    runs = processes.runs()
    assert runs["slow"] == 2, "the killed run never finished, so slow must have run again"
    assert runs == Counter(a=1, slow=2, d=1, c=1)
    assert set(progress.statuses.values()) == {TaskStatus.Success}

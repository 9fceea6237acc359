"""Graphs under duplicates, racing workers, crashes and recovery: every node runs once.

The in-memory store and broker answer without yielding, which hides races;
here they are wrapped to take a little (random, seeded) time per operation,
like a network service, and to fail on cue.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

import pytest

from boilermaker import Boilermaker, PublishError, RetryException, RetryPolicy, Task, TaskGraph
from boilermaker.broker import BrokerError, OutgoingMessage
from boilermaker.graph_recovery import GraphProgress
from boilermaker.memory import InMemoryBroker, InMemoryResultsStore
from boilermaker.publishing import FOLLOW_UP_ATTEMPTS
from boilermaker.results_store import PreconditionFailed, ResultsStoreError, StoredBlob
from boilermaker.task import TaskGraphBuilder, TaskStatus


class Steps:
    def __init__(self) -> None:
        self.started: Counter[str] = Counter()
        self.finished: Counter[str] = Counter()
        self.retries: dict[str, int] = {}
        self.block: dict[str, asyncio.Event] = {}
        self.entered: dict[str, asyncio.Event] = {}
        self.fail: set[str] = set()


async def step(state: Steps, name: str) -> str:
    state.started[name] += 1
    if name in state.entered:
        state.entered[name].set()
    if name in state.block:
        await state.block[name].wait()
    await asyncio.sleep(random.random() * 0.002)
    if state.retries.get(name, 0) >= state.started[name]:
        raise RetryException(f"{name} not ready")
    state.finished[name] += 1
    if name in state.fail:
        raise ValueError(f"{name} failed")
    return name


class SlowStore(InMemoryResultsStore):
    """Takes 0-``latency`` s per operation; counts lost compare-and-swap races."""

    def __init__(self, latency: float = 0.002, seed: int = 7) -> None:
        super().__init__()
        self.latency = latency
        self.random = random.Random(seed)
        self.conflicts = 0
        self.fail_write: Callable[[str, dict[str, Any]], bool] | None = None

    async def _pause(self) -> None:
        await asyncio.sleep(self.random.random() * self.latency)

    async def read(self, name: str) -> StoredBlob | None:
        await self._pause()
        return await super().read(name)

    async def write(
        self,
        name: str,
        data: bytes,
        *,
        tags: Mapping[str, str] | None = None,
        if_match: str | None = None,
        create_only: bool = False,
        lease_id: str | None = None,
    ) -> str:
        await self._pause()
        if self.fail_write is not None and self.fail_write(name, json.loads(data)):
            raise ResultsStoreError(f"injected failure writing {name}")
        try:
            return await super().write(
                name,
                data,
                tags=tags,
                if_match=if_match,
                create_only=create_only,
                lease_id=lease_id,
            )
        except PreconditionFailed:
            self.conflicts += 1
            raise


class SlowBroker(InMemoryBroker):
    """Takes 0-``latency`` s per send; can fail sends on cue."""

    def __init__(self, latency: float = 0.002, seed: int = 11, **options: Any) -> None:
        super().__init__(**options)
        self.latency = latency
        self.random = random.Random(seed)
        self.fail_send: Callable[[Sequence[OutgoingMessage]], bool] | None = None

    async def send(self, messages: Sequence[OutgoingMessage]) -> list[int | None]:
        await asyncio.sleep(self.random.random() * self.latency)
        if self.fail_send is not None and self.fail_send(messages):
            raise BrokerError("injected send failure")
        return await super().send(messages)


def new_app(**broker_options: Any) -> tuple[Boilermaker, Steps, SlowBroker, SlowStore]:
    steps = Steps()
    broker = SlowBroker(**broker_options)
    store = SlowStore()
    app = Boilermaker(steps, broker, results_storage=store)
    app.register_async(step, policy=RetryPolicy(max_tries=5, delay=0))
    return app, steps, broker, store


def node(app: Boilermaker, name: str) -> Task:
    return app.create_task(step, name)


def names(graph: TaskGraph) -> set[str]:
    return {task.args[0] for task in graph.tasks.values()}


async def completed(app: Boilermaker, graph: TaskGraph) -> GraphProgress:
    progress = await app.graph_progress(graph.graph_id)
    assert progress is not None
    assert progress.complete, f"graph did not complete: {progress}"
    assert all(s is TaskStatus.Success for s in progress.statuses.values()), progress
    return progress


def fan_graph(app: Boilermaker, width: int) -> TaskGraph:
    """root -> width tasks -> join -> tail, plus a diamond hanging off root."""
    root = node(app, "root")
    middle = [node(app, f"mid-{i}") for i in range(width)]
    join, tail = node(app, "join"), node(app, "tail")
    left, right, bottom = node(app, "left"), node(app, "right"), node(app, "bottom")
    return (
        TaskGraphBuilder()
        .add(root)
        .parallel(*middle, depends_on=root)
        .then(join)
        .then(tail)
        .add(left, depends_on=root)
        .add(right, depends_on=root)
        .add(bottom, depends_on=[left, right])
        .build()
    )


def is_status_write(task_id: str, status: str) -> Callable[[str, dict[str, Any]], bool]:
    """A one-shot predicate matching the write that gives ``task_id`` ``status``."""
    fired = False

    def match(name: str, doc: dict[str, Any]) -> bool:
        nonlocal fired
        if fired or not name.endswith(f"/{task_id}.json") or doc.get("status") != status:
            return False
        fired = True
        return True

    return match


# -- duplicates ---------------------------------------------------------------------------


async def test_node_message_delivered_twice_at_once_runs_once() -> None:
    app, steps, broker, _store = new_app()
    a, b = node(app, "a"), node(app, "b")
    graph = TaskGraphBuilder().sequence(a, b).build()
    await app.publish_graph(graph)
    # A second copy of the root's message, in the queue at the same time.
    await app.publish_task(graph.task(a.task_id))
    assert broker.counts().active == 2
    worker = await app.run_until_idle(timeout=10, concurrency=8)

    assert steps.started == Counter(a=1, b=1)
    assert worker.stats.duplicates_skipped + worker.stats.received >= 3
    await completed(app, graph)
    assert broker.is_idle()


async def test_node_message_delivered_again_after_it_finished_runs_nothing() -> None:
    app, steps, broker, _store = new_app()
    a, b, c = node(app, "a"), node(app, "b"), node(app, "c")
    graph = TaskGraphBuilder().sequence(a, b, c).build()
    await app.publish_graph(graph)
    await app.run_until_idle(timeout=10)
    for task_id in (a.task_id, b.task_id, c.task_id):
        await app.publish_task(graph.task(task_id))
    await app.run_until_idle(timeout=10)

    assert steps.started == Counter(a=1, b=1, c=1)
    await completed(app, graph)
    assert broker.is_idle()
    assert broker.counts().dead_lettered == 0


# -- racing workers -------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [2, 4])
async def test_workers_racing_on_one_graph_run_every_node_exactly_once(workers: int) -> None:
    app, steps, broker, store = new_app()
    steps.retries["mid-3"] = 1
    graph = fan_graph(app, 20)
    await app.publish_graph(graph)
    # One app per worker, as separate worker processes would have: nothing
    # shared in memory, so they race on the records in the store.
    apps = [Boilermaker(steps, broker, results_storage=store) for _ in range(workers)]
    for each in apps:
        each.register_async(step, policy=RetryPolicy(max_tries=5, delay=0))
    await asyncio.gather(*(each.run_until_idle(timeout=30, concurrency=4) for each in apps))

    assert set(steps.finished) == names(graph)
    assert set(steps.finished.values()) == {1}
    assert steps.started["mid-3"] == 2
    assert all(n == 1 for name, n in steps.started.items() if name != "mid-3")
    await completed(app, graph)
    assert broker.is_idle()
    assert store.conflicts > 0, "the workers never raced on a record"


async def test_retry_message_arriving_before_the_retry_is_recorded_still_runs() -> None:
    # Zero-delay retries are received at once by another slot of the worker,
    # possibly before the node's record says it waits for a retry.
    app, steps, _broker, _store = new_app()
    for i in range(10):
        steps.retries[f"r-{i}"] = 2
    roots = [node(app, f"r-{i}") for i in range(10)]
    graph = TaskGraphBuilder().parallel(*roots).then(node(app, "end")).build()
    await app.publish_graph(graph)
    await app.run_until_idle(timeout=20, concurrency=16)

    assert all(steps.started[f"r-{i}"] == 3 for i in range(10)), steps.started
    assert steps.finished["end"] == 1
    await completed(app, graph)


# -- crashes --------------------------------------------------------------------------------
# A worker that gives a message back at once when its bookkeeping fails
# (bookkeeping_patience=0) exercises the redelivery path: the continuation is
# repeated by the next delivery. By default the worker first retries in-process.


async def test_a_failed_write_is_retried_in_process_without_running_anything_twice() -> None:
    app, steps, broker, store = new_app()
    a, b, c = node(app, "a"), node(app, "b"), node(app, "c")
    graph = TaskGraphBuilder().sequence(a, b, c).build()
    store.fail_write = is_status_write(a.task_id, "success")
    await app.publish_graph(graph)
    worker = await app.run_until_idle(timeout=10)

    assert worker.stats.abandoned == 0
    assert steps.started == Counter(a=1, b=1, c=1)
    await completed(app, graph)
    assert broker.is_idle()


async def test_crash_while_claiming_a_dispatched_child() -> None:
    # A single-parent child is dispatched by publishing it alone; its record is
    # first written by its claim, which fails here once.
    app, steps, broker, store = new_app()
    a, b, c = node(app, "a"), node(app, "b"), node(app, "c")
    graph = TaskGraphBuilder().add(a).parallel(b, c, depends_on=a).build()
    store.fail_write = is_status_write(b.task_id, "started")
    await app.publish_graph(graph)
    worker = await app.run_until_idle(timeout=10, concurrency=4, bookkeeping_patience=0)

    assert worker.stats.abandoned >= 1, "the injected crash did not happen"
    assert steps.finished == Counter(a=1, b=1, c=1)
    assert steps.started == Counter(a=1, b=1, c=1)
    await completed(app, graph)
    assert broker.is_idle()


async def test_crash_while_recording_a_result_reruns_only_that_node() -> None:
    app, steps, _broker, store = new_app()
    a, b = node(app, "a"), node(app, "b")
    graph = TaskGraphBuilder().sequence(a, b).build()
    store.fail_write = is_status_write(a.task_id, "success")
    await app.publish_graph(graph)
    worker = await app.run_until_idle(timeout=10, bookkeeping_patience=0)

    assert worker.stats.abandoned == 1
    # The result was never recorded, so the node ran again; its child once.
    assert steps.finished == Counter(a=2, b=1)
    await completed(app, graph)


async def test_worker_killed_mid_task_leaves_the_graph_to_complete() -> None:
    app, steps, _broker, _store = new_app(lock_duration=30)
    a, b, c = node(app, "a"), node(app, "b"), node(app, "c")
    graph = TaskGraphBuilder().sequence(a, b, c).build()
    steps.block["b"] = asyncio.Event()
    steps.entered["b"] = asyncio.Event()
    await app.publish_graph(graph)

    first = asyncio.create_task(app.run(install_signal_handlers=False, receive_wait=0.05))
    await asyncio.wait_for(steps.entered["b"].wait(), 10)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert steps.finished == Counter(a=1)

    steps.block["b"].set()
    await app.run_until_idle(timeout=10)
    assert steps.started == Counter(a=1, b=2, c=1)
    assert steps.finished == Counter(a=1, b=1, c=1)
    await completed(app, graph)


async def test_crash_before_publishing_a_retry_lets_the_redelivery_run_the_node() -> None:
    app, steps, broker, _store = new_app()
    steps.retries["b"] = 1
    a, b, c = node(app, "a"), node(app, "b"), node(app, "c")
    graph = TaskGraphBuilder().sequence(a, b, c).build()
    fired: list[str] = []

    def fail_every_retry_attempt_once(messages: Sequence[OutgoingMessage]) -> bool:
        # Every attempt of the first publish of the retry fails: the worker gives up.
        if len(fired) < FOLLOW_UP_ATTEMPTS and any(
            m.message_id == f"{b.task_id}:1" for m in messages
        ):
            fired.append("retry")
            return True
        return False

    broker.fail_send = fail_every_retry_attempt_once
    await app.publish_graph(graph)
    worker = await app.run_until_idle(timeout=10, bookkeeping_patience=0)

    assert fired == ["retry"] * FOLLOW_UP_ATTEMPTS
    assert worker.stats.abandoned == 1
    assert steps.started == Counter(a=1, b=2, c=1)
    assert steps.finished == Counter(a=1, b=1, c=1)
    await completed(app, graph)


# -- shared failure handlers --------------------------------------------------------------------


def shared_handler_graph(app: Boilermaker, width: int) -> TaskGraph:
    """``width`` parallel tasks sharing one handler, then a join, plus an all-failed callback."""
    tasks = [node(app, f"p-{i}") for i in range(width)]
    return (
        TaskGraphBuilder()
        .parallel(*tasks, on_failure=node(app, "handler"))
        .then(node(app, "join"))
        .build(on_all_failed=node(app, "fallback"))
    )


async def ended_with_failures(app: Boilermaker, graph: TaskGraph) -> GraphProgress:
    progress = await app.graph_progress(graph.graph_id)
    assert progress is not None
    assert progress.complete, f"graph did not end: {progress}"
    assert progress.failed, f"graph did not fail: {progress}"
    return progress


@pytest.mark.parametrize("workers", [2, 4])
async def test_racing_workers_run_a_shared_handler_once(workers: int) -> None:
    app, steps, broker, store = new_app()
    steps.fail |= {f"p-{i}" for i in range(0, 12, 2)}
    steps.retries["p-3"] = 1
    graph = shared_handler_graph(app, 12)
    await app.publish_graph(graph)
    apps = [Boilermaker(steps, broker, results_storage=store) for _ in range(workers)]
    for each in apps:
        each.register_async(step, policy=RetryPolicy(max_tries=5, delay=0))
    await asyncio.gather(*(each.run_until_idle(timeout=30, concurrency=4) for each in apps))

    assert steps.started["handler"] == 1
    assert steps.started["fallback"] == 1
    assert steps.started["join"] == 0
    assert all(steps.started[f"p-{i}"] == 1 for i in range(12) if i != 3)
    await ended_with_failures(app, graph)
    assert broker.is_idle()
    assert store.conflicts > 0, "the workers never raced on a record"


async def test_crash_at_the_write_that_dispatches_a_shared_handler() -> None:
    app, steps, broker, store = new_app()
    steps.fail |= {"p-0", "p-1"}
    graph = shared_handler_graph(app, 3)
    (handler,) = (t for t, task in graph.tasks.items() if task.args == ["handler"])
    store.fail_write = is_status_write(handler, "scheduled")
    await app.publish_graph(graph)
    worker = await app.run_until_idle(timeout=10, concurrency=4, bookkeeping_patience=0)

    assert worker.stats.abandoned >= 1, "the injected crash did not happen"
    assert steps.started["handler"] == 1
    assert steps.started["fallback"] == 1
    await ended_with_failures(app, graph)
    assert broker.is_idle()


async def test_crash_when_publishing_a_shared_handler_redispatches_it_once() -> None:
    app, steps, broker, _store = new_app()
    steps.fail |= {"p-0"}
    graph = shared_handler_graph(app, 3)
    (handler,) = (t for t, task in graph.tasks.items() if task.args == ["handler"])
    fired: list[int] = []

    def fail_the_handler_publish_once(messages: Sequence[OutgoingMessage]) -> bool:
        if len(fired) < FOLLOW_UP_ATTEMPTS and any(m.message_id == handler for m in messages):
            fired.append(1)
            return True
        return False

    broker.fail_send = fail_the_handler_publish_once
    await app.publish_graph(graph)
    worker = await app.run_until_idle(timeout=10, concurrency=4, bookkeeping_patience=0)

    assert len(fired) == FOLLOW_UP_ATTEMPTS
    assert worker.stats.abandoned >= 1
    assert steps.started["handler"] == 1
    assert steps.started["fallback"] == 1
    await ended_with_failures(app, graph)


async def test_duplicate_failed_parents_run_a_shared_handler_once() -> None:
    app, steps, broker, _store = new_app()
    steps.fail |= {"p-0", "p-1"}
    graph = shared_handler_graph(app, 3)
    await app.publish_graph(graph)
    await app.run_until_idle(timeout=10, concurrency=4)
    for task_id, task in graph.tasks.items():
        if task.args[0].startswith("p-"):
            await app.publish_task(graph.task(task_id), unique_msg_id=f"{task_id}:again")
    await app.run_until_idle(timeout=10, concurrency=4)

    assert steps.started["handler"] == 1
    assert steps.started["fallback"] == 1
    assert all(steps.started[f"p-{i}"] == 1 for i in range(3))
    await ended_with_failures(app, graph)
    assert broker.is_idle()


# -- recovery -------------------------------------------------------------------------------


async def test_recover_dispatches_a_pending_node_whose_parents_all_succeeded() -> None:
    # b's publish keeps failing and a's message is dead-lettered after one
    # delivery: a succeeded, b heard about it, but nothing will ever run b.
    app, steps, broker, _store = new_app(max_delivery_count=1)
    a, b, c = node(app, "a"), node(app, "b"), node(app, "c")
    graph = TaskGraphBuilder().sequence(a, b, c).build()
    await app.publish_graph(graph)
    broker.fail_send = lambda messages: any(m.message_id == b.task_id for m in messages)
    await app.run_until_idle(timeout=10, bookkeeping_patience=0)
    progress = await app.graph_progress(graph.graph_id)
    assert progress is not None
    assert progress.statuses[a.task_id] is TaskStatus.Success
    assert progress.statuses[b.task_id] is TaskStatus.Pending
    assert not progress.complete
    assert broker.counts().dead_lettered == 1

    broker.fail_send = None
    recovered = await app.recover_graph(graph.graph_id, stalled_after=timedelta(hours=1))
    assert recovered == [b.task_id]
    await app.run_until_idle(timeout=10)
    assert steps.started == Counter(a=1, b=1, c=1)
    await completed(app, graph)


async def test_recover_redispatches_a_stalled_started_node() -> None:
    # b's worker dies mid-task and its message is dead-lettered on the way back.
    app, steps, broker, _store = new_app(max_delivery_count=1, lock_duration=30)
    a, b, c = node(app, "a"), node(app, "b"), node(app, "c")
    graph = TaskGraphBuilder().sequence(a, b, c).build()
    steps.block["b"] = asyncio.Event()
    steps.entered["b"] = asyncio.Event()
    await app.publish_graph(graph)
    worker = asyncio.create_task(app.run(install_signal_handlers=False, receive_wait=0.05))
    await asyncio.wait_for(steps.entered["b"].wait(), 10)
    worker.cancel()
    with pytest.raises(asyncio.CancelledError):
        await worker
    assert broker.counts().dead_lettered == 1
    progress = await app.graph_progress(graph.graph_id)
    assert progress is not None
    assert progress.statuses[b.task_id] is TaskStatus.Started

    # Not stalled yet by the default threshold: nothing to do.
    assert await app.recover_graph(graph.graph_id) == []
    steps.block["b"].set()
    assert await app.recover_graph(graph.graph_id, stalled_after=timedelta(0)) == [b.task_id]
    await app.run_until_idle(timeout=10)
    assert steps.finished == Counter(a=1, b=1, c=1)
    await completed(app, graph)


async def test_recover_on_a_healthy_finished_graph_does_nothing() -> None:
    app, _steps, broker, _store = new_app()
    graph = TaskGraphBuilder().sequence(node(app, "a"), node(app, "b")).build()
    await app.publish_graph(graph)
    await app.run_until_idle(timeout=10)
    assert await app.recover_graph(graph.graph_id, stalled_after=timedelta(0)) == []
    assert broker.is_idle()


# -- publishing -------------------------------------------------------------------------------


async def test_publish_graph_is_idempotent_after_a_failed_root_publish() -> None:
    app, steps, broker, _store = new_app()
    graph = fan_graph(app, 5)
    broker.fail_send = lambda messages: True
    with pytest.raises(PublishError):
        await app.publish_graph(graph)
    assert broker.sent_count == 0

    broker.fail_send = None
    await app.publish_graph(graph)
    await app.publish_graph(graph)  # a retry of a call that in fact succeeded
    await app.run_until_idle(timeout=10)

    assert broker.sent_count == len(graph.tasks), "a message was sent twice"
    assert set(steps.started.values()) == {1}
    await completed(app, graph)


async def test_publish_graph_retried_after_a_partly_sent_batch_sends_each_root_once() -> None:
    app, steps, broker, _store = new_app(max_message_size=2048)  # one root per broker call
    roots = [node(app, f"root-{i}") for i in range(4)]
    graph = TaskGraphBuilder().parallel(*roots).then(node(app, "join")).build()
    calls: list[int] = []

    def second_call_fails(messages: Sequence[OutgoingMessage]) -> bool:
        calls.append(len(messages))
        return len(calls) == 2

    broker.fail_send = second_call_fails
    with pytest.raises(PublishError):
        await app.publish_graph(graph)
    assert broker.sent_count == 1

    broker.fail_send = None
    await app.publish_graph(graph)
    assert broker.sent_count == len(roots), "a root was sent twice"
    await app.run_until_idle(timeout=10)
    assert set(steps.started.values()) == {1}
    await completed(app, graph)


async def test_publish_graph_retried_after_the_store_failed_runs_each_node_once() -> None:
    app, steps, _broker, store = new_app()
    a, b = node(app, "a"), node(app, "b")
    graph = TaskGraphBuilder().sequence(a, b).build()
    store.fail_write = is_status_write(a.task_id, "scheduled")
    with pytest.raises(ResultsStoreError):
        await app.publish_graph(graph)
    await app.publish_graph(graph)
    await app.run_until_idle(timeout=10)

    assert steps.started == Counter(a=1, b=1)
    await completed(app, graph)


async def test_publish_graph_refuses_a_different_graph_under_the_same_id() -> None:
    app, _steps, _broker, _store = new_app()
    graph = TaskGraphBuilder().sequence(node(app, "a"), node(app, "b")).build()
    await app.publish_graph(graph)
    other = TaskGraphBuilder(graph_id=graph.graph_id).add(node(app, "x")).build()
    with pytest.raises(ValueError, match="different tasks"):
        await app.publish_graph(other)


async def test_node_message_published_before_its_parents_finished_does_not_run_early() -> None:
    app, steps, _broker, _store = new_app()
    a, b = node(app, "a"), node(app, "b")
    graph = TaskGraphBuilder().sequence(a, b).build()
    steps.block["a"] = asyncio.Event()
    steps.entered["a"] = asyncio.Event()
    await app.publish_graph(graph)
    worker = asyncio.create_task(app.run_until_idle(timeout=10))
    await steps.entered["a"].wait()
    await app.publish_task(graph.task(b.task_id), unique_msg_id="by-hand")
    await asyncio.sleep(0.2)
    assert steps.started["b"] == 0, "b ran before its parent finished"
    steps.block["a"].set()
    await worker
    assert steps.started == Counter(a=1, b=1)
    await completed(app, graph)

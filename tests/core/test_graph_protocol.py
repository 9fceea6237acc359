"""Task graphs run by real workers on the in-memory broker and results store.

Every node is the same registered function, ``step(state, name)``; the test
state decides per node name whether it fails, asks for retries, or waits, and
counts how many times each node ran.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from boilermaker import Boilermaker, RetryException, RetryPolicy, Task, TaskGraph
from boilermaker.graph_recovery import GraphProgress
from boilermaker.memory import InMemoryBroker, InMemoryResultsStore
from boilermaker.task import TaskChain, TaskGraphBuilder, TaskStatus
from boilermaker.worker import PROCESSING_ERROR, TASK_FAILED


class Steps:
    """What each named node does, and what happened to it."""

    def __init__(self) -> None:
        self.runs: Counter[str] = Counter()
        self.order: list[str] = []
        self.fail: set[str] = set()
        self.retries: dict[str, int] = {}
        self.block: dict[str, asyncio.Event] = {}


async def step(state: Steps, name: str) -> str:
    state.runs[name] += 1
    await asyncio.sleep(0)
    if name in state.block:
        await state.block[name].wait()
    if state.retries.get(name, 0) >= state.runs[name]:
        raise RetryException(f"{name} not ready")
    if name in state.fail:
        raise ValueError(f"{name} failed")
    state.order.append(name)
    return f"{name} done"


def new_app() -> tuple[Boilermaker, Steps, InMemoryBroker, InMemoryResultsStore]:
    steps = Steps()
    broker = InMemoryBroker()
    store = InMemoryResultsStore()
    app = Boilermaker(steps, broker, results_storage=store)
    app.register_async(step, policy=RetryPolicy(max_tries=3, delay=0))
    return app, steps, broker, store


def node(app: Boilermaker, name: str) -> Task:
    return app.create_task(step, name)


async def run_graph(app: Boilermaker, graph: TaskGraph, **settings: Any) -> GraphProgress:
    await app.publish_graph(graph)
    await app.run_until_idle(timeout=30, **settings)
    progress = await app.graph_progress(graph.graph_id)
    assert progress is not None
    assert progress.complete, f"graph did not complete: {progress}"
    return progress


def status_by_name(graph: TaskGraph, progress: GraphProgress) -> dict[str, TaskStatus | str]:
    """Each node's status by its name; ``skipped`` for nodes that can never run."""
    out: dict[str, TaskStatus | str] = {}
    for task_id, task in graph.tasks.items():
        name = task.args[0]
        out[name] = "skipped" if task_id in progress.skipped else progress.statuses[task_id]
    return out


def seed_graph(app: Boilermaker) -> tuple[TaskGraph, dict[str, Task]]:
    """The seed README's fetch -> process -> save, with a handler for fetch failing."""
    tasks = {name: node(app, name) for name in ("fetch", "process", "save", "cleanup")}
    graph = (
        TaskGraphBuilder()
        .add(tasks["fetch"])
        .on_failure(tasks["fetch"].task_id, tasks["cleanup"])
        .then(tasks["process"])
        .then(tasks["save"])
        .build()
    )
    return graph, tasks


async def test_seed_graph_success_skips_the_failure_handler() -> None:
    app, steps, broker, _store = new_app()
    graph, _ = seed_graph(app)
    progress = await run_graph(app, graph)

    assert steps.order == ["fetch", "process", "save"]
    assert steps.runs == Counter(fetch=1, process=1, save=1)
    assert status_by_name(graph, progress) == {
        "fetch": TaskStatus.Success,
        "process": TaskStatus.Success,
        "save": TaskStatus.Success,
        "cleanup": "skipped",
    }
    assert not progress.failed
    assert broker.is_idle()
    assert broker.counts().dead_lettered == 0


async def test_seed_graph_failure_runs_the_handler_and_never_the_dependents() -> None:
    app, steps, broker, _store = new_app()
    steps.fail.add("fetch")
    graph, tasks = seed_graph(app)
    progress = await run_graph(app, graph)

    assert steps.runs == Counter(fetch=1, cleanup=1)
    assert status_by_name(graph, progress) == {
        "fetch": TaskStatus.Failure,
        "process": "skipped",
        "save": "skipped",
        "cleanup": TaskStatus.Success,
    }
    assert progress.failed
    (dead,) = broker.dead_letters()
    assert dead.dead_letter_reason == TASK_FAILED
    assert dead.message_id == tasks["fetch"].task_id
    result = await app.get_result(graph.task(tasks["fetch"].task_id))
    assert result.status is TaskStatus.Failure
    assert result.errors == ["ValueError: fetch failed"]


async def test_node_results_are_stored_and_readable() -> None:
    app, _steps, _broker, _store = new_app()
    graph, tasks = seed_graph(app)
    await run_graph(app, graph)
    result = await app.get_result(graph.task(tasks["save"].task_id))
    assert result.status is TaskStatus.Success
    assert result.result == "save done"
    assert result.graph_id == graph.graph_id


async def test_fan_out_fifty_then_join() -> None:
    app, steps, _broker, _store = new_app()
    root = node(app, "root")
    middle = [node(app, f"mid-{i}") for i in range(50)]
    join = node(app, "join")
    graph = TaskGraphBuilder().add(root).parallel(*middle, depends_on=root).then(join).build()
    progress = await run_graph(app, graph, concurrency=16)

    assert set(steps.runs.values()) == {1}
    assert len(steps.runs) == 52
    assert steps.order[0] == "root"
    assert steps.order[-1] == "join"
    assert all(status is TaskStatus.Success for status in progress.statuses.values())


async def test_diamond_runs_the_join_once_after_both_branches() -> None:
    app, steps, _broker, _store = new_app()
    a, b, c, d = (node(app, n) for n in "abcd")
    graph = TaskGraphBuilder().add(a).parallel(b, c, depends_on=a).then(d).build()
    await app.publish_graph(graph)
    _worker, progress = await asyncio.gather(
        app.run_until_idle(timeout=10, concurrency=4),
        app.wait_for_graph(graph.graph_id, timeout=10, poll_interval=0.01),
    )
    assert progress.complete

    assert steps.runs == Counter(a=1, b=1, c=1, d=1)
    assert steps.order[0] == "a"
    assert steps.order[-1] == "d"


async def test_independent_chains_merge_into_one_task() -> None:
    app, steps, _broker, _store = new_app()
    a1, a2, a3, b1, b2, merge = (node(app, n) for n in ("a1", "a2", "a3", "b1", "b2", "merge"))
    graph = (
        TaskGraphBuilder()
        .add_chain(TaskChain(a1, a2, a3))
        .add_chain(TaskChain(b1, b2))
        .add(merge, depends_on=[a3, b2])
        .build()
    )
    await run_graph(app, graph, concurrency=4)

    assert set(steps.runs.values()) == {1}
    pos = {name: i for i, name in enumerate(steps.order)}
    assert pos["a1"] < pos["a2"] < pos["a3"] < pos["merge"]
    assert pos["b1"] < pos["b2"] < pos["merge"]


async def test_retries_inside_a_graph_then_continue() -> None:
    app, steps, broker, _store = new_app()
    steps.retries["b"] = 2
    a, b, c = (node(app, n) for n in "abc")
    graph = TaskGraphBuilder().sequence(a, b, c).build()
    progress = await run_graph(app, graph)

    assert steps.runs == Counter(a=1, b=3, c=1)
    assert steps.order == ["a", "b", "c"]
    assert not progress.failed
    assert broker.counts().dead_lettered == 0
    result = await app.get_result(b.task_id, graph_id=graph.graph_id)
    assert result.status is TaskStatus.Success


async def test_node_exhausting_retries_runs_its_handler_and_all_failed_once() -> None:
    app, steps, broker, _store = new_app()
    steps.retries["b"] = 99
    a, b, c, d = (node(app, n) for n in "abcd")
    handler, all_failed = node(app, "b-handler"), node(app, "all-failed")
    graph = (
        TaskGraphBuilder()
        .add(a)
        .then(b, on_failure=handler)
        .then(c)
        .add(d, depends_on=a)
        .build(on_all_failed=all_failed)
    )
    progress = await run_graph(app, graph, concurrency=4)

    assert steps.runs == Counter({"a": 1, "b": 3, "d": 1, "b-handler": 1, "all-failed": 1})
    statuses = status_by_name(graph, progress)
    assert statuses["b"] is TaskStatus.RetriesExhausted
    assert statuses["c"] == "skipped"
    assert statuses["all-failed"] is TaskStatus.Success
    assert progress.failed
    (dead,) = broker.dead_letters()
    assert dead.dead_letter_reason == PROCESSING_ERROR


async def test_failing_failure_handler_counts_as_failure() -> None:
    app, steps, _broker, _store = new_app()
    steps.fail.update({"a", "a-handler"})
    a, b = node(app, "a"), node(app, "b")
    handler, all_failed = node(app, "a-handler"), node(app, "all-failed")
    graph = TaskGraphBuilder().add(a, on_failure=handler).then(b).build(on_all_failed=all_failed)
    progress = await run_graph(app, graph)

    assert steps.runs == Counter({"a": 1, "a-handler": 1, "all-failed": 1})
    statuses = status_by_name(graph, progress)
    assert statuses["a-handler"] is TaskStatus.Failure
    assert statuses["b"] == "skipped"
    assert progress.failed


async def test_failed_branch_does_not_stop_independent_branch() -> None:
    app, steps, _broker, _store = new_app()
    steps.fail.add("left")
    root, left, right, after_right = (node(app, n) for n in ("root", "left", "right", "after"))
    all_failed = node(app, "all-failed")
    graph = (
        TaskGraphBuilder()
        .add(root)
        .add(left, depends_on=root)
        .add(right, depends_on=root)
        .add(after_right, depends_on=right)
        .build(on_all_failed=all_failed)
    )
    progress = await run_graph(app, graph, concurrency=4)
    assert steps.runs == Counter({"root": 1, "left": 1, "right": 1, "after": 1, "all-failed": 1})
    assert progress.failed


async def test_all_failed_callback_is_skipped_when_nothing_failed() -> None:
    app, steps, _broker, _store = new_app()
    a, b, all_failed = node(app, "a"), node(app, "b"), node(app, "all-failed")
    graph = TaskGraphBuilder().sequence(a, b).build(on_all_failed=all_failed)
    progress = await run_graph(app, graph)
    assert steps.runs == Counter(a=1, b=1)
    assert status_by_name(graph, progress)["all-failed"] == "skipped"
    assert not progress.failed


async def test_unregistered_graph_node_is_recorded_deadlettered() -> None:
    app, steps, broker, _store = new_app()
    a = node(app, "a")
    ghost = Task.si("not_registered_anywhere")
    handler, all_failed = node(app, "ghost-handler"), node(app, "all-failed")
    graph = (
        TaskGraphBuilder().add(a).then(ghost, on_failure=handler).build(on_all_failed=all_failed)
    )
    progress = await run_graph(app, graph)
    assert progress.statuses[ghost.task_id] is TaskStatus.Deadlettered
    assert steps.runs == Counter({"a": 1, "ghost-handler": 1, "all-failed": 1})
    (dead,) = broker.dead_letters()
    assert dead.message_id == ghost.task_id


async def test_graph_progress_reads_with_a_store_alone() -> None:
    store = InMemoryResultsStore()
    publisher_app = Boilermaker({}, InMemoryBroker(), results_storage=store)

    async def only(state: object) -> None:
        return None

    publisher_app.register_async(only)
    graph = TaskGraphBuilder().add(publisher_app.create_task(only)).build()
    await publisher_app.publish_graph(graph)

    reader = Boilermaker({}, None, results_storage=store)
    progress = await reader.graph_progress(graph.graph_id)
    assert progress is not None
    assert set(progress.statuses.values()) == {TaskStatus.Scheduled}


# -- shared failure handlers -------------------------------------------------------------------


async def test_shared_handler_runs_once_when_several_of_its_tasks_fail() -> None:
    app, steps, broker, _store = new_app()
    steps.fail |= {"a", "b"}
    a, b, c, handler, join = (node(app, n) for n in ("a", "b", "c", "handler", "join"))
    graph = (
        TaskGraphBuilder()
        .parallel(a, b, c, on_failure=handler)
        .then(join)
        .build(on_all_failed=node(app, "fallback"))
    )
    progress = await run_graph(app, graph)

    assert steps.runs == Counter(a=1, b=1, c=1, handler=1, fallback=1)
    assert status_by_name(graph, progress) == {
        "a": TaskStatus.Failure,
        "b": TaskStatus.Failure,
        "c": TaskStatus.Success,
        "handler": TaskStatus.Success,
        "join": "skipped",
        "fallback": TaskStatus.Success,
    }
    assert progress.failed
    assert broker.counts().dead_lettered == 2


async def test_shared_handler_is_skipped_when_all_its_tasks_succeed() -> None:
    app, steps, _broker, _store = new_app()
    a, b, handler, join = (node(app, n) for n in ("a", "b", "handler", "join"))
    graph = TaskGraphBuilder().parallel(a, b, on_failure=handler).then(join).build()
    progress = await run_graph(app, graph)

    assert steps.runs == Counter(a=1, b=1, join=1)
    assert status_by_name(graph, progress)["handler"] == "skipped"
    assert not progress.failed


async def test_chain_handler_runs_once_at_the_first_failure_and_the_rest_is_skipped() -> None:
    app, steps, _broker, _store = new_app()
    steps.fail.add("two")
    one, two, three, handler = (node(app, n) for n in ("one", "two", "three", "handler"))
    graph = TaskGraphBuilder().add_chain(TaskChain(one, two, three, on_any_failure=handler)).build()
    progress = await run_graph(app, graph)

    assert steps.runs == Counter(one=1, two=1, handler=1)
    assert status_by_name(graph, progress) == {
        "one": TaskStatus.Success,
        "two": TaskStatus.Failure,
        "three": "skipped",
        "handler": TaskStatus.Success,
    }


async def test_graph_with_a_shared_handler_ends_only_after_its_last_task_settles() -> None:
    app, steps, _broker, _store = new_app()
    steps.fail |= {"fast", "slow"}
    steps.block["slow"] = asyncio.Event()
    fast, slow, handler = node(app, "fast"), node(app, "slow"), node(app, "handler")
    graph = (
        TaskGraphBuilder()
        .parallel(fast, slow, on_failure=handler)
        .build(on_all_failed=node(app, "fallback"))
    )
    await app.publish_graph(graph)
    worker = asyncio.create_task(app.run(install_signal_handlers=False, receive_wait=0.05))
    try:
        for _ in range(500):
            if "handler" in steps.order:
                break
            await asyncio.sleep(0.01)
        assert steps.order == ["handler"], "the handler did not run at the first failure"
        await asyncio.sleep(0.1)
        progress = await app.graph_progress(graph.graph_id)
        assert progress is not None
        assert not progress.ended, "ended while a task still ran"
        assert steps.runs["fallback"] == 0

        steps.block["slow"].set()
        done = await app.wait_for_graph(graph.graph_id, timeout=10, poll_interval=0.02)
    finally:
        app.stop()
        await worker
    assert done.failed
    assert steps.runs == Counter(fast=1, slow=1, handler=1, fallback=1)

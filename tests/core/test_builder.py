"""TaskGraphBuilder: the seed's patterns, and every wiring it must refuse."""

from __future__ import annotations

from typing import Any

import pytest

from boilermaker import Boilermaker
from boilermaker.exceptions import GraphBuildError
from boilermaker.memory import InMemoryBroker
from boilermaker.task import Task, TaskChain, TaskGraph, TaskGraphBuilder


def t(name: str = "step", *args: Any) -> Task:
    return Task.si(name, *args)


def parents_of(graph: TaskGraph, task: Task) -> set[str]:
    return set(graph.parents[task.task_id])


async def fetch_data(state: Any, endpoint: str) -> str:
    return endpoint


async def process_data(state: Any) -> None:
    return None


async def save_results(state: Any) -> None:
    return None


async def cleanup_on_error(state: Any) -> None:
    return None


def test_seed_readme_chain_builds_as_written() -> None:
    app = Boilermaker({}, InMemoryBroker())
    app.register_many_async([fetch_data, process_data, save_results, cleanup_on_error])
    fetch_task = app.create_task(fetch_data, "api-endpoint")
    process_task = app.create_task(process_data)
    save_task = app.create_task(save_results)
    cleanup_task = app.create_task(cleanup_on_error)

    graph = (
        TaskGraphBuilder()
        .add(fetch_task)
        .on_failure(fetch_task.task_id, cleanup_task)
        .then(process_task)
        .then(save_task)
        .build()
    )

    assert len(graph) == 4
    assert graph.root_ids == [fetch_task.task_id]
    assert parents_of(graph, process_task) == {fetch_task.task_id}
    assert parents_of(graph, save_task) == {process_task.task_id}
    assert parents_of(graph, cleanup_task) == set()
    assert graph.failure_callbacks == {fetch_task.task_id: cleanup_task.task_id}
    assert graph.failure_parent == {cleanup_task.task_id: fetch_task.task_id}
    assert graph.waits_on(cleanup_task.task_id) == [fetch_task.task_id]
    assert set(graph.notified_by(fetch_task.task_id)) == {
        process_task.task_id,
        cleanup_task.task_id,
    }
    assert set(graph.sink_ids) == {save_task.task_id, cleanup_task.task_id}
    assert graph.all_failed_callback is None
    for task in graph.tasks.values():
        assert task.graph_id == graph.graph_id
    # The caller's own tasks are stamped too, so app.get_result(fetch_task) finds the graph.
    assert fetch_task.graph_id == graph.graph_id
    assert graph.tasks[fetch_task.task_id] is not fetch_task


def test_failure_handler_given_to_add_and_then() -> None:
    a, a_handler, b, b_handler = t("a"), t("a_err"), t("b"), t("b_err")
    graph = TaskGraphBuilder().add(a, on_failure=a_handler).then(b, on_failure=b_handler).build()
    assert graph.failure_callbacks == {a.task_id: a_handler.task_id, b.task_id: b_handler.task_id}
    assert parents_of(graph, b) == {a.task_id}
    assert graph.root_ids == [a.task_id]


def test_failure_handler_accepts_a_task_as_target() -> None:
    a, handler = t("a"), t("handler")
    graph = TaskGraphBuilder().add(a).on_failure(a, handler).build()
    assert graph.failure_callbacks == {a.task_id: handler.task_id}


def test_fan_out_and_fan_in() -> None:
    start, left, middle, right, join = t("start"), t("l"), t("m"), t("r"), t("join")
    graph = (
        TaskGraphBuilder()
        .add(start)
        .parallel(left, middle, right, depends_on=start)
        .then(join)
        .build()
    )
    assert graph.root_ids == [start.task_id]
    for branch in (left, middle, right):
        assert parents_of(graph, branch) == {start.task_id}
    assert set(graph.children[start.task_id]) == {left.task_id, middle.task_id, right.task_id}
    assert parents_of(graph, join) == {left.task_id, middle.task_id, right.task_id}
    assert graph.sink_ids == [join.task_id]


def test_parallel_roots_accept_a_list() -> None:
    tasks = [t(f"p{i}") for i in range(4)]
    after = t("after")
    graph = TaskGraphBuilder().parallel(tasks).then(after).build()
    assert set(graph.root_ids) == {task.task_id for task in tasks}
    assert parents_of(graph, after) == {task.task_id for task in tasks}


def test_parallel_with_one_task_takes_a_failure_handler() -> None:
    a, handler = t("a"), t("handler")
    graph = TaskGraphBuilder().parallel(a, on_failure=handler).build()
    assert graph.failure_callbacks == {a.task_id: handler.task_id}


def test_explicit_dependencies_by_id_and_by_task() -> None:
    a, b, c, d = t("a"), t("b"), t("c"), t("d")
    graph = TaskGraphBuilder().add(a).add(b).add(c).add(d, depends_on=[a.task_id, b]).build()
    assert set(graph.root_ids) == {a.task_id, b.task_id, c.task_id}
    assert parents_of(graph, d) == {a.task_id, b.task_id}


def test_sequence_starts_a_graph_or_continues_from_the_cursor() -> None:
    a, b, c = t("a"), t("b"), t("c")
    graph = TaskGraphBuilder().sequence(a, b, c).build()
    assert graph.root_ids == [a.task_id]
    assert parents_of(graph, b) == {a.task_id}
    assert parents_of(graph, c) == {b.task_id}

    first, x, y = t("first"), t("x"), t("y")
    graph = TaskGraphBuilder().add(first).sequence(x, y).build()
    assert parents_of(graph, x) == {first.task_id}
    assert parents_of(graph, y) == {x.task_id}


def test_add_chain_links_the_chain_and_its_failure_handler() -> None:
    root = t("root")
    one, two, three, handler = t("one"), t("two"), t("three"), t("handler")
    chain = TaskChain(one, two, three, on_failure=handler)
    after = t("after")
    graph = TaskGraphBuilder().add(root).add_chain(chain, depends_on=root).then(after).build()
    assert parents_of(graph, one) == {root.task_id}
    assert parents_of(graph, two) == {one.task_id}
    assert parents_of(graph, three) == {two.task_id}
    assert parents_of(graph, after) == {three.task_id}
    assert graph.failure_callbacks == {three.task_id: handler.task_id}


def test_task_chain_basics() -> None:
    one, two = t("one"), t("two")
    chain = TaskChain(one, two)
    assert chain.head is one
    assert chain.last is two
    assert list(chain) == [one, two]
    assert len(chain) == 2
    with pytest.raises(ValueError, match="at least one task"):
        TaskChain()


def test_on_all_failed_by_method_or_build_argument() -> None:
    a, b, fallback = t("a"), t("b"), t("fallback")
    graph = TaskGraphBuilder().add(a).then(b).on_all_failed(fallback).build()
    assert graph.all_failed_callback == fallback.task_id
    assert fallback.task_id not in graph.root_ids
    assert fallback.task_id not in graph.sink_ids
    assert parents_of(graph, fallback) == set()

    a, fallback = t("a"), t("fallback")
    graph = TaskGraphBuilder().add(a).build(on_all_failed=fallback)
    assert graph.all_failed_callback == fallback.task_id
    assert graph.root_ids == [a.task_id]


def test_the_cursor_does_not_move_with_handlers() -> None:
    a, handler, fallback, b = t("a"), t("handler"), t("fallback"), t("b")
    graph = (
        TaskGraphBuilder().add(a).on_failure(a.task_id, handler).on_all_failed(fallback).then(b)
    ).build()
    assert parents_of(graph, b) == {a.task_id}


def test_given_graph_id_is_used() -> None:
    a = t("a")
    graph = TaskGraphBuilder(graph_id="my-graph").add(a).build()  # type: ignore[arg-type]
    assert graph.graph_id == "my-graph"
    assert graph.tasks[a.task_id].graph_id == "my-graph"


def test_graph_round_trips_through_json() -> None:
    a, b, handler, fallback = t("a", 1), t("b", {"k": [1, 2]}), t("handler"), t("fallback")
    graph = TaskGraphBuilder().add(a, on_failure=handler).then(b).build(on_all_failed=fallback)
    again = TaskGraph.model_validate_json(graph.model_dump_json())
    assert again.graph_id == graph.graph_id
    assert again.tasks == graph.tasks
    assert again.children == graph.children
    assert again.failure_callbacks == graph.failure_callbacks
    assert again.all_failed_callback == graph.all_failed_callback
    assert again.root_ids == graph.root_ids


# -- rejections -------------------------------------------------------------------------------


def rejects(builder: TaskGraphBuilder, match: str) -> None:
    with pytest.raises(GraphBuildError, match=match):
        builder.build()


def test_rejects_an_empty_graph() -> None:
    rejects(TaskGraphBuilder(), "at least one task")


def test_rejects_a_graph_of_only_handlers() -> None:
    rejects(TaskGraphBuilder().on_all_failed(t("fallback")), "besides its failure handlers")


def test_rejects_duplicate_task_ids() -> None:
    a = t("a")
    rejects(TaskGraphBuilder().add(a).then(a), "duplicate task id")
    twin = a.model_copy()
    rejects(TaskGraphBuilder().add(a).add(twin), "duplicate task id")


def test_rejects_unknown_dependencies() -> None:
    rejects(TaskGraphBuilder().add(t("a"), depends_on="no-such-task"), "unknown task no-such-task")
    a = t("a")
    rejects(
        TaskGraphBuilder().add(t("b"), depends_on=a),
        f"depends on unknown task {a.task_id}",
    )


def test_rejects_a_failure_handler_for_an_unknown_task() -> None:
    rejects(TaskGraphBuilder().add(t("a")).on_failure("ghost", t("h")), "unknown task ghost")


def test_rejects_cycles() -> None:
    a, b, c = t("a"), t("b"), t("c")
    rejects(
        TaskGraphBuilder()
        .add(a, depends_on=c.task_id)
        .add(b, depends_on=a)
        .add(c, depends_on=b)
        .add(t("root")),
        "cycle",
    )


def test_rejects_a_task_depending_on_itself() -> None:
    a = t("a")
    rejects(TaskGraphBuilder().add(t("root")).add(a, depends_on=a), "depends on itself")


def test_rejects_a_task_that_depends_on_a_task_and_its_failure_handler() -> None:
    a, handler, both = t("a"), t("handler"), t("both")
    rejects(
        TaskGraphBuilder()
        .add(a)
        .on_failure(a.task_id, handler)
        .add(both, depends_on=[a.task_id, handler.task_id]),
        "could never run",
    )


def test_rejects_a_failure_handler_with_dependencies() -> None:
    a, b, handler = t("a"), t("b"), t("handler")
    rejects(
        TaskGraphBuilder().add(a).add(b).on_failure(a, handler).add(handler, depends_on=b),
        "a handler runs only when its task fails",
    )


def test_rejects_depending_on_the_all_failed_callback() -> None:
    a, fallback, after = t("a"), t("fallback"), t("after")
    rejects(
        TaskGraphBuilder().add(a).on_all_failed(fallback).add(after, depends_on=fallback),
        "depends on the all-failed callback",
    )


def test_rejects_a_second_all_failed_callback() -> None:
    builder = TaskGraphBuilder().add(t("a")).on_all_failed(t("one"))
    with pytest.raises(GraphBuildError, match="already has an all-failed callback"):
        builder.on_all_failed(t("two"))
    with pytest.raises(GraphBuildError, match="already has an all-failed callback"):
        builder.build(on_all_failed=t("three"))


def test_rejects_two_handlers_for_one_task() -> None:
    a = t("a")
    rejects(
        TaskGraphBuilder().add(a).on_failure(a.task_id, t("h1")).on_failure(a.task_id, t("h2")),
        "already has a failure handler",
    )


def test_rejects_one_handler_shared_by_two_tasks() -> None:
    a, b, handler = t("a"), t("b"), t("handler")
    with pytest.raises(GraphBuildError):
        TaskGraphBuilder().add(a).add(b).on_failure(a, handler).on_failure(b, handler).build()
    with pytest.raises(GraphBuildError, match="handler per task"):
        TaskGraphBuilder().parallel(a, b, on_failure=handler)


def test_rejects_then_with_nothing_before() -> None:
    with pytest.raises(GraphBuildError, match="needs a task before it"):
        TaskGraphBuilder().then(t("a"))
    # Handlers alone do not give then() anything to follow.
    with pytest.raises(GraphBuildError, match="needs a task before it"):
        TaskGraphBuilder().on_all_failed(t("fallback")).then(t("a"))


def test_rejects_tasks_carrying_chain_callbacks() -> None:
    a, b = t("a"), t("b")
    a >> b
    rejects(TaskGraphBuilder().add(a), "carries on_success/on_failure")


@pytest.mark.parametrize("bad", [None, "task", 3])
def test_rejects_non_tasks(bad: Any) -> None:
    with pytest.raises(GraphBuildError, match="takes a Task"):
        TaskGraphBuilder().add(bad)
    with pytest.raises(GraphBuildError):
        TaskGraphBuilder().add(t("a"), depends_on=[3])  # type: ignore[list-item]


def test_rejects_empty_parallel_sequence_and_bad_chain() -> None:
    with pytest.raises(GraphBuildError):
        TaskGraphBuilder().parallel()
    with pytest.raises(GraphBuildError):
        TaskGraphBuilder().sequence()
    with pytest.raises(GraphBuildError, match="TaskChain"):
        TaskGraphBuilder().add_chain([t("a")])  # type: ignore[arg-type]


def test_every_problem_is_reported_at_once() -> None:
    a = t("a")
    builder = TaskGraphBuilder().add(a).add(t("b"), depends_on="ghost-1").add(a)
    with pytest.raises(GraphBuildError) as info:
        builder.build()
    assert "ghost-1" in str(info.value)
    assert "duplicate task id" in str(info.value)

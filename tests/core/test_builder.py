"""TaskGraphBuilder: the published library's cursor rules, the seed's patterns, and
every wiring it must refuse."""

from __future__ import annotations

from typing import Any

import pytest

from boilermaker import Boilermaker
from boilermaker.exceptions import GraphBuildError
from boilermaker.memory import InMemoryBroker
from boilermaker.task import LAST_ADDED, Task, TaskChain, TaskGraph, TaskGraphBuilder
from boilermaker.task.graph import LEGACY_PROTOCOL


def t(name: str = "step", *args: Any) -> Task:
    return Task.si(name, *args)


def parents_of(graph: TaskGraph, task: Task) -> set[str]:
    return set(graph.parents[task.task_id])


def handlers_of(graph: TaskGraph, task: Task) -> set[str]:
    return set(graph.fail_edges.get(task.task_id, []))


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
    assert graph.fail_edges == {fetch_task.task_id: [cleanup_task.task_id]}
    assert set(graph.fail_children) == {cleanup_task.task_id}
    assert set(graph.children) == {fetch_task.task_id, process_task.task_id, save_task.task_id}
    assert graph.failure_parents == {cleanup_task.task_id: [fetch_task.task_id]}
    assert graph.waits_on(cleanup_task.task_id) == [fetch_task.task_id]
    assert set(graph.notified_by(fetch_task.task_id)) == {
        process_task.task_id,
        cleanup_task.task_id,
    }
    assert set(graph.sink_ids) == {save_task.task_id, cleanup_task.task_id}
    assert graph.all_failed_callback_id is None
    for task in graph.tasks.values():
        assert task.graph_id == graph.graph_id
    # The caller's own tasks are stamped too, so app.get_result(fetch_task) finds the graph.
    assert fetch_task.graph_id == graph.graph_id
    assert graph.tasks[fetch_task.task_id] is not fetch_task


# -- the cursor rules ------------------------------------------------------------------------


def test_add_after_add_depends_on_the_previous_task() -> None:
    a, b = t("a"), t("b")
    graph = TaskGraphBuilder().add(a).add(b).build()
    assert graph.root_ids == [a.task_id]
    assert parents_of(graph, b) == {a.task_id}


def test_depends_on_none_makes_explicit_roots() -> None:
    a, b, c = t("a"), t("b"), t("c")
    graph = TaskGraphBuilder().add(a).add(b, depends_on=None).parallel(c, depends_on=None).build()
    assert set(graph.root_ids) == {a.task_id, b.task_id, c.task_id}
    assert LAST_ADDED is not None
    assert repr(LAST_ADDED) == "LAST_ADDED"


def test_fan_out_from_the_cursor() -> None:
    fetch, notify, cleanup = t("fetch"), t("notify"), t("cleanup")
    graph = TaskGraphBuilder().add(fetch).parallel(notify, cleanup).build()
    assert graph.edges == {fetch.task_id: [notify.task_id, cleanup.task_id]}
    assert graph.root_ids == [fetch.task_id]


def test_diamond() -> None:
    a, b, c, d = t("a"), t("b"), t("c"), t("d")
    graph = TaskGraphBuilder().add(a).parallel(b, c).then(d).build()
    assert parents_of(graph, b) == parents_of(graph, c) == {a.task_id}
    assert parents_of(graph, d) == {b.task_id, c.task_id}
    assert graph.sink_ids == [d.task_id]


def test_fan_out_and_fan_in_with_explicit_dependencies() -> None:
    start, left, middle, right, join = t("start"), t("l"), t("m"), t("r"), t("join")
    graph = (
        TaskGraphBuilder()
        .add(start)
        .parallel(left, middle, right, depends_on=[start])
        .then(join)
        .build()
    )
    for branch in (left, middle, right):
        assert parents_of(graph, branch) == {start.task_id}
    assert parents_of(graph, join) == {left.task_id, middle.task_id, right.task_id}


def test_parallel_roots_accept_a_list() -> None:
    tasks = [t(f"p{i}") for i in range(4)]
    after = t("after")
    graph = TaskGraphBuilder().parallel(tasks).then(after).build()
    assert set(graph.root_ids) == {task.task_id for task in tasks}
    assert parents_of(graph, after) == {task.task_id for task in tasks}


def test_explicit_dependencies_by_id_task_and_chain() -> None:
    a, b, c, d = t("a"), t("b"), t("c"), t("d")
    chain = TaskChain(c)
    graph = (
        TaskGraphBuilder()
        .add(a)
        .add(b, depends_on=None)
        .add_chain(chain, depends_on=None)
        .add(d, depends_on=[a.task_id, b, chain])
        .build()
    )
    assert set(graph.root_ids) == {a.task_id, b.task_id, c.task_id}
    assert parents_of(graph, d) == {a.task_id, b.task_id, c.task_id}


def test_sequence_follows_the_cursor() -> None:
    a, b, c = t("a"), t("b"), t("c")
    graph = TaskGraphBuilder().sequence(a, b, c).build()
    assert graph.root_ids == [a.task_id]
    assert parents_of(graph, b) == {a.task_id}
    assert parents_of(graph, c) == {b.task_id}

    first, x, y = t("first"), t("x"), t("y")
    graph = TaskGraphBuilder().add(first).sequence(x, y).sequence().build()
    assert parents_of(graph, x) == {first.task_id}
    assert parents_of(graph, y) == {x.task_id}


def test_add_chain_follows_the_cursor_and_replaces_it() -> None:
    root, one, two, after = t("root"), t("one"), t("two"), t("after")
    graph = TaskGraphBuilder().add(root).add_chain(TaskChain(one, two)).then(after).build()
    assert parents_of(graph, one) == {root.task_id}
    assert parents_of(graph, two) == {one.task_id}
    assert parents_of(graph, after) == {two.task_id}


def test_independent_chains_append_to_the_cursor_so_then_joins_them() -> None:
    a1, a2, b1, b2, join = t("a1"), t("a2"), t("b1"), t("b2"), t("join")
    graph = (
        TaskGraphBuilder()
        .add_chain(TaskChain(a1, a2), depends_on=None)
        .add_chain(TaskChain(b1, b2), depends_on=None)
        .then(join)
        .build()
    )
    assert set(graph.root_ids) == {a1.task_id, b1.task_id}
    assert parents_of(graph, join) == {a2.task_id, b2.task_id}


def test_add_chain_with_explicit_dependencies() -> None:
    root, other, one, two = t("root"), t("other"), t("one"), t("two")
    graph = (
        TaskGraphBuilder()
        .add(root)
        .add(other, depends_on=None)
        .add_chain(TaskChain(one, two), depends_on=[root])
        .build()
    )
    assert parents_of(graph, one) == {root.task_id}


def test_failure_handler_given_to_add_and_then() -> None:
    a, a_handler, b, b_handler = t("a"), t("a_err"), t("b"), t("b_err")
    graph = TaskGraphBuilder().add(a, on_failure=a_handler).then(b, on_failure=b_handler).build()
    assert graph.fail_edges == {a.task_id: [a_handler.task_id], b.task_id: [b_handler.task_id]}
    assert parents_of(graph, b) == {a.task_id}
    assert graph.root_ids == [a.task_id]


def test_failure_handler_accepts_a_task_as_target() -> None:
    a, handler = t("a"), t("handler")
    graph = TaskGraphBuilder().add(a).on_failure(a, handler).build()
    assert handlers_of(graph, a) == {handler.task_id}


def test_parallel_shares_one_failure_handler() -> None:
    a, b, handler = t("a"), t("b"), t("handler")
    graph = TaskGraphBuilder().parallel(a, b, on_failure=handler).build()
    assert handlers_of(graph, a) == handlers_of(graph, b) == {handler.task_id}
    assert list(graph.fail_children) == [handler.task_id]
    assert set(graph.failure_parents[handler.task_id]) == {a.task_id, b.task_id}
    assert graph.sink_ids == [handler.task_id]


def test_task_chain_shares_its_any_failure_handler() -> None:
    one, two, three, handler = t("one"), t("two"), t("three"), t("handler")
    graph = TaskGraphBuilder().add_chain(TaskChain(one, two, three, on_any_failure=handler)).build()
    for task in (one, two, three):
        assert handlers_of(graph, task) == {handler.task_id}
    assert graph.waits_on(handler.task_id) == [one.task_id, two.task_id, three.task_id]


def test_one_task_may_have_several_handlers() -> None:
    a, h1, h2 = t("a"), t("h1"), t("h2")
    graph = TaskGraphBuilder().add(a).on_failure(a, h1).on_failure(a, h2).build()
    assert graph.fail_edges[a.task_id] == [h1.task_id, h2.task_id]


def test_task_chain_basics() -> None:
    one, two = t("one"), t("two")
    chain = TaskChain(one, two)
    assert chain.head is one
    assert chain.last is two
    assert list(chain) == [one, two]
    assert len(chain) == 2
    assert chain.on_any_failure is None
    with pytest.raises(ValueError, match="at least one task"):
        TaskChain()


def test_on_all_failed_by_method_or_build_argument() -> None:
    a, b, fallback = t("a"), t("b"), t("fallback")
    graph = TaskGraphBuilder().add(a).then(b).on_all_failed(fallback).build()
    assert graph.all_failed_callback_id == fallback.task_id
    assert fallback.task_id in graph.fail_children
    assert fallback.task_id not in graph.root_ids
    assert fallback.task_id not in graph.sink_ids
    assert parents_of(graph, fallback) == set()

    a, fallback = t("a"), t("fallback")
    graph = TaskGraphBuilder().add(a).build(on_all_failed=fallback)
    assert graph.all_failed_callback_id == fallback.task_id


def test_the_cursor_does_not_move_with_handlers() -> None:
    a, handler, fallback, b = t("a"), t("handler"), t("fallback"), t("b")
    graph = (
        TaskGraphBuilder().add(a).on_failure(a.task_id, handler).on_all_failed(fallback).then(b)
    ).build()
    assert parents_of(graph, b) == {a.task_id}


def test_chained_tasks_bring_their_callbacks_along() -> None:
    a, b, on_fail = t("a"), t("b"), t("on_fail")
    a >> b
    a.on_failure = on_fail
    graph = TaskGraphBuilder().add(a).build()
    assert parents_of(graph, b) == {a.task_id}
    assert handlers_of(graph, a) == {on_fail.task_id}
    assert graph.children[a.task_id].on_success is None


def test_given_graph_id_is_used() -> None:
    a = t("a")
    graph = TaskGraphBuilder(graph_id="my-graph").add(a).build()  # type: ignore[arg-type]
    assert graph.graph_id == "my-graph"
    assert graph.tasks[a.task_id].graph_id == "my-graph"


def test_graph_round_trips_through_its_stored_form() -> None:
    a, b, handler, fallback = t("a", 1), t("b", {"k": [1, 2]}), t("handler"), t("fallback")
    graph = TaskGraphBuilder().add(a, on_failure=handler).then(b).build(on_all_failed=fallback)
    again = TaskGraph.from_stored(graph.to_stored())
    assert again.graph_id == graph.graph_id
    assert again.children == graph.children
    assert again.fail_children == graph.fail_children
    assert again.edges == graph.edges
    assert again.fail_edges == graph.fail_edges
    assert again.all_failed_callback_id == graph.all_failed_callback_id
    assert again.protocol == graph.protocol != LEGACY_PROTOCOL


def test_a_stored_graph_without_protocol_was_written_by_1x() -> None:
    a, b = t("a"), t("b")
    doc = TaskGraphBuilder().add(a).then(b).build().model_dump(mode="json", exclude={"protocol"})
    doc["children"][a.task_id]["unknown_newer_field"] = 1
    import json

    graph = TaskGraph.from_stored(json.dumps(doc))
    assert graph.protocol == LEGACY_PROTOCOL
    assert parents_of(graph, b) == {a.task_id}


# -- the published building and reading methods --------------------------------------------


def test_add_task_and_callbacks_directly() -> None:
    graph = TaskGraph()
    a, b, handler, fallback = t("a"), t("b"), t("handler"), t("fallback")
    graph.add_task(a)
    graph.add_task(b, parent_ids=[a.task_id])
    graph.add_failure_callback(a.task_id, handler)
    graph.add_all_failed_callback(fallback)
    graph.check()
    assert parents_of(graph, b) == {a.task_id}
    assert str(graph.storage_path) == f"{graph.graph_id}/graph.json"
    cyclic = TaskGraph.model_validate(
        {**graph.model_dump(), "edges": {a.task_id: [b.task_id], b.task_id: [a.task_id]}}
    )
    with pytest.raises(GraphBuildError, match="cycle"):
        cyclic.check()
    with pytest.raises(ValueError, match="already has an all-failed callback"):
        graph.add_all_failed_callback(t("other"))


# -- rejections -------------------------------------------------------------------------------


def test_rejects_an_empty_graph() -> None:
    with pytest.raises(GraphBuildError, match="at least one task"):
        TaskGraphBuilder().build()
    with pytest.raises(GraphBuildError, match="at least one task"):
        TaskGraphBuilder().on_all_failed(t("fallback")).build()


def test_rejects_a_task_added_twice_at_once() -> None:
    a = t("a")
    with pytest.raises(ValueError, match=f"{a.task_id}.*already added"):
        TaskGraphBuilder().add(a).then(a)
    with pytest.raises(ValueError, match="already added"):
        TaskGraphBuilder().add(a).add(a.model_copy())


def test_rejects_unknown_dependencies_at_once() -> None:
    with pytest.raises(ValueError, match=r"no-such-task.*not in this graph"):
        TaskGraphBuilder().add(t("a"), depends_on=["no-such-task"])
    with pytest.raises(ValueError, match="not in this graph"):
        TaskGraphBuilder().add(t("b"), depends_on=[t("a")])


def test_depends_on_and_on_failure_are_keyword_only() -> None:
    a = t("a")
    with pytest.raises(TypeError):
        TaskGraphBuilder().add(a).add(t("b"), [a])  # type: ignore[misc]


def test_rejects_a_failure_handler_for_an_unknown_task() -> None:
    with pytest.raises(GraphBuildError, match="ghost"):
        TaskGraphBuilder().add(t("a")).on_failure("ghost", t("h"))


def test_rejects_a_task_that_depends_on_itself() -> None:
    a = t("a")
    with pytest.raises(GraphBuildError, match="not in this graph"):
        TaskGraphBuilder().add(t("root")).add(a, depends_on=[a])


def test_rejects_a_main_task_as_failure_handler() -> None:
    a, b = t("a"), t("b")
    with pytest.raises(GraphBuildError, match="task of its own"):
        TaskGraphBuilder().add(a).add(b).on_failure(a, b)


def test_rejects_a_second_all_failed_callback() -> None:
    builder = TaskGraphBuilder().add(t("a")).on_all_failed(t("one"))
    with pytest.raises(GraphBuildError, match="already has an all-failed callback"):
        builder.on_all_failed(t("two"))
    with pytest.raises(GraphBuildError, match="both with the method"):
        builder.build(on_all_failed=t("three"))


def test_rejects_the_all_failed_callback_as_a_handler() -> None:
    a, fallback = t("a"), t("fallback")
    with pytest.raises(GraphBuildError):
        TaskGraphBuilder().add(a).on_all_failed(fallback).on_failure(a, fallback).build()


def test_rejects_then_with_nothing_before() -> None:
    with pytest.raises(GraphBuildError, match="needs a task before it"):
        TaskGraphBuilder().then(t("a"))
    with pytest.raises(GraphBuildError, match="needs a task before it"):
        TaskGraphBuilder().on_all_failed(t("fallback")).then(t("a"))


def test_rejects_a_task_depending_on_a_task_and_its_handler() -> None:
    a, handler, child = t("a"), t("handler"), t("child")
    handler >> child  # a child of the handler, and ...
    graph = TaskGraph()
    graph.add_task(a)
    graph.add_failure_callback(a.task_id, handler)
    wired = TaskGraph.model_validate(
        {**graph.model_dump(), "edges": {**graph.edges, a.task_id: [child.task_id]}}
    )  # ... of its task too
    with pytest.raises(GraphBuildError, match="could never run"):
        wired.check()


@pytest.mark.parametrize("bad", [None, "task", 3])
def test_rejects_non_tasks(bad: Any) -> None:
    with pytest.raises(GraphBuildError, match="holds Tasks"):
        TaskGraphBuilder().add(bad)
    with pytest.raises(GraphBuildError):
        TaskGraphBuilder().add(t("a"), depends_on=[3])  # type: ignore[list-item]


def test_rejects_empty_parallel_and_bad_chain() -> None:
    with pytest.raises(GraphBuildError):
        TaskGraphBuilder().parallel()
    with pytest.raises(GraphBuildError, match="TaskChain"):
        TaskGraphBuilder().add_chain([t("a")])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        TaskChain("not a task")  # type: ignore[arg-type]

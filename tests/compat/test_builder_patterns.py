"""The graph builder makes the same graphs as the published 1.4.1, edge by edge.

``drivers/build_patterns.py`` builds the seven patterns of 1.4.1's
``examples/task_graph_example.py`` and a few more rows of its cursor table,
once under each interpreter, and describes every graph by function name:
success edges, failure edges, main and failure nodes, the all-failed
callback. Each pattern is compared between the two versions, and 1.4.1's
own graph is checked against the documented rules, so the comparison rests
on what 1.4.1 is known to do.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.compat.conftest import run_driver


def shape(
    nodes: list[str],
    edges: dict[str, list[str]],
    fail_nodes: tuple[str, ...] = (),
    fail_edges: dict[str, list[str]] | None = None,
    all_failed: str | None = None,
) -> dict[str, Any]:
    return {
        "nodes": sorted(nodes),
        "fail_nodes": sorted(fail_nodes),
        "edges": edges,
        "fail_edges": fail_edges or {},
        "all_failed_callback": all_failed,
    }


#: What each pattern builds, by the cursor rules of the upgrade guide (section 1).
DOCUMENTED = {
    "sequential": shape(["fetch", "process", "save"], {"fetch": ["process"], "process": ["save"]}),
    "fan_out": shape(["fetch", "notify", "cleanup"], {"fetch": ["cleanup", "notify"]}),
    "fan_in": shape(
        ["fetch", "process", "save", "aggregate"],
        {"fetch": ["aggregate"], "process": ["aggregate"], "save": ["aggregate"]},
    ),
    "diamond": shape(
        ["fetch", "process", "save", "aggregate"],
        {"fetch": ["process", "save"], "process": ["aggregate"], "save": ["aggregate"]},
    ),
    "independent_chains_join": shape(
        ["a1", "a2", "b1", "b2", "join"],
        {"a1": ["a2"], "a2": ["join"], "b1": ["b2"], "b2": ["join"]},
    ),
    "inline_failure_handler": shape(
        ["fetch", "process"],
        {"fetch": ["process"]},
        fail_nodes=("handler",),
        fail_edges={"fetch": ["handler"]},
    ),
    "chain_shared_failure_handler": shape(
        ["first", "second", "third"],
        {"first": ["second"], "second": ["third"]},
        fail_nodes=("handler",),
        fail_edges={"first": ["handler"], "second": ["handler"], "third": ["handler"]},
    ),
    "add_then_add": shape(["first", "second"], {"first": ["second"]}),
    "parallel_shared_failure_handler": shape(
        ["fetch", "notify", "cleanup"],
        {"fetch": ["cleanup", "notify"]},
        fail_nodes=("handler",),
        fail_edges={"cleanup": ["handler"], "notify": ["handler"]},
    ),
    "sequence": shape(["first", "second", "third"], {"first": ["second"], "second": ["third"]}),
    "explicit_roots_and_depends_on": shape(
        ["first", "a1", "a2", "second", "join"],
        {"a1": ["a2"], "a2": ["join"], "first": ["join"]},
    ),
    "all_failed_callback": shape(
        ["first", "second"], {"first": ["second"]}, fail_nodes=("handler",), all_failed="handler"
    ),
}


@pytest.fixture(scope="module")
def published_graphs(published_python: Path) -> dict[str, Any]:
    built = run_driver(published_python, "build_patterns.py")
    assert built["library"] == "1.4.1"
    return built


@pytest.fixture(scope="module")
def our_graphs(our_python: Path) -> dict[str, Any]:
    built = run_driver(our_python, "build_patterns.py")
    assert built["library"] != "1.4.1"
    return built


def test_the_driver_builds_every_documented_pattern(
    published_graphs: dict[str, Any], our_graphs: dict[str, Any]
) -> None:
    assert set(published_graphs["patterns"]) == set(DOCUMENTED)
    assert set(our_graphs["patterns"]) == set(DOCUMENTED)


@pytest.mark.parametrize("pattern", sorted(DOCUMENTED))
def test_the_published_builder_follows_the_documented_rules(
    pattern: str, published_graphs: dict[str, Any]
) -> None:
    assert published_graphs["patterns"][pattern] == DOCUMENTED[pattern]


@pytest.mark.parametrize("pattern", sorted(DOCUMENTED))
def test_the_new_builder_builds_the_published_graph(
    pattern: str,
    published_graphs: dict[str, Any],
    our_graphs: dict[str, Any],
    record_counts: Callable[..., Path],
) -> None:
    theirs = published_graphs["patterns"][pattern]
    ours = our_graphs["patterns"][pattern]
    record_counts(
        f"graph builder: {pattern}",
        published_edges=sum(len(v) for v in theirs.get("edges", {}).values())
        + sum(len(v) for v in theirs.get("fail_edges", {}).values()),
        same_edges=ours == theirs,
        error=ours.get("error"),
    )
    assert "error" not in ours, f"{pattern} does not build or read: {ours}"
    for part in ("edges", "fail_edges", "nodes", "fail_nodes", "all_failed_callback"):
        assert ours[part] == theirs[part], f"{pattern}: {part} differ"

"""``boilermaker inspect`` (1.4.1's command) and ``graph status`` on graphs of both formats.

1.4.1-shaped graphs are written into Azurite blob by blob; ours run on the
in-memory broker with a real ``BlobClientStorage``. The store is given the
way 1.4.1's users give it: the global ``--container`` before the command, and
(for Azurite) a connection string in ``BOILERMAKER_STORAGE_CONNECTION_STRING``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from click.testing import Result

from tests.cli.conftest import invoke
from tests.cli.stored_graphs import LegacyGraph, OurGraph, run_our_graph, write_legacy_graph
from tests.conftest import unique_container_name

if TYPE_CHECKING:
    from boilermaker.storage.azurite import Azurite

JSON_FIELDS = {"graph_id", "is_complete", "has_failures", "stalled_count", "tasks", "fail_tasks"}
TASK_FIELDS = {"task_id", "function_name", "status", "type", "is_stalled", "depends_on"}


@dataclass
class Graphs:
    azurite: Azurite
    container: str
    healthy: LegacyGraph
    stalled: LegacyGraph
    unrecorded: LegacyGraph
    ours: OurGraph

    def run(self, *args: str) -> Result:
        return invoke(
            "--container",
            self.container,
            *args,
            BOILERMAKER_STORAGE_CONNECTION_STRING=self.azurite.connection_string,
        )

    def json(self, *args: str) -> tuple[int, dict[str, Any]]:
        result = self.run(*args, "--json")
        assert result.exit_code in (0, 1), result.output
        return result.exit_code, json.loads(result.stdout)


@pytest.fixture(scope="module")
def graphs(azurite: Azurite) -> Graphs:
    container = unique_container_name("inspect")
    cs = azurite.connection_string
    done = dict.fromkeys(["fetch", "transform", "report", "save"], "success")
    return Graphs(
        azurite,
        container,
        healthy=write_legacy_graph(cs, container, done),
        stalled=write_legacy_graph(
            cs, container, {"fetch": "success", "transform": "started", "report": "scheduled"}
        ),
        unrecorded=write_legacy_graph(cs, container, {**done, "save": None}),
        ours=run_our_graph(cs, container, broken={"save"}),
    )


def by_name(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["function_name"]: t for t in [*doc["tasks"], *doc["fail_tasks"]]}


def test_inspect_json_of_a_finished_1_4_1_graph_has_the_fields_scripts_parse(
    graphs: Graphs,
) -> None:
    code, doc = graphs.json("inspect", "--graph", graphs.healthy.graph_id)

    assert code == 0
    assert doc.keys() >= JSON_FIELDS
    assert doc["graph_id"] == graphs.healthy.graph_id
    assert doc["is_complete"] is True
    assert doc["has_failures"] is False
    assert doc["stalled_count"] == 0
    assert doc["protocol"] == 1
    assert [t["function_name"] for t in doc["tasks"]] == ["fetch", "transform", "report", "save"]
    assert [t["function_name"] for t in doc["fail_tasks"]] == ["cleanup", "alert"]
    for task in [*doc["tasks"], *doc["fail_tasks"]]:
        assert task.keys() >= TASK_FIELDS
    tasks = by_name(doc)
    ids = graphs.healthy.ids
    assert tasks["save"]["depends_on"] == sorted([ids["transform"], ids["report"]])
    assert tasks["cleanup"]["depends_on"] == [ids["fetch"]]
    assert tasks["fetch"]["depends_on"] == []
    assert {t["type"] for t in doc["tasks"]} == {"child"}
    assert {t["type"] for t in doc["fail_tasks"]} == {"fail_child"}
    assert tasks["fetch"]["status"] == "success"
    assert tasks["alert"]["status"] == "pending"


def test_inspect_of_a_stalled_graph_exits_1_and_marks_the_stalled_nodes(graphs: Graphs) -> None:
    code, doc = graphs.json("inspect", "--graph", graphs.stalled.graph_id)
    table = graphs.run("inspect", "--graph", graphs.stalled.graph_id)

    assert code == 1
    assert doc["stalled_count"] == 2
    assert doc["is_complete"] is False
    stalled = {name for name, t in by_name(doc).items() if t["is_stalled"]}
    assert stalled == {"transform", "report"}
    assert table.exit_code == 1, table.output
    rows = {line.split()[0]: line for line in table.stdout.splitlines()[1:-1]}
    assert "started (stalled)" in rows[graphs.stalled.ids["transform"]]
    assert "scheduled (stalled)" in rows[graphs.stalled.ids["report"]]
    assert "(published by 1.4.1): 6 node(s), running; 2 stalled." in table.stdout


def test_a_node_without_a_record_has_no_status(graphs: Graphs) -> None:
    code, doc = graphs.json("inspect", "--graph", graphs.unrecorded.graph_id)
    detail = graphs.run(
        "inspect", "--graph", graphs.unrecorded.graph_id, "--task", graphs.unrecorded.ids["save"]
    )

    assert code == 0
    assert by_name(doc)["save"]["status"] is None
    assert doc["is_complete"] is False
    assert detail.exit_code == 0, detail.output
    assert "Status:     no record" in detail.stdout


def test_inspect_of_our_graph_shows_failures_and_skipped_handlers(graphs: Graphs) -> None:
    code, doc = graphs.json("inspect", "--graph", graphs.ours.graph_id)

    assert code == 0
    assert doc["protocol"] == 2
    assert doc["is_complete"] is True
    assert doc["has_failures"] is True
    assert doc["ended"] is True
    assert doc["failed"] is True
    by_id = {t["task_id"]: t for t in [*doc["tasks"], *doc["fail_tasks"]]}
    tasks = {name: by_id[task_id] for name, task_id in graphs.ours.ids.items()}
    assert tasks["save"]["status"] == "failure"
    assert tasks["save"]["errors"] == ["ValueError: save failed"]
    assert tasks["cleanup"]["status"] == "pending"  # as stored; it will never run:
    assert tasks["cleanup"]["skipped"] is True
    assert tasks["cleanup"]["type"] == "fail_child"
    assert tasks["cleanup"]["role"] == "on-failure"


def test_graph_status_and_inspect_print_the_same_report(graphs: Graphs) -> None:
    for graph_id in (graphs.ours.graph_id, graphs.stalled.graph_id):
        status = graphs.run("graph", "status", graph_id, "--json")
        _code, inspected = graphs.json("inspect", "--graph", graph_id)
        status_table = graphs.run("graph", "status", graph_id)
        inspect_table = graphs.run("inspect", "--graph", graph_id)

        assert status.exit_code == 0, status.output
        assert json.loads(status.stdout) == inspected
        assert status_table.stdout == inspect_table.stdout


def test_inspect_task_shows_one_node_in_detail(graphs: Graphs) -> None:
    ids = graphs.ours.ids
    save = ids["save"]
    detail = graphs.run("inspect", "--graph", graphs.ours.graph_id, "--task", save)
    code, doc = graphs.json("inspect", "--graph", graphs.ours.graph_id, "--task", save)

    assert detail.exit_code == 0, detail.output
    for line in (
        f"Task id:    {save}",
        "Function:   step",
        "Status:     failure",
        "Attempt:    1",
        "Result:     null",
        "  ValueError: save failed",
        "Exception:",
        "Traceback (most recent call last)",
        "Depends on: " + ", ".join(sorted([ids["transform"], ids["report"]])),
    ):
        assert line in detail.stdout
    assert code == 0
    assert doc.keys() >= JSON_FIELDS
    assert doc["task"]["task_id"] == save
    assert doc["task"]["status"] == "failure"
    assert doc["task"]["attempt"] == 1
    assert "ValueError: save failed" in doc["task"]["formatted_exception"]
    fetch = graphs.run(
        "inspect", "--graph", graphs.ours.graph_id, "--task", graphs.ours.ids["fetch"]
    )
    assert 'Result:     "fetch done"' in fetch.stdout


def test_inspect_task_exit_status_is_that_nodes(graphs: Graphs) -> None:
    stalled = graphs.run(
        "inspect", "--graph", graphs.stalled.graph_id, "--task", graphs.stalled.ids["transform"]
    )
    healthy = graphs.run(
        "inspect", "--graph", graphs.stalled.graph_id, "--task", graphs.stalled.ids["fetch"]
    )

    assert stalled.exit_code == 1, stalled.output
    assert "Status:     started (stalled)" in stalled.stdout
    assert healthy.exit_code == 0, healthy.output


def test_inspect_errors_exit_2(graphs: Graphs, azurite: Azurite) -> None:
    missing_graph = graphs.run("inspect", "--graph", "01900000-0000-7000-8000-000000000000")
    missing_task = graphs.run("inspect", "--graph", graphs.ours.graph_id, "--task", "nope")
    missing_container = invoke(
        "--container",
        "no-such-container",
        "inspect",
        "--graph",
        graphs.ours.graph_id,
        BOILERMAKER_STORAGE_CONNECTION_STRING=azurite.connection_string,
    )

    assert missing_graph.exit_code == 2
    assert "is not in results container" in missing_graph.output
    assert missing_task.exit_code == 2
    assert f"task nope is not in graph {graphs.ours.graph_id}" in missing_task.output
    assert missing_container.exit_code == 2
    assert "does not exist" in missing_container.output
    for result in (missing_graph, missing_task, missing_container):
        assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["inspect"], "'--graph'"),
        (["inspect", "--graph", "a/b"], "'--graph'"),
        (["inspect", "--graph", "g", "--task", ".."], "'--task'"),
        (["inspect", "--graph", "g", "--visual", "--json"], "--visual and --json"),
        (["inspect", "--graph", "g", "--visual", "--task", "t"], "--task"),
        (["inspect", "--graph", "g", "--open"], "go with --visual"),
    ],
)
def test_inspect_usage_errors_name_the_option(args: list[str], needle: str) -> None:
    result = invoke(
        "--container",
        "results",
        *args,
        BOILERMAKER_STORAGE_CONNECTION_STRING="UseDevelopmentStorage=true",
    )

    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert "Traceback" not in result.output

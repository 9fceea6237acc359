"""``boilermaker purge`` (1.4.1's command) on Azurite: what goes, what stays, and resuming.

Old groups are made by dating them: 1.4.1-shaped graphs are written with an
old UUID7 id and old ``created_date`` tags; graphs of ours run now and are
re-tagged (their ``graph.json`` has no ``created_date``, as we write it).
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from click.testing import Result

from boilermaker.cli.purge import Group, delete_groups, group_prefix, uuid7_time
from tests.cli.conftest import invoke
from tests.cli.stored_graphs import (
    blob_names,
    container_client,
    delete_blobs,
    run_our_graph,
    set_created_date,
    uuid7_at,
    write_legacy_graph,
    write_legacy_standalone,
)
from tests.conftest import unique_container_name

if TYPE_CHECKING:
    from boilermaker.storage import BlobClientStorage
    from boilermaker.storage.azurite import Azurite

OLD = datetime.now(UTC) - timedelta(days=40)
OLD_DAY = OLD.strftime("%Y-%m-%d")
DONE = dict.fromkeys(["fetch", "transform", "report", "save"], "success")
IN_PROGRESS = {"fetch": "success", "transform": "started", "report": "success"}


class Container:
    def __init__(self, azurite: Azurite) -> None:
        self.cs = azurite.connection_string
        self.name = unique_container_name("purge")
        container_client(self.cs, self.name).close()

    def purge(self, *args: str) -> Result:
        return invoke(
            "--container",
            self.name,
            "purge",
            *args,
            BOILERMAKER_STORAGE_CONNECTION_STRING=self.cs,
        )

    def purge_json(self, *args: str) -> tuple[int, dict[str, Any]]:
        result = self.purge(*args, "--json")
        assert result.exit_code in (0, 1, 2), result.output
        return result.exit_code, json.loads(result.stdout)

    def groups(self) -> set[str]:
        return {name.split("/")[1] for name in blob_names(self.cs, self.name)}

    def names(self, group_id: str) -> list[str]:
        return blob_names(self.cs, self.name, group_prefix(group_id))

    def old_graph_of_ours(self, broken: set[str] | None = None) -> str:
        graph = run_our_graph(self.cs, self.name, broken or set())
        set_created_date(self.cs, self.name, group_prefix(graph.graph_id), OLD_DAY)
        return graph.graph_id


@pytest.fixture
def container(azurite: Azurite) -> Container:
    return Container(azurite)


def states(doc: dict[str, Any]) -> dict[str, tuple[str, str, bool]]:
    return {g["group_id"]: (g["kind"], g["state"], g["delete"]) for g in doc["groups"]}


def test_purge_deletes_old_finished_groups_of_both_formats_and_skips_those_in_progress(
    container: Container,
) -> None:
    cs, name = container.cs, container.name
    old_done = write_legacy_graph(cs, name, DONE, created=OLD).graph_id
    old_running = write_legacy_graph(cs, name, IN_PROGRESS, created=OLD).graph_id
    new_done = write_legacy_graph(cs, name, DONE).graph_id
    ours = container.old_graph_of_ours(broken={"save"})
    alone_done = write_legacy_standalone(cs, name, "success", OLD)
    alone_running = write_legacy_standalone(cs, name, "started", OLD)
    assert any(n.endswith("/graph-status.json") for n in container.names(ours))
    everything = container.groups()

    code, plan = container.purge_json("--older-than", "30", "--dry-run")

    assert code == 1  # something would be skipped as in progress
    assert container.groups() == everything  # a dry run deletes nothing
    assert plan["dry_run"] is True
    assert states(plan) == {
        old_done: ("graph", "complete", True),
        old_running: ("graph", "in progress", False),
        ours: ("graph", "complete", True),
        alone_done: ("standalone", "complete", True),
        alone_running: ("standalone", "in progress", False),
    }
    assert new_done not in states(plan)

    code, done = container.purge_json("--older-than", "30")

    assert code == 1
    assert states(done) == states(plan)
    assert done["skipped_in_progress"] == sorted([old_running, alone_running])
    assert container.groups() == {old_running, alone_running, new_done}
    # graph.json and 6 records; graph.json, 5 records and graph-status.json; 1 result
    assert done["deleted_blobs"] == 7 + 7 + 1
    assert done["failed"] == []

    forced = container.purge("--older-than", "30", "--force")

    assert forced.exit_code == 0, forced.output
    assert "deleted (--force)" in forced.stdout
    assert container.groups() == {new_done}
    nothing = container.purge("--older-than", "30")
    assert nothing.exit_code == 0, nothing.output
    assert "Nothing to purge." in nothing.stdout


def test_an_interrupted_purge_is_finished_by_the_next_run(container: Container) -> None:
    cs, name = container.cs, container.name
    # 1.4.1 graph, two records gone; 1.4.1 graph, only graph.json left; a 1.4.1 graph
    # whose failed fetch record went while save (never run) is still Pending:
    some_gone = write_legacy_graph(cs, name, DONE, created=OLD)
    delete_blobs(cs, name, some_gone.names[1:3])
    only_graph_json = write_legacy_graph(cs, name, DONE, created=OLD)
    delete_blobs(cs, name, only_graph_json.names[1:])
    failed_first = write_legacy_graph(
        cs, name, {"fetch": "failure", "cleanup": "success", "alert": "success"}, created=OLD
    )
    delete_blobs(cs, name, [n for n in failed_first.names if failed_first.ids["fetch"] in n])
    # Ours: records gone (graph.json and the end record left); only the end record left.
    ours_records_gone = container.old_graph_of_ours()
    delete_blobs(
        cs,
        name,
        [
            n
            for n in container.names(ours_records_gone)
            if not n.endswith(("/graph.json", "/graph-status.json"))
        ],
    )
    ours_remnant = container.old_graph_of_ours()
    delete_blobs(
        cs,
        name,
        [n for n in container.names(ours_remnant) if not n.endswith("/graph-status.json")],
    )

    code, doc = container.purge_json("--older-than", "7")

    assert code == 0, doc
    assert states(doc) == {
        some_gone.graph_id: ("graph", "partly purged", True),
        only_graph_json.graph_id: ("graph", "partly purged", True),
        failed_first.graph_id: ("graph", "partly purged", True),
        # Ours: records are written as things happen, so only the end record tells.
        ours_records_gone: ("graph", "complete", True),
        ours_remnant: ("remnant", "partly purged", True),
    }
    assert container.groups() == set()


def test_purge_deletes_records_before_graph_json_and_a_failure_leaves_it_for_next_time(
    container: Container,
) -> None:
    cs, name = container.cs, container.name
    graph = write_legacy_graph(cs, name, DONE, created=OLD)
    client = container_client(cs, name)
    lease = client.get_blob_client(graph.names[2]).acquire_lease(-1)

    code, doc = container.purge_json("--older-than", "7")

    assert code == 2  # a blob could not be deleted
    assert doc["failed"] == [graph.names[2]]
    assert container.names(graph.graph_id) == sorted([graph.names[0], graph.names[2]])

    lease.release()
    client.close()
    again = container.purge("--older-than", "7")

    assert again.exit_code == 0, again.output
    assert container.groups() == set()


def test_corrupted_groups_are_skipped_unless_forced(container: Container) -> None:
    cs, name = container.cs, container.name
    tags = {"created_date": OLD_DAY}
    bad_json = uuid7_at(OLD)
    no_graph_json = uuid7_at(OLD)
    with container_client(cs, name) as client:
        client.upload_blob(f"task-results/{bad_json}/graph.json", b"{not json", tags=tags)
        for task in ("a", "b"):
            client.upload_blob(
                f"task-results/{no_graph_json}/{task}.json",
                json.dumps({"task_id": task, "graph_id": no_graph_json, "status": "success"}),
                tags=tags,
            )

    skipped = container.purge("--older-than", "7")

    assert skipped.exit_code == 0, skipped.output
    assert "Skipped 2 corrupted group(s) (--force deletes them)." in skipped.stderr
    assert container.groups() == {bad_json, no_graph_json}
    code, doc = container.purge_json("--older-than", "7", "--force")
    assert code == 0
    assert {g["group_id"]: g["kind"] for g in doc["groups"]} == {
        bad_json: "corrupted",
        no_graph_json: "corrupted",
    }
    assert container.groups() == set()


def test_all_graphs_finds_untagged_groups_by_their_uuid7_date(container: Container) -> None:
    cs, name = container.cs, container.name
    untagged_old = write_legacy_graph(cs, name, DONE, created=OLD, tagged=False).graph_id
    untagged_new = write_legacy_graph(cs, name, DONE, tagged=False).graph_id
    with container_client(cs, name) as client:
        client.upload_blob("task-results/not-a-uuid/graph.json", b"{}")

    by_tags = container.purge("--older-than", "7")
    code, by_listing = container.purge_json("--older-than", "7", "--all-graphs")

    assert by_tags.exit_code == 0, by_tags.output
    assert "Nothing to purge." in by_tags.stdout
    assert code == 0
    assert by_listing["found_by"] == "listing (UUID7 ids)"
    assert states(by_listing) == {untagged_old: ("graph", "complete", True)}
    assert by_listing["undated"] == ["not-a-uuid"]
    assert container.groups() == {untagged_new, "not-a-uuid"}


def test_uuid7_dates() -> None:
    when = datetime(2024, 5, 17, 12, 30, 1, 250_000, tzinfo=UTC)

    assert uuid7_time(uuid7_at(when)) == when
    assert uuid7_time("6f1e2d3c-0000-4000-8000-000000000000") is None  # version 4
    assert uuid7_time("graph-1") is None


async def test_deleting_a_blob_that_is_already_gone_is_not_an_error(
    blob_store: BlobClientStorage,
) -> None:
    await blob_store.write("task-results/g1/t1.json", b"{}")
    await blob_store.write("task-results/g1/graph.json", b"{}")
    group = Group(
        "g1",
        ["task-results/g1/t1.json", "task-results/g1/gone.json", "task-results/g1/graph.json"],
    )

    await delete_groups(blob_store, [group])
    await delete_groups(blob_store, [Group("g1", list(group.names))])

    assert group.failed == []
    assert await blob_store.list_names("task-results/") == []


def test_purge_works_on_a_store_given_by_the_commands_own_options(azurite: Azurite) -> None:
    name = unique_container_name("purge")
    write_legacy_graph(azurite.connection_string, name, DONE, created=OLD)

    result = invoke(
        "purge",
        "--older-than",
        "1",
        "--results-connection-string",
        azurite.connection_string,
        "--results-container",
        name,
    )

    assert result.exit_code == 0, result.output
    assert "Deleted 7 blob(s) in 1 group(s)." in result.stdout
    assert asyncio.run(_count(azurite, name)) == 0


async def _count(azurite: Azurite, name: str) -> int:
    from boilermaker.storage import BlobClientStorage

    store = BlobClientStorage.from_connection_string(azurite.connection_string, name)
    try:
        return len(await store.list_names("task-results/"))
    finally:
        await store.close()

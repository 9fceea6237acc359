"""``boilermaker graph`` and ``boilermaker results`` on the blob results store (Azurite).

Graphs run on the in-memory broker with a real ``BlobClientStorage``; the
commands read what the workers wrote. ``graph recover`` re-dispatches onto the
emulator, and ``dlq replay`` resets a dead-lettered graph node through the
results store.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from boilermaker import Boilermaker, RetryPolicy, Task
from boilermaker.broker import Broker
from boilermaker.memory import InMemoryBroker
from boilermaker.service_bus import AzureServiceBus
from boilermaker.storage.http_connection import PROXY_VARIABLES
from boilermaker.task import TaskGraphBuilder
from tests.cli.conftest import Shop, drained, invoke, run_worker_until
from tests.conftest import unique_container_name

if TYPE_CHECKING:
    from boilermaker.emulator import ServiceBusEmulator
    from boilermaker.storage.azurite import Azurite


async def step(state: Shop, name: str) -> str:
    state.runs.append(name)
    if name in state.broken:
        raise ValueError(f"{name} failed")
    return f"{name} done"


def graph_app(broker: Broker, azurite: Azurite, container: str, state: Shop) -> Boilermaker:
    from boilermaker.storage import BlobClientStorage

    store = BlobClientStorage.from_connection_string(
        azurite.connection_string, container, create_container=True
    )
    app = Boilermaker(state, broker, results_storage=store)
    app.register_async(step, policy=RetryPolicy.no_retry())
    return app


@dataclass
class StoredGraph:
    """A finished graph (fetch -> save, save failed) and a standalone result in one container."""

    azurite: Azurite
    container: str
    graph_id: str
    ids: dict[str, str]
    standalone_id: str

    def options(self) -> list[str]:
        return [
            "--results-connection-string",
            self.azurite.connection_string,
            "--results-container",
            self.container,
        ]


@pytest.fixture(scope="module")
def stored_graph(azurite: Azurite) -> StoredGraph:
    container = unique_container_name("cli")
    state = Shop(broken={"save"})

    async def go() -> StoredGraph:
        app = graph_app(InMemoryBroker(), azurite, container, state)
        try:
            tasks = {name: app.create_task(step, name) for name in ("fetch", "save")}
            graph = TaskGraphBuilder().add(tasks["fetch"]).then(tasks["save"]).build()
            await app.publish_graph(graph)
            alone = await app.apply_async(step, "alone")
            await app.run_until_idle(timeout=20)
            return StoredGraph(
                azurite,
                container,
                str(graph.graph_id),
                {name: str(task.task_id) for name, task in tasks.items()},
                str(alone.task_id),
            )
        finally:
            await app.close()

    return asyncio.run(go())


def test_graph_status_shows_every_node(stored_graph: StoredGraph) -> None:
    table = invoke("graph", "status", stored_graph.graph_id, *stored_graph.options())
    as_json = invoke("graph", "status", stored_graph.graph_id, "--json", *stored_graph.options())

    assert table.exit_code == 0, table.output
    rows = {line.split()[0]: line.split() for line in table.stdout.splitlines()[1:-1]}
    assert rows[stored_graph.ids["fetch"]][1:4] == ["step", "root", "success"]
    assert rows[stored_graph.ids["save"]][1:4] == ["step", "node", "failure"]
    assert "ValueError: save failed" in table.stdout
    assert "2 node(s), ended, with failures" in table.stdout
    doc = json.loads(as_json.stdout)
    assert doc["ended"] is True
    assert doc["failed"] is True
    assert {node["status"] for node in doc["tasks"]} == {"success", "failure"}


def test_graph_status_of_an_unknown_graph_is_an_error(stored_graph: StoredGraph) -> None:
    result = invoke("graph", "status", "no-such-graph", *stored_graph.options())

    assert result.exit_code == 1
    assert "graph no-such-graph is not in results container" in result.output


def test_results_get_shows_results_and_errors(stored_graph: StoredGraph) -> None:
    alone = invoke("results", "get", stored_graph.standalone_id, "--json", *stored_graph.options())
    save = invoke(
        "results",
        "get",
        stored_graph.ids["save"],
        "--graph-id",
        stored_graph.graph_id,
        *stored_graph.options(),
    )
    waited = invoke(
        "results", "get", stored_graph.standalone_id, "--wait", "5", *stored_graph.options()
    )
    missing = invoke("results", "get", "no-such-task", *stored_graph.options())

    assert alone.exit_code == 0, alone.output
    doc = json.loads(alone.stdout)
    assert doc["status"] == "success"
    assert doc["result"] == "alone done"
    assert save.exit_code == 0, save.output
    assert "Status:     failure" in save.stdout
    assert "ValueError: save failed" in save.stdout
    assert "Traceback (most recent call last)" in save.stdout  # the task's own, stored
    assert waited.exit_code == 0, waited.output
    assert 'Result:     "alone done"' in waited.stdout
    assert missing.exit_code == 1
    assert "no result stored for task no-such-task" in missing.output


# -- read commands without the Azure SDK ----------------------------------------------------

#: Runs the CLI in a fresh interpreter, then says on stderr which heavy packages it imported.
CLI_SCRIPT = """
import sys
from boilermaker.cli.main import main
code = main(sys.argv[1:])
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"azure", "aiohttp", "requests"})
print("IMPORTED", heavy, file=sys.stderr)
sys.exit(code)
"""


def run_cli_process(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SERVICE_BUS", "BOILERMAKER")) and k.upper() not in PROXY_VARIABLES
    }
    return subprocess.run(
        [sys.executable, "-c", CLI_SCRIPT, *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_read_commands_with_a_connection_string_do_not_import_the_azure_sdk(
    stored_graph: StoredGraph, tmp_path: Path
) -> None:
    env = {
        "BOILERMAKER_STORAGE_CONNECTION_STRING": stored_graph.azurite.connection_string,
        "BOILERMAKER_CONTAINER": stored_graph.container,
    }
    graph_id, save = stored_graph.graph_id, stored_graph.ids["save"]
    runs = {
        "inspect": (["inspect", "--graph", graph_id], "2 node(s), ended, with failures"),
        "status": (["graph", "status", graph_id, "--json"], '"failed": true'),
        "task": (["inspect", "--graph", graph_id, "--task", save, "--json"], save),
        "visual": (
            ["inspect", "--graph", graph_id, "--visual", "--output", str(tmp_path / "g.html")],
            str(tmp_path / "g.html"),
        ),
        "result": (["results", "get", stored_graph.standalone_id], "alone done"),
        "missing": (["inspect", "--graph", "no-such-graph"], ""),
    }
    for name, (args, needle) in runs.items():
        done = run_cli_process(*args, env=env)
        assert "IMPORTED []" in done.stderr, (name, done.stderr)
        assert needle in done.stdout, (name, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr, name
    assert (tmp_path / "g.html").stat().st_size > 0
    missing = run_cli_process("inspect", "--graph", "no-such-graph", env=env)
    assert missing.returncode == 2
    assert "graph no-such-graph is not in results container" in missing.stderr


def test_read_commands_read_with_the_sdk_given_a_storage_url_or_a_proxy(
    stored_graph: StoredGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    from boilermaker.cli.connection import ResultsOptions
    from boilermaker.storage import BlobClientStorage
    from boilermaker.storage.reader import BlobReader

    for variable in PROXY_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
        monkeypatch.delenv(variable.lower(), raising=False)
    by_key = ResultsOptions(stored_graph.azurite.connection_string, None, stored_graph.container)
    by_url = ResultsOptions(None, "https://acct.blob.core.windows.net", stored_graph.container)
    chosen = [by_key.reader(), by_url.reader()]
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    chosen.append(by_key.reader())

    assert [type(store) for store in chosen] == [BlobReader, BlobClientStorage, BlobClientStorage]

    async def close_all() -> None:
        for store in chosen:
            await store.close()

    asyncio.run(close_all())


# -- with the emulator ----------------------------------------------------------------------


def sb_options(emulator: ServiceBusEmulator, queue: str) -> list[str]:
    return ["--connection-string", emulator.connection_string, "--queue", queue]


def test_graph_recover_redispatches_a_stalled_root(
    azurite: Azurite, servicebus_emulator: ServiceBusEmulator, servicebus_queue: str
) -> None:
    container = unique_container_name("cli")

    async def publish_without_a_worker() -> tuple[str, str]:
        broker = AzureServiceBus.from_connection_string(
            servicebus_emulator.connection_string, servicebus_queue
        )
        app = graph_app(broker, azurite, container, Shop())
        try:
            root = app.create_task(step, "root")
            graph = TaskGraphBuilder().add(root).build()
            await app.publish_graph(graph)
            return str(graph.graph_id), str(root.task_id)
        finally:
            await app.close()

    graph_id, root_id = asyncio.run(publish_without_a_worker())
    assert servicebus_emulator.counts(servicebus_queue).active == 1
    results = ["--results-connection-string", azurite.connection_string]
    results += ["--results-container", container]

    patient = invoke(
        "graph", "recover", graph_id, *results, *sb_options(servicebus_emulator, servicebus_queue)
    )
    eager = invoke(
        "graph",
        "recover",
        graph_id,
        "--stalled-after",
        "0s",
        "--json",
        *results,
        *sb_options(servicebus_emulator, servicebus_queue),
    )

    assert patient.exit_code == 0, patient.output
    assert "nothing stalled" in patient.stdout
    assert eager.exit_code == 0, eager.output
    assert len(json.loads(eager.stdout)["redispatched"]) == 1
    assert servicebus_emulator.counts(servicebus_queue).active == 2
    waited = invoke("results", "get", root_id, "--graph-id", graph_id, "--wait", "0.2", *results)
    assert waited.exit_code == 1
    assert "Status:     scheduled" in waited.stdout
    assert "Not finished after 0.2s" in waited.stderr


def test_dlq_replay_of_a_graph_task_needs_the_results_store_and_then_reruns_the_node(
    azurite: Azurite, servicebus_emulator: ServiceBusEmulator, servicebus_queue: str
) -> None:
    container = unique_container_name("cli")
    state = Shop(broken={"save"})
    connection_string = servicebus_emulator.connection_string

    def app() -> Boilermaker:
        broker = AzureServiceBus.from_connection_string(connection_string, servicebus_queue)
        return graph_app(broker, azurite, container, state)

    async def run_graph() -> tuple[str, Task]:
        graph_app_ = app()
        try:
            save = graph_app_.create_task(step, "save")
            graph = TaskGraphBuilder().add(graph_app_.create_task(step, "fetch")).then(save).build()
            await graph_app_.publish_graph(graph)
            await run_worker_until(
                graph_app_,
                lambda: servicebus_emulator.counts(servicebus_queue).dead_lettered == 1,
            )
            return str(graph.graph_id), save
        finally:
            await graph_app_.close()

    graph_id, save = asyncio.run(run_graph())
    sb = sb_options(servicebus_emulator, servicebus_queue)
    results = ["--results-connection-string", azurite.connection_string]
    results += ["--results-container", container]

    without_store = invoke("dlq", "replay", "--yes", *sb)
    assert without_store.exit_code == 0, without_store.output
    assert "Skipped 1" in without_store.stdout
    assert "graph task" in without_store.stdout
    assert servicebus_emulator.counts(servicebus_queue).dead_lettered == 1

    with_store = invoke("dlq", "replay", "--yes", "--json", *results, *sb)
    assert with_store.exit_code == 0, with_store.output
    report: dict[str, Any] = json.loads(with_store.stdout)
    assert [o["function_name"] for o in report["replayed"]] == ["step"]
    assert "reset from failure to scheduled" in report["replayed"][0]["detail"]

    state.broken.clear()
    state.runs.clear()

    async def rerun() -> dict[str, Any]:
        graph_app_ = app()
        try:
            await run_worker_until(
                graph_app_,
                lambda: (
                    state.runs == ["save"] and drained(servicebus_emulator.counts(servicebus_queue))
                ),
            )
            result = await graph_app_.get_result(save, timeout=10)
            return result.model_dump(mode="json")
        finally:
            await graph_app_.close()

    assert asyncio.run(rerun())["status"] == "success"
    assert state.runs == ["save"]
    status = invoke("graph", "status", graph_id, "--json", *results)
    assert {node["status"] for node in json.loads(status.stdout)["tasks"]} == {"success"}

"""``boilermaker recover`` and ``boilermaker invoke`` (1.4.1's commands) on the emulator.

The messages they publish are peeked with the raw SDK: their ids
(``<task_id>:recovery:<unix time>``, ``<task_id>:invoke:<unix time>``) and,
for graphs published by 1.4.1, bodies 1.4.1 workers can run (the task's
fields at the top level). The results store is Azurite.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from azure.servicebus import ServiceBusReceivedMessage
from azure.servicebus.aio import ServiceBusClient
from click.testing import Result

from boilermaker.results import Records, node_blob
from boilermaker.service_bus import AzureServiceBus
from boilermaker.task import TaskGraphBuilder
from tests.cli.conftest import Shop, drained, invoke, run_worker_until
from tests.cli.stored_graphs import our_app, step, write_legacy_graph
from tests.conftest import unique_container_name

if TYPE_CHECKING:
    from boilermaker.emulator import ServiceBusEmulator
    from boilermaker.results import NodeRecord
    from boilermaker.storage.azurite import Azurite


@dataclass
class Setup:
    azurite: Azurite
    emulator: ServiceBusEmulator
    queue: str
    container: str

    @property
    def storage(self) -> str:
        return self.azurite.connection_string

    def run(self, *args: str, bus: bool = True) -> Result:
        """``boilermaker --container C ARGS --sb-queue-name Q`` with the emulator's
        connection string in SERVICE_BUS_CONNECTION_STRING (1.4.1 would take
        --sb-namespace-url; the emulator needs a connection string)."""
        return invoke(
            "--container",
            self.container,
            *args,
            *(["--sb-queue-name", self.queue] if bus else []),
            BOILERMAKER_STORAGE_CONNECTION_STRING=self.storage,
            SERVICE_BUS_CONNECTION_STRING=self.emulator.connection_string,
        )

    def peek(self) -> list[ServiceBusReceivedMessage]:
        async def go() -> list[ServiceBusReceivedMessage]:
            async with (
                ServiceBusClient.from_connection_string(self.emulator.connection_string) as client,
                client.get_queue_receiver(self.queue) as receiver,
            ):
                return list(await receiver.peek_messages(max_message_count=100, sequence_number=1))

        return asyncio.run(go())

    def record(self, graph_id: str, task_id: str) -> NodeRecord:
        from boilermaker.storage import BlobClientStorage

        async def go() -> NodeRecord:
            store = BlobClientStorage.from_connection_string(self.storage, self.container)
            try:
                got = await Records(store).get(node_blob(graph_id, task_id))
            finally:
                await store.close()
            assert got is not None
            return got[0]

        return asyncio.run(go())


@pytest.fixture
def setup(
    azurite: Azurite, servicebus_emulator: ServiceBusEmulator, servicebus_queue: str
) -> Setup:
    return Setup(azurite, servicebus_emulator, servicebus_queue, unique_container_name("recover"))


def message_ids(messages: list[ServiceBusReceivedMessage]) -> list[str]:
    return [str(m.message_id) for m in messages]


def body(message: ServiceBusReceivedMessage) -> dict[str, Any]:
    return json.loads(b"".join(message.body))


def assert_fresh_id(message_id: str, task_id: str, action: str, before: int) -> None:
    match = re.fullmatch(rf"{re.escape(task_id)}:{action}:(\d+)", message_id)
    assert match, message_id
    assert before <= int(match.group(1)) <= int(time.time())


# -- recover ----------------------------------------------------------------------------------


def test_recover_republishes_the_stalled_nodes_of_a_1_4_1_graph(setup: Setup) -> None:
    graph = write_legacy_graph(
        setup.storage,
        setup.container,
        {"fetch": "success", "transform": "started", "report": "retry", "save": "pending"},
    )
    before = int(time.time())

    result = setup.run("recover", "--graph", graph.graph_id)

    assert result.exit_code == 0, result.output
    messages = setup.peek()
    by_task = {body(m)["task_id"]: m for m in messages}
    assert set(by_task) == {graph.ids["transform"], graph.ids["report"]}
    for name in ("transform", "report"):
        message = by_task[graph.ids[name]]
        assert_fresh_id(str(message.message_id), graph.ids[name], "recovery", before)
        doc = body(message)  # what a 1.4.1 worker decodes: the task at the top level
        assert doc["function_name"] == name
        assert doc["graph_id"] == graph.graph_id
        assert doc["payload"] == {"args": [name], "kwargs": {}}
        assert f"Recovered  {name} ({graph.ids[name]}) as message {message.message_id}" in (
            result.stdout
        )
        assert setup.record(graph.graph_id, graph.ids[name]).status.value == "scheduled"
    assert setup.record(graph.graph_id, graph.ids["save"]).status.value == "pending"


def test_recover_with_nothing_stalled_exits_0_and_publishes_nothing(setup: Setup) -> None:
    done = dict.fromkeys(["fetch", "transform", "report", "save"], "success")
    graph = write_legacy_graph(setup.storage, setup.container, done)

    result = setup.run("recover", "--graph", graph.graph_id, "--json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["recovered"] == []
    assert setup.peek() == []


def test_recover_exits_1_when_some_node_could_not_be_republished(setup: Setup) -> None:
    graph = write_legacy_graph(
        setup.storage,
        setup.container,
        {"fetch": "success", "transform": "started", "report": "scheduled"},
        payloads={"transform": "x" * 300_000},  # over Service Bus's message size limit
    )

    result = setup.run("recover", "--graph", graph.graph_id, "--json")

    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    assert [item["task_id"] for item in doc["recovered"]] == [graph.ids["report"]]
    assert [item["task_id"] for item in doc["failed"]] == [graph.ids["transform"]]
    assert "over the broker's maximum message size" in doc["failed"][0]["error"]
    assert [body(m)["task_id"] for m in setup.peek()] == [graph.ids["report"]]


def test_recover_and_graph_recover_are_one_implementation_on_our_graphs(setup: Setup) -> None:
    async def publish_without_a_worker() -> tuple[str, str]:
        broker = AzureServiceBus.from_connection_string(
            setup.emulator.connection_string, setup.queue
        )
        app = our_app(broker, setup.storage, setup.container, Shop())
        try:
            root = app.create_task(step, "root")
            graph = TaskGraphBuilder().add(root).then(app.create_task(step, "next")).build()
            await app.publish_graph(graph)
            return str(graph.graph_id), str(root.task_id)
        finally:
            await app.close()

    graph_id, root_id = asyncio.run(publish_without_a_worker())
    before = int(time.time())

    patient = setup.run("graph", "recover", graph_id)  # --stalled-after 1h by default
    eager = setup.run("recover", "--graph", graph_id, "--json")

    assert patient.exit_code == 0, patient.output
    assert "nothing stalled" in patient.stdout
    assert eager.exit_code == 0, eager.output
    doc = json.loads(eager.stdout)
    assert doc["redispatched"] == [root_id]
    assert doc["recovered"][0]["function_name"] == "step"
    ids = message_ids(setup.peek())
    assert ids[0] == root_id  # the graph's own publication
    assert_fresh_id(ids[1], root_id, "recovery", before)
    assert doc["recovered"][0]["message_id"] == ids[1]


def test_recover_errors_exit_2(setup: Setup) -> None:
    write_legacy_graph(setup.storage, setup.container, {})  # another graph in the container
    missing = setup.run("recover", "--graph", "01900000-0000-7000-8000-000000000000")
    no_bus = invoke(
        "--container",
        setup.container,
        "recover",
        "--graph",
        "g-1",
        "--sb-queue-name",
        "q",
        BOILERMAKER_STORAGE_CONNECTION_STRING=setup.storage,
    )
    no_graph_option = setup.run("recover")

    assert missing.exit_code == 2
    assert "is not in results container" in missing.output
    assert no_bus.exit_code == 2
    assert "--sb-namespace-url" in no_bus.output
    assert "SERVICE_BUS_NAMESPACE_URL" in no_bus.output
    assert no_graph_option.exit_code == 2
    assert "'--graph'" in no_graph_option.output


# -- invoke -----------------------------------------------------------------------------------


def test_invoke_publishes_a_pending_node_and_schedules_it(setup: Setup) -> None:
    graph = write_legacy_graph(setup.storage, setup.container, {"fetch": "success"})
    before = int(time.time())

    result = setup.run("invoke", graph.ids["transform"], "--graph", graph.graph_id)

    assert result.exit_code == 0, result.output
    (message,) = setup.peek()
    assert_fresh_id(str(message.message_id), graph.ids["transform"], "invoke", before)
    assert body(message)["function_name"] == "transform"
    assert f"as message {message.message_id}" in result.stdout
    assert setup.record(graph.graph_id, graph.ids["transform"]).status.value == "scheduled"


def test_invoke_refuses_finished_tasks_unless_forced_and_never_reruns_a_success(
    setup: Setup,
) -> None:
    graph = write_legacy_graph(
        setup.storage, setup.container, {"fetch": "success", "transform": "failure"}
    )
    failed = graph.ids["transform"]

    refused = setup.run("invoke", failed, "--graph", graph.graph_id)
    succeeded = setup.run("invoke", graph.ids["fetch"], "--graph", graph.graph_id, "--force")
    assert setup.peek() == []
    forced = setup.run("invoke", failed, "--graph", graph.graph_id, "--force", "--json")

    assert refused.exit_code == 2
    assert "is finished (failure); pass --force" in refused.output
    assert succeeded.exit_code == 2
    assert "succeeded; a node that succeeded never runs again" in succeeded.output
    assert forced.exit_code == 0, forced.output
    doc = json.loads(forced.stdout)
    assert doc["previous_status"] == "failure"
    assert message_ids(setup.peek()) == [doc["message_id"]]
    record = setup.record(graph.graph_id, failed)
    assert record.status.value == "scheduled"
    assert record.errors is None
    assert record.formatted_exception is None
    assert record.claimed_by is None


def test_invoke_errors_exit_2(setup: Setup) -> None:
    graph = write_legacy_graph(setup.storage, setup.container, {"fetch": "success"})

    unknown_task = setup.run("invoke", "no-such-task", "--graph", graph.graph_id)
    unknown_graph = setup.run("invoke", "t", "--graph", "01900000-0000-7000-8000-000000000000")
    no_graph = setup.run("invoke", "t")
    bad_id = setup.run("invoke", "../t", "--graph", graph.graph_id)

    assert unknown_task.exit_code == 2
    assert f"task no-such-task is not in graph {graph.graph_id}" in unknown_task.output
    assert unknown_graph.exit_code == 2
    assert no_graph.exit_code == 2
    assert "'--graph'" in no_graph.output
    assert bad_id.exit_code == 2
    assert "'TASK_ID'" in bad_id.output
    assert setup.peek() == []


def test_invoke_force_reruns_a_failed_node_of_our_graph_to_success(setup: Setup) -> None:
    state = Shop(broken={"save"})

    def app() -> Any:
        broker = AzureServiceBus.from_connection_string(
            setup.emulator.connection_string, setup.queue
        )
        return our_app(broker, setup.storage, setup.container, state)

    async def run_graph() -> tuple[str, str]:
        graph_app = app()
        try:
            save = graph_app.create_task(step, "save")
            graph = TaskGraphBuilder().add(graph_app.create_task(step, "fetch")).then(save).build()
            await graph_app.publish_graph(graph)
            await run_worker_until(
                graph_app, lambda: setup.emulator.counts(setup.queue).dead_lettered == 1
            )
            return str(graph.graph_id), str(save.task_id)
        finally:
            await graph_app.close()

    graph_id, save_id = asyncio.run(run_graph())
    state.broken.clear()
    state.runs.clear()

    invoked = setup.run("invoke", save_id, "--graph", graph_id, "--force")

    assert invoked.exit_code == 0, invoked.output

    async def rerun() -> None:
        graph_app = app()
        try:
            await run_worker_until(
                graph_app,
                lambda: state.runs == ["save"] and drained(setup.emulator.counts(setup.queue)),
            )
        finally:
            await graph_app.close()

    asyncio.run(rerun())
    assert state.runs == ["save"]
    status = setup.run("inspect", "--graph", graph_id, "--json", bus=False)
    doc = json.loads(status.stdout)
    assert status.exit_code == 0, status.output
    assert {t["status"] for t in doc["tasks"]} == {"success"}
    assert doc["is_complete"] is True

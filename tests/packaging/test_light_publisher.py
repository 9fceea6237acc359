"""A light publisher from built wheels: core plus azure-servicebus alone reaches Service Bus.

In a fresh venv with ``boilermaker-core[servicebus]`` (and, for graphs,
``boilermaker-results``) and neither ``boilermaker-servicebus`` nor the
toolbox, ``publish_tasks.py`` publishes plain, delayed, batched and chained
tasks, or a graph, to the emulator. The workspace's worker transport
publishes the same tasks to a second queue; the messages must match
property for property, and a full worker in this process runs what the
light publisher sent.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from boilermaker import Boilermaker
from boilermaker.broker import ReceivedMessage
from boilermaker.emulator import ServiceBusEmulator
from boilermaker.service_bus import AzureServiceBus
from boilermaker.storage import BlobClientStorage
from boilermaker.storage.azurite import Azurite
from tests.conftest import unique_container_name
from tests.packaging import publish_tasks
from tests.packaging.wheelhouse import make_env, run

pytestmark = pytest.mark.slow

SCRIPT = Path(publish_tasks.__file__)
#: What a service that only publishes installs: no worker transport, no toolbox.
LIGHT_ABSENT = set(publish_tasks.NOT_IN_LIGHT)


def publish(python: Path | str, mode: str, queue: str, connection_string: str, **env: str) -> Any:
    """Run ``publish_tasks.py`` with ``python``; its JSON report."""
    settings = {
        "PUBLISH_WITH": mode,
        "SERVICE_BUS_CONNECTION_STRING": connection_string,
        "SERVICE_BUS_QUEUE_NAME": queue,
        **env,
    }
    return json.loads(run([str(python), str(SCRIPT)], env=settings, timeout=120).stdout)


async def peek_all(connection_string: str, queue: str) -> dict[str, ReceivedMessage]:
    """Every message in the queue (scheduled ones included), by message id."""
    broker = AzureServiceBus.from_connection_string(connection_string, queue)
    try:
        async with broker.receiver() as receiver:
            peeked = await receiver.peek(500)
    finally:
        await broker.close()
    return {m.message_id: m for m in peeked}


async def run_worker_until(app: Boilermaker, done: Callable[[], bool], timeout: float) -> None:
    """Run a worker of ``app`` until ``done()`` or ``timeout`` seconds; then stop it."""
    worker = app.worker(install_signal_handlers=False, concurrency=8)
    running = asyncio.create_task(worker.run())
    try:
        for _ in range(int(timeout / 0.05)):
            if done() or running.done():
                break
            await asyncio.sleep(0.05)
    finally:
        worker.stop()
        await asyncio.wait_for(running, 30)


def assert_light_venv(report: dict[str, Any], *, with_results: bool = False) -> None:
    """The venv holds the SDK (and, ``with_results``, azure-identity for the results
    store) but not the worker transport, and publishing with connection strings
    imported neither the toolbox nor azure-identity."""
    assert report["broker"] == "ServiceBusPublisher"
    assert "azure-servicebus" in report["distributions"]
    assert not LIGHT_ABSENT & set(report["distributions"]), report["distributions"]
    assert report["service_bus_importable"] is False
    assert report["toolbox_imported"] is False
    assert ("azure-identity" in report["distributions"]) is with_results
    assert report["identity_imported"] is False


async def test_core_and_the_sdk_alone_publish_what_the_worker_transport_publishes(
    wheels: dict[str, Path],
    tmp_path: Path,
    servicebus_emulator: ServiceBusEmulator,
    servicebus_queue_factory: Callable[..., str],
) -> None:
    python = make_env(
        tmp_path / "light",
        "boilermaker-core",
        extras=("servicebus",),
        wheels=(wheels["boilermaker-core"],),
    )
    connection_string = servicebus_emulator.connection_string
    light_queue, full_queue = servicebus_queue_factory(), servicebus_queue_factory()

    light = publish(python, "light", light_queue, connection_string)
    full = publish(sys.executable, "full", full_queue, connection_string)
    assert_light_venv(light)
    assert full["broker"] == "AzureServiceBus"
    assert light["schedule_calls"] == 1  # the delayed task, scheduled
    assert 3 <= light["transfers"] <= 4  # plain, batch (one or two transfers), chain head
    assert isinstance(light["delayed_sequence_number"], int)

    sent_light = await peek_all(connection_string, light_queue)
    sent_full = await peek_all(connection_string, full_queue)
    assert sorted(sent_light) == sorted(sent_full) == sorted(light["message_ids"])
    for message_id, ours in sent_light.items():
        theirs = sent_full[message_id]
        assert ours.body == theirs.body, message_id
        assert ours.content_type == theirs.content_type == "application/json"
        assert ours.application_properties == theirs.application_properties, message_id
        assert ours.correlation_id == theirs.correlation_id
        assert ours.subject == theirs.subject
        traceparent = f"00-{publish_tasks.TRACE_ID:032x}-{publish_tasks.SPAN_ID:016x}-01"
        assert ours.application_properties["traceparent"] == traceparent
        if message_id != light["delayed_id"]:
            assert ours.scheduled_enqueue_time is theirs.scheduled_enqueue_time is None
    for report, sent in ((light, sent_light), (full, sent_full)):
        earliest, latest = map(datetime.fromisoformat, report["scheduled_between"])
        scheduled = sent[report["delayed_id"]].scheduled_enqueue_time
        assert scheduled is not None
        # AMQP timestamps have millisecond precision.
        assert earliest - timedelta(milliseconds=1) <= scheduled <= latest

    # A full worker runs everything the light publisher sent, the delayed task on time.
    calls: list[tuple[str, Any, float]] = []
    worker_broker = AzureServiceBus.from_connection_string(connection_string, light_queue)
    app = publish_tasks.register(Boilermaker(calls, worker_broker))
    expected = 1 + 1 + publish_tasks.BATCHED + 3
    try:
        await run_worker_until(app, lambda: len(calls) >= expected, timeout=60)
    finally:
        await app.close()
    ran = [(name, n) for name, n, _ in calls]
    assert sorted(ran) == sorted(
        [("plain", 1), ("later", 2), *(("batched", i) for i in range(publish_tasks.BATCHED))]
        + [("step", i) for i in range(3)]
    )
    assert [n for name, n in ran if name == "step"] == [0, 1, 2]  # the chain, in order
    earliest = datetime.fromisoformat(light["scheduled_between"][0]).timestamp()
    (started,) = [t for name, _, t in calls if name == "later"]
    assert started >= earliest - 0.5


async def test_core_results_and_the_sdk_alone_publish_a_graph_a_worker_finishes(
    wheels: dict[str, Path],
    tmp_path: Path,
    servicebus_emulator: ServiceBusEmulator,
    servicebus_queue: str,
    azurite: Azurite,
) -> None:
    python = make_env(
        tmp_path / "light-results",
        "boilermaker-core",
        "boilermaker-results",
        extras=("servicebus",),
        wheels=(wheels["boilermaker-core"], wheels["boilermaker-results"]),
    )
    container = unique_container_name("light")
    connection_string = servicebus_emulator.connection_string
    report = publish(
        python,
        "light",
        servicebus_queue,
        connection_string,
        PUBLISH_GRAPH="1",
        RESULTS_CONNECTION_STRING=azurite.connection_string,
        RESULTS_CONTAINER=container,
    )
    assert_light_venv(report, with_results=True)
    assert "boilermaker-results" in report["distributions"]
    assert report["nodes"] == 4

    calls: list[tuple[str, Any, float]] = []
    store = BlobClientStorage.from_connection_string(azurite.connection_string, container)
    worker_broker = AzureServiceBus.from_connection_string(connection_string, servicebus_queue)
    app = publish_tasks.register(Boilermaker(calls, worker_broker, results_storage=store))
    try:
        progress = asyncio.create_task(app.wait_for_graph(report["graph_id"], timeout=60))
        await run_worker_until(app, progress.done, timeout=60)
        finished = await progress
    finally:
        await store.container_client.delete_container()
        await app.close()
    assert finished.complete
    assert not finished.failed
    assert [name for _, name, _ in calls] == ["fetch", "process", "save"]

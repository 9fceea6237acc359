"""The same tasks, published by the light publisher or by the worker transport.

Run as a script by ``test_light_publisher.py``: in a fresh venv with core and
azure-servicebus alone (``PUBLISH_WITH=light``), and in the workspace
(``PUBLISH_WITH=full``), so the messages the two send can be compared. Task
ids and the trace context are fixed, so equivalent tasks encode alike.
Settings come from the environment:

- ``SERVICE_BUS_CONNECTION_STRING``, ``SERVICE_BUS_QUEUE_NAME``: where to publish
  (read through :class:`boilermaker.config.Config`, as a service would);
- ``PUBLISH_GRAPH=1``: publish a task graph instead, with the blob results
  store at ``RESULTS_CONNECTION_STRING`` / ``RESULTS_CONTAINER``.

Prints one JSON report: what was published and what the venv holds.
The task functions record their runs in ``state`` (a list), so a worker in
the test registers these same functions.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import json
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from boilermaker import Boilermaker, Task
from boilermaker.broker import Broker
from boilermaker.config import Config
from boilermaker.ids import TaskId

#: Seconds the delayed task waits.
DELAY = 3.0
#: How many tasks ``apply_many``-style batching publishes.
BATCHED = 25
#: The trace every message continues (W3C trace and span ids).
TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
SPAN_ID = 0xB7AD6B7169203331
#: Distributions a light publisher must not pull in.
NOT_IN_LIGHT = ("boilermaker-servicebus", "aio-azure-clients-toolbox", "azure-cosmos")


def task_id(n: int) -> TaskId:
    """A fixed, valid task id (UUID version 7 layout)."""
    return TaskId(f"01900000-0000-7000-8000-{n:012d}")


async def plain(state: list[Any], n: int) -> None:
    state.append(("plain", n, time.time()))


async def later(state: list[Any], n: int) -> None:
    state.append(("later", n, time.time()))


async def batched(state: list[Any], n: int, label: str = "") -> None:
    state.append(("batched", n, time.time()))


async def step(state: list[Any], n: int) -> None:
    state.append(("step", n, time.time()))


async def node(state: list[Any], name: str) -> str:
    state.append(("node", name, time.time()))
    return name


TASK_FUNCTIONS = (plain, later, batched, step, node)


def register(app: Boilermaker) -> Boilermaker:
    """Register every task function of this module with ``app``."""
    for fn in TASK_FUNCTIONS:
        app.register_async(fn)
    return app


#: The creation time stamped on every task (its attempts record when it was made).
CREATED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def fixed(task: Task, n: int) -> Task:
    """``task`` with a fixed id and creation time, so equivalent tasks encode alike."""
    task.task_id = task_id(n)
    stamps = {field: CREATED for field, value in task.attempts if isinstance(value, datetime)}
    task.attempts = task.attempts.model_copy(update=stamps)
    return task


def broker_from_environment(mode: str) -> Broker:
    if mode == "light":
        from boilermaker.servicebus_publisher import ServiceBusPublisher

        return ServiceBusPublisher.from_config(Config())
    from boilermaker.service_bus import AzureServiceBus

    return AzureServiceBus.from_config(Config())


async def publish_tasks(app: Boilermaker) -> dict[str, Any]:
    """A plain task, a delayed one, a batch and a chain; the report's ``published`` part."""
    await app.publish_task(fixed(app.create_task(plain, 1), 1))
    before = datetime.now(UTC)
    delayed = await app.publish_task(fixed(app.create_task(later, 2), 2), delay=DELAY)
    after = datetime.now(UTC)
    await app.publish_many(
        [fixed(app.create_task(batched, i, label="x" * 50), 100 + i) for i in range(BATCHED)]
    )
    chain = [fixed(app.create_task(step, i), 200 + i) for i in range(3)]
    await app.publish_task(app.chain(*chain))
    return {
        "delayed_id": str(delayed.task_id),
        "delayed_sequence_number": delayed.sequence_number,
        "scheduled_between": [
            (before + timedelta(seconds=DELAY)).isoformat(),
            (after + timedelta(seconds=DELAY)).isoformat(),
        ],
        "message_ids": [str(task_id(n)) for n in (1, 2, *range(100, 100 + BATCHED), 200)],
    }


async def publish_graph(app: Boilermaker) -> dict[str, Any]:
    """fetch -> process -> save, with a failure handler on fetch; the report's part."""
    from boilermaker.task import TaskGraphBuilder

    fetch, process, save, cleanup = (
        app.create_task(node, name) for name in ("fetch", "process", "save", "cleanup")
    )
    builder = TaskGraphBuilder().add(fetch).on_failure(fetch.task_id, cleanup)
    graph = builder.then(process).then(save).build()
    await app.publish_graph(graph)
    return {"graph_id": str(graph.graph_id), "nodes": len(graph)}


def installed() -> dict[str, Any]:
    """What the venv holds and what publishing imported."""
    present = []
    for dist in (*NOT_IN_LIGHT, "azure-servicebus", "azure-identity", "boilermaker-results"):
        try:
            importlib.metadata.distribution(dist)
            present.append(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {
        "distributions": present,
        "service_bus_importable": importlib.util.find_spec("boilermaker.service_bus") is not None,
        "toolbox_imported": "aio_azure_clients_toolbox" in sys.modules,
        "identity_imported": "azure.identity" in sys.modules,
    }


async def main() -> dict[str, Any]:
    mode = os.environ["PUBLISH_WITH"]
    store = None
    if os.environ.get("PUBLISH_GRAPH"):
        from boilermaker.storage import BlobClientStorage

        store = BlobClientStorage.from_connection_string(
            os.environ["RESULTS_CONNECTION_STRING"],
            container_name=os.environ["RESULTS_CONTAINER"],
            create_container=True,
        )
        await store.ensure_container()
    broker = broker_from_environment(mode)
    app = register(Boilermaker([], broker, enable_opentelemetry=True, results_storage=store))
    parent = SpanContext(TRACE_ID, SPAN_ID, is_remote=False, trace_flags=TraceFlags(1))
    try:
        with trace.use_span(NonRecordingSpan(parent)):
            published = await (publish_graph(app) if store else publish_tasks(app))
        counters = {k: getattr(broker, k, None) for k in ("transfers", "schedule_calls")}
    finally:
        await app.close()
    return {"mode": mode, "broker": type(broker).__name__, **published, **counters, **installed()}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())))

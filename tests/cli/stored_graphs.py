"""Graphs in Azurite for the CLI tests: 1.4.1-shaped ones written blob by blob, ours run by an app.

A 1.4.1 graph is written as the published library lays it out
(``docs: reference/upgrade-from-1.4.1.md``, section 3): ``graph.json`` without
a ``protocol`` field, tagged ``graph_id`` and ``created_date``; one record per
node tagged ``graph_id``, ``status`` and ``created_date``; with the Azure SDK
directly, so no metadata copy of the tags (as 1.4.1 writes them).
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from azure.storage.blob import ContainerClient

from boilermaker import Boilermaker, RetryPolicy
from boilermaker.memory import InMemoryBroker
from boilermaker.task import TaskGraphBuilder
from tests.cli.conftest import Shop

#: 1.4.1's pipeline: fetch -> (transform, report) -> save; cleanup if fetch fails;
#: alert once the graph has ended with a failure.
PIPELINE_EDGES = {"fetch": ["transform", "report"], "transform": ["save"], "report": ["save"]}
PIPELINE_MAIN = ["fetch", "transform", "report", "save"]
PIPELINE_HANDLERS = {"cleanup": "fetch"}
PIPELINE_ALL_FAILED = "alert"


def uuid7_at(when: datetime) -> str:
    """A UUID7 whose timestamp is ``when`` (how 1.4.1 and we make ids)."""
    ms = int(when.timestamp() * 1000)
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= (rand >> 62 & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))


def legacy_task(graph_id: str, task_id: str, function_name: str, *args: Any) -> dict[str, Any]:
    """A task as 1.4.1 serialises it (in ``graph.json`` and as a message body)."""
    return {
        "task_id": task_id,
        "should_dead_letter": True,
        "acks_late": True,
        "function_name": function_name,
        "attempts": {"attempts": 0, "last_retry": "2025-01-01T00:00:00Z"},
        "policy": {"max_tries": 1, "delay": 0, "delay_max": 120, "retry_mode": 0},
        "payload": {"args": list(args), "kwargs": {}},
        "graph_id": graph_id,
        "on_success": None,
        "on_failure": None,
    }


def legacy_record(graph_id: str, task_id: str, status: str) -> dict[str, Any]:
    """A node record as 1.4.1 writes it (result and errors once it ran)."""
    doc: dict[str, Any] = {"etag": None, "task_id": task_id, "graph_id": graph_id, "status": status}
    if status == "success":
        doc.update(result=f"{task_id} done", errors=None, formatted_exception=None)
    elif status in ("failure", "retries_exhausted", "deadlettered"):
        doc.update(
            result=None,
            errors=["ValueError: upstream unavailable"],
            formatted_exception=(
                "Traceback (most recent call last):\nValueError: upstream unavailable"
            ),
        )
    return doc


@dataclass
class LegacyGraph:
    """A 1.4.1-shaped graph written into a container."""

    graph_id: str
    ids: dict[str, str]
    created: date
    names: list[str] = field(default_factory=list)

    def name(self, task_id: str) -> str:
        return next(n for n, t in self.ids.items() if t == task_id)


def container_client(connection_string: str, container: str) -> ContainerClient:
    """The raw SDK's client for the container (created if missing)."""
    client = ContainerClient.from_connection_string(connection_string, container)
    if not client.exists():
        client.create_container()
    return client


def write_legacy_graph(
    connection_string: str,
    container: str,
    statuses: dict[str, str | None],
    *,
    created: datetime | None = None,
    payloads: dict[str, Any] | None = None,
    tagged: bool = True,
) -> LegacyGraph:
    """Write the 1.4.1 pipeline with these node statuses (None: no record for the node).

    ``created`` dates the graph id (UUID7) and the ``created_date`` tags;
    ``tagged=False`` writes no tags (as versions before tags did).
    """
    made = created or datetime.now(UTC)
    graph_id = uuid7_at(made)
    day = made.strftime("%Y-%m-%d")
    names = [*PIPELINE_MAIN, *PIPELINE_HANDLERS, PIPELINE_ALL_FAILED]
    ids = {name: uuid7_at(made) for name in names}
    payloads = payloads or {}

    def task(name: str) -> dict[str, Any]:
        return legacy_task(graph_id, ids[name], name, payloads.get(name, name))

    doc = {
        "graph_id": graph_id,
        "children": {ids[n]: task(n) for n in PIPELINE_MAIN},
        "fail_children": {ids[n]: task(n) for n in [*PIPELINE_HANDLERS, PIPELINE_ALL_FAILED]},
        "edges": {ids[p]: [ids[k] for k in kids] for p, kids in PIPELINE_EDGES.items()},
        "fail_edges": {ids[parent]: [ids[h]] for h, parent in PIPELINE_HANDLERS.items()},
        "all_failed_callback_id": ids[PIPELINE_ALL_FAILED],
        "results": {},
    }
    client = container_client(connection_string, container)
    written = [f"task-results/{graph_id}/graph.json"]
    with client:
        client.upload_blob(
            written[0],
            json.dumps(doc),
            overwrite=True,
            tags={"graph_id": graph_id, "created_date": day} if tagged else None,
        )
        for name in names:
            status = statuses.get(name, "pending")
            if status is None:
                continue
            blob = f"task-results/{graph_id}/{ids[name]}.json"
            client.upload_blob(
                blob,
                json.dumps(legacy_record(graph_id, ids[name], status)),
                overwrite=True,
                tags=(
                    {"graph_id": graph_id, "status": status, "created_date": day}
                    if tagged
                    else None
                ),
            )
            written.append(blob)
    return LegacyGraph(graph_id, ids, made.date(), written)


def write_legacy_standalone(
    connection_string: str, container: str, status: str, created: datetime
) -> str:
    """A standalone task's result as 1.4.1 writes it; returns the task id."""
    task_id = uuid7_at(created)
    doc = legacy_record("", task_id, status)
    doc["graph_id"] = None
    with container_client(connection_string, container) as client:
        client.upload_blob(
            f"task-results/{task_id}/{task_id}.json",
            json.dumps(doc),
            overwrite=True,
            tags={
                "graph_id": task_id,
                "status": status,
                "created_date": created.strftime("%Y-%m-%d"),
            },
        )
    return task_id


def set_created_date(connection_string: str, container: str, prefix: str, day: str) -> list[str]:
    """Re-tag the blobs under ``prefix`` that carry a ``created_date`` as created on ``day``
    (our ``graph.json`` has none, and keeps none); returns their names."""
    names = []
    with container_client(connection_string, container) as client:
        for name in client.list_blob_names(name_starts_with=prefix):
            blob = client.get_blob_client(name)
            if "created_date" not in blob.get_blob_tags():
                continue
            tags = blob.get_blob_tags()
            tags["created_date"] = day
            blob.set_blob_tags(tags)
            names.append(name)
    return names


def blob_names(connection_string: str, container: str, prefix: str = "task-results/") -> list[str]:
    """Every blob name under ``prefix``."""
    with container_client(connection_string, container) as client:
        return sorted(client.list_blob_names(name_starts_with=prefix))


def delete_blobs(connection_string: str, container: str, names: list[str]) -> None:
    """Delete blobs with the raw SDK (to cut a group short, as an interrupted purge does)."""
    with container_client(connection_string, container) as client:
        for name in names:
            client.delete_blob(name)


# -- graphs of ours -------------------------------------------------------------------------


async def step(state: Shop, name: str) -> str:
    """A graph task: records that it ran, fails if its name is broken."""
    state.runs.append(name)
    if name in state.broken:
        raise ValueError(f"{name} failed")
    return f"{name} done"


def our_app(broker: Any, connection_string: str, container: str, state: Shop) -> Boilermaker:
    """An app with ``step`` registered, on a blob store in ``container``."""
    from boilermaker.storage import BlobClientStorage

    store = BlobClientStorage.from_connection_string(
        connection_string, container, create_container=True
    )
    app = Boilermaker(state, broker, results_storage=store)
    app.register_async(step, policy=RetryPolicy.no_retry())
    return app


@dataclass
class OurGraph:
    """A graph of ours (protocol 2) that ran on the in-memory broker."""

    graph_id: str
    ids: dict[str, str]


def run_our_graph(connection_string: str, container: str, broken: set[str]) -> OurGraph:
    """fetch -> (transform, report) -> save with a handler on fetch, run to the end."""
    state = Shop(broken=set(broken))

    async def go() -> OurGraph:
        app = our_app(InMemoryBroker(), connection_string, container, state)
        try:
            tasks = {
                n: app.create_task(step, n)
                for n in ("fetch", "transform", "report", "save", "cleanup")
            }
            graph = (
                TaskGraphBuilder()
                .add(tasks["fetch"], on_failure=tasks["cleanup"])
                .parallel(tasks["transform"], tasks["report"])
                .then(tasks["save"])
                .build()
            )
            await app.publish_graph(graph)
            await app.run_until_idle(timeout=20)
            return OurGraph(str(graph.graph_id), {n: str(t.task_id) for n, t in tasks.items()})
        finally:
            await app.close()

    return asyncio.run(go())

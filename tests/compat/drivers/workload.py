"""What the publisher and worker drivers share: the task functions, the workload, the wiring.

Imported by ``publisher.py``, ``worker.py`` and ``graph_publish.py`` (their own
folder is first on ``sys.path``), under either library. Only
:func:`service_bus_client` and :func:`results_store` look at which library
is installed, to construct its clients; everything else is the same code.

The workload, for ``n`` plain tasks and ``f`` flaky ones:

- ``plain(i)`` for i in 0..n-1: runs once each;
- ``flaky(key)`` for f keys: raises ``RetryException`` on its first attempt
  (policy: 3 tries, 1 s fixed delay), succeeds on the second: runs twice each;
- ``broken()``: raises, so its message is dead-lettered as ``TaskFailed``;
- ``chain_head() >> chain_tail()``: the tail is published by the worker that
  ran the head.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import logging
import sys
from collections import Counter

from boilermaker.retries import RetryException, RetryMode, RetryPolicy

#: 3 tries, 1 s between them: one retry is enough for flaky().
FLAKY_POLICY = RetryPolicy(max_tries=3, delay=1, delay_max=1, retry_mode=RetryMode.Fixed)


def library() -> str:
    """The installed version of boilermaker-servicebus: ``1.4.1`` or ours."""
    return importlib.metadata.version("boilermaker-servicebus")


def is_published_library() -> bool:
    return library().startswith("1.")


class Runs:
    """Task state: counts runs per function (and attempts per flaky key)."""

    def __init__(self) -> None:
        self.by_function: Counter[str] = Counter()
        self.by_key: Counter[str] = Counter()
        self.changed = asyncio.Event()

    def ran(self, name: str, key: str | None = None) -> int:
        self.by_function[name] += 1
        self.changed.set()
        if key is None:
            return self.by_function[name]
        self.by_key[key] += 1
        return self.by_key[key]

    @property
    def total(self) -> int:
        return sum(self.by_function.values())


async def plain(state, i):
    state.ran("plain")
    return i


async def flaky(state, key):
    if state.ran("flaky", key) == 1:
        raise RetryException(f"first attempt of {key}")
    return key


async def broken(state):
    state.ran("broken")
    raise ValueError("broken on purpose")


async def chain_head(state):
    state.ran("chain_head")


async def chain_tail(state):
    state.ran("chain_tail")


FUNCTIONS = (plain, flaky, broken, chain_head, chain_tail)


def expected_runs(n: int, f: int) -> dict[str, int]:
    """Runs per function once the workload is done."""
    return {"plain": n, "flaky": 2 * f, "broken": 1, "chain_head": 1, "chain_tail": 1}


def service_bus_client(connection_string: str, queue: str):
    """The library's Service Bus client on a connection string (construction differs)."""
    if is_published_library():
        # 1.4.1's AzureServiceBus takes no connection string; it wraps this sender,
        # with its debug task as the pool's readiness message.
        from aio_azure_clients_toolbox import ManagedAzureServiceBusSender

        from boilermaker.sample import STATIC_DEBUG_TASK

        return ManagedAzureServiceBusSender(
            "sb://localhost",
            queue,
            connection_string=connection_string,
            ready_message=STATIC_DEBUG_TASK.model_dump_json(),
        )
    from boilermaker.service_bus import AzureServiceBus

    return AzureServiceBus(connection_string=connection_string, service_bus_queue_name=queue)


def results_store(connection_string: str, blob_url: str, account_key: str, container: str):
    """The library's blob results store on Azurite (construction differs)."""
    from boilermaker.storage import BlobClientStorage

    if is_published_library():
        return BlobClientStorage(blob_url, container, account_key)
    return BlobClientStorage.from_connection_string(connection_string, container)


async def close_quietly(app, timeout: float = 10.0) -> str | None:
    """Close the app's connections; what went wrong, if anything (the results are out)."""
    try:
        await asyncio.wait_for(app.close(), timeout)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def log_to_stderr() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)


def emit(doc: dict) -> None:
    """The driver's one result line."""
    print(json.dumps({"library": library(), **doc}, sort_keys=True), flush=True)

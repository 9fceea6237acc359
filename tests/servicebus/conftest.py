"""Fixtures for the Service Bus transport tests.

Emulator tests use the session emulator from ``boilermaker-emulator``'s pytest
plugin (``servicebus_emulator``) and make queues with per-test settings.
Tests marked ``live`` talk to a real namespace and are skipped unless
``BOILERMAKER_LIVE_SERVICE_BUS`` holds a connection string (queue name from
``BOILERMAKER_LIVE_QUEUE``, default ``boilermaker-live``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from boilermaker.emulator import DEFAULT_KEY, DEFAULT_KEY_NAME, ServiceBusEmulator
from boilermaker.service_bus import AzureServiceBus
from boilermaker.servicebus_publisher import ServiceBusPublisher

LIVE_CONNECTION_ENV = "BOILERMAKER_LIVE_SERVICE_BUS"
LIVE_QUEUE_ENV = "BOILERMAKER_LIVE_QUEUE"
LIVE_QUEUE_DEFAULT = "boilermaker-live"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``live`` tests unless a real namespace is configured."""
    if os.environ.get(LIVE_CONNECTION_ENV, "").strip():
        return
    skip = pytest.mark.skip(
        reason=f"live Service Bus test: set {LIVE_CONNECTION_ENV} to a connection string"
    )
    for item in items:
        if "live" in item.keywords:
            item.add_marker(skip)


#: For tests that cut connections: azure-servicebus 7.15.0 never closes the socket of
#: a connection that died (``Connection._disconnect`` returns early once the state is
#: END; Azure/azure-sdk-for-python#46830), so the socket is only closed, with a
#: ResourceWarning, when it is garbage-collected. Only those warnings are ignored.
sdk_leaks_dead_sockets = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <(socket\\.socket|function _SelectorTransport\\.__del__"
    "|function StreamWriter\\.__del__):pytest.PytestUnraisableExceptionWarning"
)


@pytest.fixture
def live_connection_string() -> str:
    """The real namespace's connection string (live tests only)."""
    value = os.environ.get(LIVE_CONNECTION_ENV, "").strip()
    if not value:
        pytest.skip(f"set {LIVE_CONNECTION_ENV} to run live tests")
    return value


@pytest.fixture
def live_queue_name() -> str:
    """The real namespace's queue for live tests."""
    return os.environ.get(LIVE_QUEUE_ENV, "").strip() or LIVE_QUEUE_DEFAULT


@pytest.fixture
def new_queue(servicebus_queue_factory: Callable[..., str]) -> Callable[..., str]:
    """Make queues with the given settings on the session emulator; deleted afterwards."""
    return servicebus_queue_factory


#: The brokers that publish to Service Bus: the worker transport, and core's light
#: publisher (``boilermaker-core[servicebus]``), which must behave alike when publishing.
PUBLISHING_BROKERS: dict[str, type[AzureServiceBus] | type[ServiceBusPublisher]] = {
    "transport": AzureServiceBus,
    "light": ServiceBusPublisher,
}


@pytest.fixture(params=sorted(PUBLISHING_BROKERS))
def publishing_broker_class(
    request: pytest.FixtureRequest,
) -> type[AzureServiceBus] | type[ServiceBusPublisher]:
    """Each publishing broker class in turn (a test using it runs once per class)."""
    return PUBLISHING_BROKERS[request.param]


def transfers(broker: AzureServiceBus | ServiceBusPublisher) -> int:
    """AMQP transfers (plain sends and batches) a publishing broker has made."""
    return broker.sender.transfers if isinstance(broker, AzureServiceBus) else broker.transfers


@pytest.fixture
async def make_broker(
    servicebus_emulator: ServiceBusEmulator,
) -> AsyncIterator[Callable[..., Any]]:
    """Build brokers on emulator queues (``AzureServiceBus`` unless ``broker_class``
    names another, such as the light publisher); all closed afterwards."""
    brokers: list[AzureServiceBus | ServiceBusPublisher] = []

    def make(
        queue_name: str,
        broker_class: type[AzureServiceBus] | type[ServiceBusPublisher] = AzureServiceBus,
        **kwargs: Any,
    ) -> AzureServiceBus | ServiceBusPublisher:
        broker = broker_class.from_connection_string(
            servicebus_emulator.connection_string, queue_name, **kwargs
        )
        brokers.append(broker)
        return broker

    yield make
    for broker in brokers:
        await broker.close()


def wrong_key(connection_string: str) -> str:
    """The connection string with its SharedAccessKey replaced by another valid-looking key."""
    parts = [
        "SharedAccessKey=d3Jvbmcga2V5IHdyb25nIGtleSB3cm9uZyBrZXkgd3Jvbmc="
        if part.startswith("SharedAccessKey=")
        else part
        for part in connection_string.split(";")
    ]
    return ";".join(parts)


async def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait until ``condition()`` holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


@contextlib.contextmanager
def proton_sender(port: int, queue: str) -> Iterator[Any]:
    """A proton (not the SDK) sender on the emulator's ``queue``: another AMQP client's
    messages. Blocking: use it from a thread in async tests."""
    from proton.utils import BlockingConnection

    connection = BlockingConnection(
        f"amqp://127.0.0.1:{port}",
        user=DEFAULT_KEY_NAME,
        password=DEFAULT_KEY,
        allowed_mechs="PLAIN",
        allow_insecure_mechs=True,
    )
    try:
        yield connection.create_sender(queue)
    finally:
        connection.close()

"""Fixtures for the emulator's contract tests.

The session emulator comes from the package's own pytest plugin
(``servicebus_emulator``, a child process on a free port); these fixtures add
queues with per-test settings and an async SDK client.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from azure.servicebus.aio import ServiceBusClient

from boilermaker.emulator import QueueNotFound, QueueSettings, ServiceBusEmulator


@pytest.fixture
def new_queue(servicebus_emulator: ServiceBusEmulator) -> Iterator[Callable[..., str]]:
    """Create queues with the given settings on the session emulator; delete them afterwards."""
    created: list[str] = []

    def make(**settings: Any) -> str:
        name = f"t-{uuid.uuid4().hex[:12]}"
        servicebus_emulator.create_queue(QueueSettings(name=name, **settings))
        created.append(name)
        return name

    yield make
    for name in created:
        try:
            servicebus_emulator.delete_queue(name)
        except QueueNotFound:
            pass


@pytest.fixture
async def client(servicebus_emulator: ServiceBusEmulator) -> AsyncIterator[ServiceBusClient]:
    """An async SDK client on the session emulator."""
    async with ServiceBusClient.from_connection_string(
        servicebus_emulator.connection_string
    ) as sb_client:
        yield sb_client

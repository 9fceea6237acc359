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
from azure.servicebus.aio import ServiceBusClient, ServiceBusReceiver, ServiceBusSender

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


class _PromptCloseClient(ServiceBusClient):
    """The SDK client, with senders and receivers that close without a keep-alive wait.

    Each SDK handler runs a keep-alive loop that sleeps in 1 s steps and is
    awaited on close; ``keep_alive=0`` skips it. Nothing else changes (the
    toolbox, auth, durability and CLI tests use the SDK's defaults).
    """

    def get_queue_sender(self, queue_name: str, **kwargs: Any) -> ServiceBusSender:
        kwargs.setdefault("keep_alive", 0)
        return super().get_queue_sender(queue_name, **kwargs)

    def get_queue_receiver(self, queue_name: str, **kwargs: Any) -> ServiceBusReceiver:
        kwargs.setdefault("keep_alive", 0)
        return super().get_queue_receiver(queue_name, **kwargs)


@pytest.fixture
async def client(servicebus_emulator: ServiceBusEmulator) -> AsyncIterator[ServiceBusClient]:
    """An async SDK client on the session emulator."""
    async with _PromptCloseClient.from_connection_string(
        servicebus_emulator.connection_string
    ) as sb_client:
        yield sb_client

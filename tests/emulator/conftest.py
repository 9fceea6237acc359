"""Fixtures for the emulator's contract tests.

The session emulator comes from the package's own pytest plugin
(``servicebus_emulator``, a child process on a free port); these fixtures add
queues with per-test settings and an async SDK client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from azure.servicebus.aio import ServiceBusClient, ServiceBusReceiver, ServiceBusSender

from boilermaker.emulator import ServiceBusEmulator


@pytest.fixture
def new_queue(servicebus_queue_factory: Callable[..., str]) -> Callable[..., str]:
    """Make queues with the given settings on the session emulator; deleted afterwards."""
    return servicebus_queue_factory


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

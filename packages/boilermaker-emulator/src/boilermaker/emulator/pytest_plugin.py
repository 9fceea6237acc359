"""pytest plugin: a Service Bus emulator for any test suite.

Registered through the ``pytest11`` entry point, so installing
``boilermaker-emulator`` makes two fixtures available:

- ``servicebus_emulator`` (session scope): a process-mode
  :class:`~boilermaker.emulator.ServiceBusEmulator` on 127.0.0.1 with a free
  port and queues created on first use;
- ``servicebus_queue`` (function scope): the name of a fresh, empty queue on
  it, deleted after the test.

Nothing is started unless a test asks for a fixture.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .server import ServiceBusEmulator


@pytest.fixture(scope="session")
def servicebus_emulator() -> Iterator[ServiceBusEmulator]:
    """A running emulator shared by the test session (child process, free port)."""
    from .server import ServiceBusEmulator

    emulator = ServiceBusEmulator(host="127.0.0.1", port=0, auto_create_queues=True, mode="process")
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def servicebus_queue(servicebus_emulator: ServiceBusEmulator) -> Iterator[str]:
    """Name of a new queue (default settings) on the session emulator; deleted afterwards."""
    from .config import QueueSettings
    from .store import QueueNotFound

    name = f"test-{uuid.uuid4().hex[:12]}"
    servicebus_emulator.create_queue(QueueSettings(name=name))
    yield name
    try:
        servicebus_emulator.delete_queue(name)
    except QueueNotFound:
        pass

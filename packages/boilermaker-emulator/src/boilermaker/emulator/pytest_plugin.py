"""pytest plugin: a Service Bus emulator for any test suite.

Registered through the ``pytest11`` entry point, so installing
``boilermaker-emulator`` makes two fixtures available:

- ``servicebus_emulator`` (session scope): a process-mode
  :class:`~boilermaker.emulator.ServiceBusEmulator` on 127.0.0.1 with a free
  port and queues created on first use;
- ``servicebus_queue`` (function scope): the name of a fresh, empty queue on
  it, deleted after the test;
- ``servicebus_queue_factory`` (function scope): makes queues with chosen
  settings (lock duration, max delivery count, duplicate detection...).

Nothing is started unless a test asks for a fixture.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

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
def servicebus_queue_factory(
    servicebus_emulator: ServiceBusEmulator,
) -> Iterator[Callable[..., str]]:
    """Make fresh queues on the session emulator: ``make(lock_duration=1.0, ...)`` takes
    :class:`~boilermaker.emulator.QueueSettings` fields and returns the new queue's
    name. Every queue made is deleted after the test."""
    from .config import QueueSettings
    from .store import QueueNotFound

    created: list[str] = []

    def make(**settings: Any) -> str:
        name = f"test-{uuid.uuid4().hex[:12]}"
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
def servicebus_queue(servicebus_queue_factory: Callable[..., str]) -> str:
    """Name of a new queue (default settings) on the session emulator; deleted afterwards."""
    return servicebus_queue_factory()

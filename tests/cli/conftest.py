"""Fixtures for the command-line tests: dead-lettered tasks on the emulator, a CLI runner.

CLI commands run their own event loop (``asyncio.run``), so these tests are
synchronous and set things up with ``asyncio.run`` too.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from azure.servicebus import ServiceBusMessage, ServiceBusReceivedMessage
from azure.servicebus.aio import ServiceBusClient
from click.testing import CliRunner, Result

from boilermaker import Boilermaker, RetryException, RetryPolicy, Task
from boilermaker.cli.main import cli
from boilermaker.emulator import QueueNotFound, QueueSettings, ServiceBusEmulator
from boilermaker.service_bus import AzureServiceBus
from tests.browser import chromium_browser, chromium_page  # noqa: F401 (fixtures)

#: Settings a developer's shell may hold; cleared so tests see only what they pass.
CLEAN_ENV: dict[str, str | None] = {
    "SERVICE_BUS_CONNECTION_STRING": None,
    "SERVICE_BUS_NAMESPACE_URL": None,
    "SERVICE_BUS_QUEUE_NAME": None,
    "BOILERMAKER_RESULTS_CONNECTION_STRING": None,
    "BOILERMAKER_RESULTS_STORAGE_URL": None,
    "BOILERMAKER_RESULTS_CONTAINER": None,
    "BOILERMAKER_STORAGE_URL": None,
    "BOILERMAKER_STORAGE_CONNECTION_STRING": None,
    "BOILERMAKER_CONTAINER": None,
    "NO_COLOR": None,
}


def invoke(*args: str, input: str | None = None, **env: str) -> Result:
    """Run ``boilermaker ARGS`` in this process with a clean environment plus ``env``."""
    runner = CliRunner()
    return runner.invoke(cli, list(args), input=input, env={**CLEAN_ENV, **env})


@dataclass
class Shop:
    """Task state: which orders fail, and what ran."""

    broken: set[str] = field(default_factory=set)
    runs: list[str] = field(default_factory=list)


async def charge(state: Shop, order: str) -> str:
    state.runs.append(order)
    if order in state.broken:
        raise ValueError(f"card declined for {order}")
    return f"charged {order}"


async def poll(state: Shop, feed: str) -> None:
    state.runs.append(feed)
    raise RetryException(f"{feed} not ready")


def shop_app(connection_string: str, queue: str, state: Shop) -> Boilermaker:
    app = Boilermaker(state, AzureServiceBus.from_connection_string(connection_string, queue))
    app.register_async(charge, policy=RetryPolicy.no_retry())
    app.register_async(poll, policy=RetryPolicy(max_tries=1))
    return app


async def run_worker_until(app: Boilermaker, done: Callable[[], bool], timeout: float = 20) -> None:
    """Run a real worker on the app's queue until ``done()`` holds."""
    worker = app.worker(install_signal_handlers=False, receive_wait=0.2, concurrency=4)
    runner = asyncio.create_task(worker.run())
    deadline = time.monotonic() + timeout
    try:
        while not done():
            if runner.done():
                await runner
            if time.monotonic() > deadline:
                raise AssertionError(f"worker did not get there within {timeout}s: {worker.stats}")
            await asyncio.sleep(0.05)
    finally:
        worker.stop()
        await runner


def drained(counts: Any) -> bool:
    """Nothing active, locked or scheduled in the main queue (emulator counts)."""
    return counts.active == 0 and counts.locked == 0 and counts.scheduled == 0


@dataclass
class DeadLetters:
    """A queue on the emulator whose dead-letter queue holds one message per reason."""

    emulator: ServiceBusEmulator
    queue: str
    state: Shop

    @property
    def connection_string(self) -> str:
        return self.emulator.connection_string

    def options(self) -> list[str]:
        return ["--connection-string", self.connection_string, "--queue", self.queue]

    def counts(self) -> Any:
        return self.emulator.counts(self.queue)

    def app(self) -> Boilermaker:
        return shop_app(self.connection_string, self.queue, self.state)

    def run_worker_until(self, done: Callable[[], bool]) -> None:
        async def go() -> None:
            app = self.app()
            try:
                await run_worker_until(app, done)
            finally:
                await app.close()

        asyncio.run(go())

    def peek_main(self) -> list[ServiceBusReceivedMessage]:
        """Messages in the main queue, with the raw SDK (not our adapter)."""

        async def go() -> list[ServiceBusReceivedMessage]:
            async with (
                ServiceBusClient.from_connection_string(self.connection_string) as client,
                client.get_queue_receiver(self.queue) as receiver,
            ):
                return list(await receiver.peek_messages(max_message_count=100, sequence_number=1))

        return asyncio.run(go())


def dead_letter_one_of_each(emulator: ServiceBusEmulator, queue: str) -> DeadLetters:
    """Two TaskFailed (charge), one ProcessingError (poll), one ExpectationFailed (ghost),
    one InvalidTaskFormat (a body sent with the raw SDK), dead-lettered by a real worker."""
    letters = DeadLetters(emulator, queue, Shop(broken={"o-1", "o-2"}))

    async def send_junk() -> None:
        async with (
            ServiceBusClient.from_connection_string(emulator.connection_string) as client,
            client.get_queue_sender(queue) as sender,
        ):
            await sender.send_messages(ServiceBusMessage(b"\xffnot json", message_id="junk-1"))

    async def publish(app: Boilermaker) -> None:
        await app.apply_async(charge, "o-1")
        await app.apply_async(charge, "o-2")
        await app.apply_async(poll, "feed-a")
        await app.publish_task(Task.si("ghost", 7))

    async def go() -> None:
        app = letters.app()
        try:
            await asyncio.gather(publish(app), send_junk())
            await run_worker_until(app, lambda: letters.counts().dead_lettered >= 5)
        finally:
            await app.close()

    asyncio.run(go())
    assert letters.counts().dead_lettered == 5
    return letters


@pytest.fixture
def dead_letters(servicebus_emulator: ServiceBusEmulator, servicebus_queue: str) -> DeadLetters:
    """A fresh queue with five dead letters (one test may change it)."""
    return dead_letter_one_of_each(servicebus_emulator, servicebus_queue)


@pytest.fixture(scope="module")
def shared_dead_letters(servicebus_emulator: ServiceBusEmulator) -> Iterator[DeadLetters]:
    """A queue with five dead letters shared by a module's read-only tests."""
    name = f"cli-{uuid.uuid4().hex[:12]}"
    servicebus_emulator.create_queue(QueueSettings(name=name))
    try:
        yield dead_letter_one_of_each(servicebus_emulator, name)
    finally:
        try:
            servicebus_emulator.delete_queue(name)
        except QueueNotFound:
            pass

"""A refused credential fails at once; a connection that fails for a moment is tried again.

The SDK retries every failure while opening a link, a wrong key too (about
15 s before it says so). Workers and CLI commands open receivers with the
SDK's retries off for the open and retry only what may pass themselves. The
time limits here are generous bounds against hanging, not speed checks.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from boilermaker import Boilermaker
from boilermaker.broker import BrokerAuthenticationError, OutgoingMessage, SubQueue
from boilermaker.emulator import ServiceBusEmulator
from boilermaker.service_bus import AzureServiceBus
from boilermaker.servicebus_publisher.connection import parse_connection_string
from tests.contracts.broker_contract import receive_n
from tests.servicebus.conftest import sdk_leaks_dead_sockets, wrong_key

#: Far longer than a refused credential takes, far shorter than the SDK's retries.
BOUND = 10.0


async def noop(state: object) -> None:
    """A task for the app to register."""


async def test_a_worker_with_a_wrong_key_stops_at_start_up(
    new_queue: Callable[..., str], servicebus_emulator: ServiceBusEmulator
) -> None:
    queue = new_queue()
    broker = AzureServiceBus.from_connection_string(
        wrong_key(servicebus_emulator.connection_string), queue
    )
    app = Boilermaker({}, service_bus_client=broker)
    app.register_async(noop)
    worker = app.worker(install_signal_handlers=False)
    started = time.monotonic()
    try:
        with pytest.raises(BrokerAuthenticationError) as refused:
            await asyncio.wait_for(worker.run(), BOUND)
    finally:
        await broker.close()
    print(f"worker with a wrong key stopped after {time.monotonic() - started:.2f}s")
    assert refused.value.transient is False
    assert f"opening a receiver on {queue}" in str(refused.value)
    assert "ServiceBusAuthenticationError" in str(refused.value)


@pytest.mark.parametrize("sub_queue", [SubQueue.Main, SubQueue.DeadLetter])
async def test_a_receiver_with_a_wrong_key_fails_on_opening(
    new_queue: Callable[..., str], servicebus_emulator: ServiceBusEmulator, sub_queue: SubQueue
) -> None:
    broker = AzureServiceBus.from_connection_string(
        wrong_key(servicebus_emulator.connection_string), new_queue()
    )
    started = time.monotonic()
    try:
        with pytest.raises(BrokerAuthenticationError):
            await asyncio.wait_for(broker.receiver(sub_queue=sub_queue).open(), BOUND)
    finally:
        await broker.close()
    print(f"{sub_queue} receiver with a wrong key failed after {time.monotonic() - started:.2f}s")


def test_a_cli_command_with_a_wrong_key_fails_on_opening(
    new_queue: Callable[..., str], servicebus_emulator: ServiceBusEmulator
) -> None:
    bad = wrong_key(servicebus_emulator.connection_string)
    command = [sys.executable, "-m", "boilermaker.cli", "dlq", "list"]
    command += ["--connection-string", bad, "--queue", new_queue()]
    started = time.monotonic()
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=BOUND + 10,  # the interpreter's start-up too
        env={**os.environ, "NO_COLOR": "1"},
        check=False,
    )
    print(f"boilermaker dlq list with a wrong key exited after {time.monotonic() - started:.2f}s")
    assert done.returncode != 0
    assert "refused the credentials" in done.stderr
    assert parse_connection_string(bad)["SharedAccessKey"] not in done.stdout + done.stderr


@sdk_leaks_dead_sockets
async def test_a_receiver_tries_again_when_connections_are_refused_for_a_moment(
    new_queue: Callable[..., str],
    servicebus_emulator: ServiceBusEmulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue = new_queue()
    broker = AzureServiceBus.from_connection_string(servicebus_emulator.connection_string, queue)
    try:
        await broker.send([OutgoingMessage(b"{}", "waiting")])
        servicebus_emulator.refuse_connections(1.0)
        with caplog.at_level(logging.WARNING, logger="boilermaker.service_bus"):
            receiver = await broker.receiver().open()
        retries = [r.getMessage() for r in caplog.records if "trying again" in r.getMessage()]
        assert retries, "the refused connection was not tried again"
        assert f"opening a receiver on {queue}" in retries[0]
        async with receiver:
            (message,) = await receive_n(receiver, 1)
            assert message.message_id == "waiting"
            await receiver.complete(message)
    finally:
        await broker.close()
    assert servicebus_emulator.counts(queue).active == 0

"""``boilermaker.servicebus_publisher``: publishing from core with the SDK alone, on the emulator.

Importing it (core alone imports no Azure module; a missing SDK or
azure-identity is named with the extra to install), its ways of connecting,
that it refuses to receive, and that it closes only what it opened. Wrong
keys, oversize tasks, size limits, missing queues and dropped connections are
tested on it and the worker transport alike in test_publishing.py; that the
two send the same messages, from built wheels, in
tests/packaging/test_light_publisher.py.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import pytest
from azure.core.credentials import AzureNamedKeyCredential
from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient

from boilermaker.broker import Broker
from boilermaker.config import Config, ConfigError
from boilermaker.emulator import QueueCounts, ServiceBusEmulator
from boilermaker.envelope import decode_task
from boilermaker.service_bus import AzureServiceBus
from boilermaker.servicebus_publisher import (
    INSTALL_HINT,
    ReceivingNotSupported,
    ServiceBusPublisher,
)
from tests.servicebus.test_publishing import app_for, noop

#: Makes the named top-level modules (and their submodules) impossible to import.
BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = {blocked!r}
    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None
    sys.meta_path.insert(0, Blocker())
    """
)


def run_python(code: str, *blocked: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter with ``blocked`` modules made unimportable."""
    script = BLOCKER.format(blocked=list(blocked)) + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )


def emulator_client(emulator: ServiceBusEmulator) -> ServiceBusClient:
    """A client a service would own: a namespace and a credential, no connection string."""
    return ServiceBusClient(
        f"{emulator.host}:{emulator.port}",
        AzureNamedKeyCredential(emulator.key_name, emulator.key),
        use_tls=False,
    )


# -- importing ------------------------------------------------------------------------------


def test_core_modules_import_nothing_from_azure() -> None:
    result = run_python(
        """
        import sys
        import boilermaker, boilermaker.app, boilermaker.broker, boilermaker.config
        import boilermaker.memory, boilermaker.publishing, boilermaker.worker, boilermaker.task
        print(sorted(m for m in sys.modules if m.split(".")[0] == "azure"))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_missing_sdk_names_the_extra_to_install() -> None:
    result = run_python(
        """
        import boilermaker, boilermaker.app   # core still imports
        try:
            import boilermaker.servicebus_publisher
        except ImportError as exc:
            print(type(exc).__name__, exc.name, "|", exc)
        """,
        "azure",
    )
    assert result.returncode == 0, result.stderr
    kind, rest = result.stdout.split(" ", 1)
    name, message = rest.split(" | ", 1)
    assert kind == "ImportError"
    assert name.startswith("azure")
    assert 'pip install "boilermaker-core[servicebus]"' in message
    assert INSTALL_HINT in message
    assert "boilermaker-servicebus" in message  # where workers come from


def test_a_namespace_url_needs_azure_identity_only_without_a_credential() -> None:
    result = run_python(
        """
        import sys
        from azure.core.credentials import AzureNamedKeyCredential
        from boilermaker.servicebus_publisher import ServiceBusPublisher
        url = "https://example.servicebus.windows.net/"
        try:
            ServiceBusPublisher(url, "tasks")
        except ImportError as exc:
            print("refused:", exc)
        given = ServiceBusPublisher(url, "tasks", AzureNamedKeyCredential("name", "key"))
        client, owned = given.target.client(retry_total=0)
        print("client:", client.fully_qualified_namespace, owned)
        print("identity imported:", "azure.identity" in sys.modules)
        """,
        "azure.identity",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("refused:")
    assert 'pip install "boilermaker-core[servicebus,identity]"' in lines[0]
    assert "credential=" in lines[0]
    assert lines[1] == "client: example.servicebus.windows.net None"
    assert lines[2] == "identity imported: False"


# -- construction ---------------------------------------------------------------------------


def test_it_is_a_broker_and_takes_the_worker_transports_arguments() -> None:
    url = "https://example.servicebus.windows.net/"
    credential = AzureNamedKeyCredential("name", "key")
    publisher = ServiceBusPublisher(url, "tasks", credential, max_message_size=100_000)
    assert isinstance(publisher, Broker)
    assert publisher.queue_name == "tasks"
    assert publisher.max_message_size == 100_000
    assert publisher.target is not None
    assert publisher.target.credential is credential
    assert repr(publisher) == (
        "ServiceBusPublisher(namespace='example.servicebus.windows.net', queue='tasks', "
        "key_name='name')"
    )
    full = AzureServiceBus(url, "tasks", credential, max_message_size=100_000)
    assert full.target == publisher.target  # one connection model for both


def test_from_config_reads_the_same_settings_as_the_worker_transport(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = "Endpoint=sb://example.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=c2VjcmV0"
    monkeypatch.setenv("SERVICE_BUS_CONNECTION_STRING", secret)
    monkeypatch.setenv("SERVICE_BUS_QUEUE_NAME", "from-env")
    config = Config(max_message_size=64 * 1024)
    publisher = ServiceBusPublisher.from_config(config)
    assert publisher.config is config
    assert publisher.queue_name == "from-env"
    assert publisher.max_message_size == 64 * 1024
    assert publisher.target == AzureServiceBus.from_config(config).target
    assert "c2VjcmV0" not in repr(publisher)


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"connection_string": "SharedAccessKeyName=k;SharedAccessKey=v"}, "no Endpoint"),
        ({"service_bus_namespace_url": "https://"}, "has no host name"),
        ({"connection_string": "Endpoint=sb://x/;SharedAccessKeyName=k"}, "SharedAccessKey"),
    ],
)
def test_bad_settings_are_named_at_construction(kwargs: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        ServiceBusPublisher(service_bus_queue_name="tasks", **kwargs)


async def test_a_client_and_a_connection_string_together_are_refused(
    servicebus_emulator: ServiceBusEmulator,
) -> None:
    async with emulator_client(servicebus_emulator) as client:
        with pytest.raises(ConfigError, match="already says where to connect"):
            ServiceBusPublisher(
                None,
                "tasks",
                client=client,
                connection_string=servicebus_emulator.connection_string,
            )
        with pytest.raises(ConfigError, match="no queue name"):
            ServiceBusPublisher.from_client(client, "")
        sender = client.get_queue_sender("tasks")
        with pytest.raises(ConfigError, match="not the given sender's"):
            ServiceBusPublisher(None, "other", sender=sender)
        await sender.close()


# -- publishing -----------------------------------------------------------------------------


async def test_plain_delayed_and_batched_tasks_land_as_sends_schedules_and_batches(
    servicebus_queue: str,
    make_broker: Callable[..., Any],
    servicebus_emulator: ServiceBusEmulator,
) -> None:
    publisher = make_broker(servicebus_queue, ServiceBusPublisher)
    app = app_for(publisher)
    now = await app.apply_async(noop, 1)
    assert now.sequence_number is None
    assert (publisher.transfers, publisher.schedule_calls) == (1, 0)

    later = await app.apply_async(noop, 2, delay=60)
    assert isinstance(later.sequence_number, int)
    assert later.sequence_number > 0
    assert (publisher.transfers, publisher.schedule_calls) == (1, 1)

    many = await app.apply_many(noop, [(i,) for i in range(100)])
    assert len(many) == 100
    assert 2 <= publisher.transfers <= 3  # one or two batches
    assert servicebus_emulator.counts(servicebus_queue) == QueueCounts(101, 1, 0, 0, 0)

    await publisher.cancel_scheduled([later.sequence_number])
    assert servicebus_emulator.counts(servicebus_queue).scheduled == 0

    async with AzureServiceBus.from_connection_string(
        servicebus_emulator.connection_string, servicebus_queue
    ).receiver() as receiver:
        peeked = await receiver.peek(200)
    published = {str(t.task_id) for t in [now, *many]}
    assert {m.message_id for m in peeked} == published
    assert {str(decode_task(m.body).task_id) for m in peeked} == published


async def test_a_worker_on_a_light_publisher_is_told_to_install_the_transport(
    servicebus_queue: str, make_broker: Callable[..., Any]
) -> None:
    app = app_for(make_broker(servicebus_queue, ServiceBusPublisher))
    with pytest.raises(ReceivingNotSupported, match="pip install boilermaker-servicebus"):
        app.service_bus_client.receiver()  # type: ignore[union-attr]
    with pytest.raises(ReceivingNotSupported, match="AzureServiceBus"):
        await app.run_until_idle(timeout=5)


# -- what the service owns stays open -----------------------------------------------------


async def test_a_given_client_is_used_and_left_open(
    servicebus_queue: str, servicebus_emulator: ServiceBusEmulator
) -> None:
    async with emulator_client(servicebus_emulator) as client:
        publisher = ServiceBusPublisher.from_client(client, servicebus_queue)
        app = app_for(publisher)
        await app.apply_async(noop, 1)
        await app.apply_async(noop, 2, delay=60)
        await publisher.close()
        # The service's client still works after the publisher closed its own sender.
        async with client.get_queue_sender(servicebus_queue) as sender:
            await sender.send_messages(ServiceBusMessage(b"{}", message_id="the-service-own"))
        await app.apply_async(noop, 3)  # and publishing again opens a new sender
        await publisher.close()
    assert servicebus_emulator.counts(servicebus_queue) == QueueCounts(3, 1, 0, 0, 0)


async def test_a_given_sender_is_used_and_never_closed(
    servicebus_queue: str, servicebus_emulator: ServiceBusEmulator
) -> None:
    async with emulator_client(servicebus_emulator) as client:
        sender = client.get_queue_sender(servicebus_queue)
        publisher = ServiceBusPublisher.from_sender(sender)
        assert publisher.queue_name == servicebus_queue
        app = app_for(publisher)
        await app.apply_many(noop, [(1,), (2,)])
        delayed = await app.apply_async(noop, 3, delay=60)
        assert isinstance(delayed.sequence_number, int)
        await app.close()
        # Closed the publisher, not the sender: the service keeps sending with it.
        await sender.send_messages(ServiceBusMessage(b"{}", message_id="the-service-own"))
        await sender.close()
    assert servicebus_emulator.counts(servicebus_queue) == QueueCounts(3, 1, 0, 0, 0)

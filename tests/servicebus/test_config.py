"""Building ``AzureServiceBus`` from settings; every bad setting is named in the error."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from boilermaker.config import Config, ConfigError
from boilermaker.service_bus import AzureServiceBus

CONNECTION_STRING = (
    "Endpoint=sb://example.servicebus.windows.net/;SharedAccessKeyName=RootManageSharedAccessKey;"
    "SharedAccessKey=c2VjcmV0"
)


@pytest.fixture(autouse=True)
def _no_service_bus_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (
        "SERVICE_BUS_NAMESPACE_URL",
        "SERVICE_BUS_QUEUE_NAME",
        "SERVICE_BUS_CONNECTION_STRING",
        "AZURE_CREDENTIAL_INCLUDE_MSI",
        "BOILERMAKER_MAX_MESSAGE_SIZE",
    ):
        monkeypatch.delenv(var, raising=False)


async def test_from_config_with_a_connection_string() -> None:
    config = Config(
        service_bus_connection_string=SecretStr(CONNECTION_STRING),
        service_bus_queue_name="tasks",
        max_message_size=100_000,
    )
    broker = AzureServiceBus.from_config(config)
    try:
        assert broker.queue_name == "tasks"
        assert broker.config is config
        assert broker.max_message_size == 100_000
        assert broker.target.connection_string == CONNECTION_STRING
        assert broker.target.namespace_url is None
        assert broker.target.fully_qualified_namespace == "example.servicebus.windows.net"
    finally:
        await broker.close()


async def test_from_config_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVICE_BUS_CONNECTION_STRING", CONNECTION_STRING)
    monkeypatch.setenv("SERVICE_BUS_QUEUE_NAME", "from-env")
    broker = AzureServiceBus.from_config(Config())
    try:
        assert broker.queue_name == "from-env"
        assert broker.target.connection_string == CONNECTION_STRING
    finally:
        await broker.close()


@pytest.mark.parametrize(
    "url",
    ["https://example.servicebus.windows.net/", "example.servicebus.windows.net"],
)
async def test_from_config_with_a_namespace_url(url: str) -> None:
    config = Config(
        service_bus_namespace_url=url,
        service_bus_queue_name="tasks",
        azure_credential_include_msi=True,
    )
    broker = AzureServiceBus.from_config(config)
    try:
        assert broker.queue_name == "tasks"
        assert broker.target.connection_string is None
        assert broker.target.include_msi is True
        assert broker.target.fully_qualified_namespace == "example.servicebus.windows.net"
    finally:
        await broker.close()


def test_direct_construction_with_a_credential() -> None:
    credential = object()
    broker = AzureServiceBus("https://example.servicebus.windows.net/", "tasks", credential)
    assert broker.target.credential is credential
    assert broker.target.fully_qualified_namespace == "example.servicebus.windows.net"


def test_no_queue_name_is_named() -> None:
    config = Config(service_bus_connection_string=SecretStr(CONNECTION_STRING))
    with pytest.raises(ConfigError, match="SERVICE_BUS_QUEUE_NAME"):
        AzureServiceBus.from_config(config)


def test_neither_url_nor_connection_string_is_named() -> None:
    config = Config(service_bus_queue_name="tasks")
    with pytest.raises(ConfigError) as caught:
        AzureServiceBus.from_config(config)
    assert "SERVICE_BUS_CONNECTION_STRING" in str(caught.value)
    assert "SERVICE_BUS_NAMESPACE_URL" in str(caught.value)


@pytest.mark.parametrize(
    ("connection_string", "problem"),
    [
        ("not a connection string", "not of the form Key=Value"),
        ("SharedAccessKeyName=k;SharedAccessKey=v", "no Endpoint"),
        (
            "Endpoint=https://x.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=v",
            "must start with sb://",
        ),
        ("Endpoint=sb://x.servicebus.windows.net/;SharedAccessKeyName=k", "SharedAccessKey"),
    ],
)
def test_malformed_connection_string_is_named(connection_string: str, problem: str) -> None:
    config = Config(
        service_bus_connection_string=SecretStr(connection_string),
        service_bus_queue_name="tasks",
    )
    with pytest.raises(ConfigError) as caught:
        AzureServiceBus.from_config(config)
    message = str(caught.value)
    assert "SERVICE_BUS_CONNECTION_STRING" in message
    assert problem in message
    assert "c2VjcmV0" not in message


def test_namespace_url_without_a_host_is_named() -> None:
    config = Config(service_bus_namespace_url="https://", service_bus_queue_name="tasks")
    with pytest.raises(ConfigError, match="SERVICE_BUS_NAMESPACE_URL"):
        AzureServiceBus.from_config(config)

"""Building the Service Bus brokers as 1.4.1 code does, and showing them without secrets.

1.4.1's ``AzureServiceBus(namespace_url, queue_name, credential_factory)``
took a zero-argument callable returning a credential; a credential object
works there too. ``from_config`` takes a Config, or a dict as the published
examples pass. Both publishing brokers (the transport and the light
publisher) take the same arguments and behave alike. Their ``repr`` shows the
namespace and key name, never a key or a credential's secret.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from azure.core.credentials import AccessToken, AzureNamedKeyCredential, AzureSasCredential
from azure.identity.aio import DefaultAzureCredential
from azure.servicebus.aio import ServiceBusClient
from pydantic import SecretStr

from boilermaker.broker import OutgoingMessage
from boilermaker.config import Config, ConfigError
from boilermaker.emulator import ServiceBusEmulator
from boilermaker.service_bus import AzureServiceBus, ServiceBusTarget
from boilermaker.servicebus_publisher import ServiceBusPublisher
from boilermaker.servicebus_publisher.connection import (
    as_config,
    is_credential,
    is_credential_factory,
    parse_connection_string,
)
from tests.contracts.broker_contract import receive_n

URL = "https://example.servicebus.windows.net/"
KEY = "c2VjcmV0LWtleS12YWx1ZQ=="
CONNECTION_STRING = (
    "Endpoint=sb://example.servicebus.windows.net/;SharedAccessKeyName=SendPolicy;"
    f"SharedAccessKey={KEY}"
)

PublishingBroker = AzureServiceBus | ServiceBusPublisher


class TokenCredential:
    """A credential the way azure-identity's are shaped: ``get_token`` and ``close``."""

    def __init__(self) -> None:
        self.closed = False

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("a-token-secret", 2**31)

    async def close(self) -> None:
        self.closed = True

    async def __aenter__(self) -> TokenCredential:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class Factory:
    """A credential factory that counts its calls."""

    def __init__(self) -> None:
        self.made: list[TokenCredential] = []

    def __call__(self) -> TokenCredential:
        self.made.append(TokenCredential())
        return self.made[-1]


@pytest.fixture(autouse=True)
def _no_service_bus_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (
        "SERVICE_BUS_NAMESPACE_URL",
        "SERVICE_BUS_QUEUE_NAME",
        "SERVICE_BUS_CONNECTION_STRING",
        "AZURE_CREDENTIAL_INCLUDE_MSI",
    ):
        monkeypatch.delenv(var, raising=False)


# -- credential or factory -------------------------------------------------------------------


def test_credentials_and_factories_are_told_apart() -> None:
    assert is_credential(TokenCredential())
    assert is_credential(AzureNamedKeyCredential("name", KEY))
    assert is_credential(AzureSasCredential("sig"))
    assert not is_credential_factory(TokenCredential())
    assert is_credential_factory(Factory())
    assert is_credential_factory(lambda: TokenCredential())
    # A credential class has get_token, but calling it makes a credential: a factory.
    assert is_credential_factory(DefaultAzureCredential)
    assert not is_credential(DefaultAzureCredential)


async def test_a_factory_as_the_third_argument_is_called_for_each_client(
    publishing_broker_class: type[PublishingBroker],
) -> None:
    factory = Factory()
    broker = publishing_broker_class(URL, "tasks", factory)
    try:
        target = broker.target
        assert target is not None
        assert factory.made == []  # not called until a client is made
        client, owned = target.client()
        assert factory.made == [owned]  # the client owns what the factory made
        assert isinstance(client, ServiceBusClient)
        assert client.fully_qualified_namespace == "example.servicebus.windows.net"
        await client.close()
        _, again = target.client()
        assert len(factory.made) == 2
        assert again is factory.made[1]
    finally:
        await broker.close()


async def test_a_lambda_factory_as_in_the_1_4_1_docs(
    publishing_broker_class: type[PublishingBroker],
) -> None:
    made = TokenCredential()
    broker = publishing_broker_class(URL, "tasks", lambda: made)
    try:
        assert broker.target is not None
        _, owned = broker.target.client()
        assert owned is made
    finally:
        await broker.close()


async def test_a_credential_object_as_the_third_argument_is_used_as_it_is(
    publishing_broker_class: type[PublishingBroker],
) -> None:
    credential = TokenCredential()
    broker = publishing_broker_class(URL, "tasks", credential)
    try:
        assert broker.target is not None
        client, owned = broker.target.client()
        assert owned is None  # the caller's: never closed by us
        await client.close()
        assert not credential.closed
    finally:
        await broker.close()


async def test_credential_factory_by_keyword(
    publishing_broker_class: type[PublishingBroker],
) -> None:
    factory = Factory()
    broker = publishing_broker_class(URL, "tasks", credential_factory=factory)
    try:
        assert broker.target is not None
        assert broker.target.credential is factory
        with pytest.raises(ConfigError, match="not both"):
            publishing_broker_class(URL, "tasks", TokenCredential(), credential_factory=factory)
    finally:
        await broker.close()


def test_a_factory_that_returns_no_credential_is_named(
    publishing_broker_class: type[PublishingBroker],
) -> None:
    def nothing() -> None:
        return None

    broker = publishing_broker_class(URL, "tasks", nothing)
    assert broker.target is not None
    with pytest.raises(ConfigError, match=r"credential factory .*nothing returned a NoneType"):
        broker.target.client()


def test_a_factory_that_needs_arguments_is_refused(
    publishing_broker_class: type[PublishingBroker],
) -> None:
    def needs(scope: str) -> TokenCredential:
        return TokenCredential()

    with pytest.raises(ConfigError, match="called with no arguments"):
        publishing_broker_class(URL, "tasks", needs)  # type: ignore[arg-type]


def test_a_connection_string_as_the_credential_is_refused_without_echoing_it(
    publishing_broker_class: type[PublishingBroker],
) -> None:
    with pytest.raises(ConfigError, match="connection_string=") as refused:
        publishing_broker_class(URL, "tasks", CONNECTION_STRING)  # type: ignore[arg-type]
    assert KEY not in str(refused.value)


async def test_from_config_with_a_1_4_1_credential_factory(
    publishing_broker_class: type[PublishingBroker],
) -> None:
    factory = Factory()
    config = Config(
        service_bus_namespace_url=URL,
        service_bus_queue_name="tasks",
        service_bus_credential=factory,
    )
    broker = publishing_broker_class.from_config(config)
    try:
        assert broker.target is not None
        assert broker.target.credential is factory
        _, owned = broker.target.client()
        assert factory.made == [owned]
    finally:
        await broker.close()


# -- from_config with a dict ----------------------------------------------------------------


async def test_from_config_takes_the_dict_the_published_examples_pass(
    publishing_broker_class: type[PublishingBroker],
    new_queue: Callable[..., str],
    servicebus_emulator: ServiceBusEmulator,
) -> None:
    queue = new_queue()
    broker = publishing_broker_class.from_config(
        {"connection_string": servicebus_emulator.connection_string, "queue_name": queue}
    )
    try:
        assert broker.queue_name == queue
        assert isinstance(broker.config, Config)
        await broker.send([OutgoingMessage(b"{}", "from-a-dict")])
    finally:
        await broker.close()
    assert servicebus_emulator.counts(queue).active == 1
    receiving = AzureServiceBus.from_connection_string(servicebus_emulator.connection_string, queue)
    try:
        async with receiving.receiver() as receiver:
            (message,) = await receive_n(receiver, 1)
            assert message.message_id == "from-a-dict"
            await receiver.complete(message)
    finally:
        await receiving.close()


def test_a_dict_may_use_config_field_names_and_other_settings() -> None:
    config = as_config(
        {
            "service_bus_connection_string": CONNECTION_STRING,
            "service_bus_queue_name": "tasks",
            "max_message_size": 100_000,
            "include_msi": True,
        }
    )
    assert config.service_bus_queue_name == "tasks"
    assert isinstance(config.service_bus_connection_string, SecretStr)
    assert config.max_message_size == 100_000
    assert config.azure_credential_include_msi is True
    given = Config(service_bus_queue_name="tasks")
    assert as_config(given) is given


def test_unknown_keys_are_named_and_values_never_shown(
    publishing_broker_class: type[PublishingBroker],
) -> None:
    with pytest.raises(ConfigError) as refused:
        publishing_broker_class.from_config(
            {"connection_string": CONNECTION_STRING, "queue": "tasks", "secret_key": KEY}
        )
    text = str(refused.value)
    assert "'queue'" in text
    assert "'secret_key'" in text
    assert "queue_name" in text  # what to use instead
    assert KEY not in text


def test_two_keys_for_one_setting_are_refused() -> None:
    with pytest.raises(ConfigError, match="service_bus_queue_name"):
        as_config({"queue_name": "a", "service_bus_queue_name": "b"})


def test_from_config_refuses_what_is_neither_a_config_nor_a_dict() -> None:
    with pytest.raises(ConfigError, match="a Config or a dict"):
        AzureServiceBus.from_config(CONNECTION_STRING)  # type: ignore[arg-type]


# -- no secret in a repr ------------------------------------------------------------------------


def shown(*objects: object) -> str:
    return " ".join(f"{o!r} {o}" for o in objects)


async def test_reprs_show_the_namespace_and_key_name_never_the_key(
    publishing_broker_class: type[PublishingBroker],
) -> None:
    broker = publishing_broker_class.from_connection_string(CONNECTION_STRING, "tasks")
    try:
        text = shown(broker, broker.target)
    finally:
        await broker.close()
    assert "example.servicebus.windows.net" in text
    assert "SendPolicy" in text
    assert "'tasks'" in repr(broker)
    assert KEY not in text
    assert "SharedAccessKey=" not in text
    assert parse_connection_string(CONNECTION_STRING)["SharedAccessKey"] == KEY


async def test_reprs_show_a_credentials_type_never_its_secret(
    publishing_broker_class: type[PublishingBroker],
) -> None:
    cases: list[tuple[Any, str, str]] = [
        (AzureNamedKeyCredential("SendPolicy", KEY), KEY, "SendPolicy"),
        (AzureSasCredential(f"SharedAccessSignature sr=x&sig={KEY}&se=1"), KEY, "AzureSas"),
        (TokenCredential(), "a-token-secret", "TokenCredential"),
        (Factory(), "a-token-secret", "Factory"),
    ]
    for credential, secret, label in cases:
        broker = publishing_broker_class(URL, "tasks", credential)
        try:
            text = shown(broker, broker.target)
        finally:
            await broker.close()
        assert "example.servicebus.windows.net" in text
        assert label in repr(broker.target)
        assert secret not in text


def test_target_repr_is_namespace_key_name_and_credential_type() -> None:
    target = ServiceBusTarget(namespace_url=URL, credential=TokenCredential())
    assert repr(target) == (
        "ServiceBusTarget(namespace='example.servicebus.windows.net', credential='TokenCredential')"
    )
    by_string = ServiceBusTarget(connection_string=CONNECTION_STRING)
    assert repr(by_string) == (
        "ServiceBusTarget(namespace='example.servicebus.windows.net', key_name='SendPolicy')"
    )

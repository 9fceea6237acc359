"""Contract: SASL and SAS tokens (verified on ``$cbs``); a wrong key fails fast."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient
from azure.servicebus.exceptions import (
    MessagingEntityNotFoundError,
    ServiceBusAuthenticationError,
)
from proton import ConnectionException

from boilermaker.emulator import QueueSettings, ServiceBusEmulator
from boilermaker.emulator.sas import TokenError, generate_sas_token, verify_sas_token
from boilermaker.emulator.server import connection_string_for


@pytest.fixture(scope="module")
def strict_emulator() -> Iterator[ServiceBusEmulator]:
    """An emulator with a custom key and no auto-created queues."""
    with ServiceBusEmulator(
        queues=[QueueSettings(name="known")],
        auto_create_queues=False,
        key_name="app-policy",
        key="s3cret-key",
        mode="process",
    ) as emulator:
        yield emulator


async def test_wrong_sas_key_is_refused_fast(strict_emulator: ServiceBusEmulator) -> None:
    wrong = connection_string_for("127.0.0.1", strict_emulator.port, "app-policy", "not-the-key")
    started = time.monotonic()
    # retry_total=0: the SDK's default three retries add ~11 s of back-off, as on Azure.
    async with ServiceBusClient.from_connection_string(wrong, retry_total=0) as client:
        with pytest.raises(ServiceBusAuthenticationError) as refused:
            async with client.get_queue_sender("known") as sender:
                await sender.send_messages(ServiceBusMessage("never"))
    assert "InvalidSignature" in str(refused.value.inner_exception)
    assert "Status code: 401" in str(refused.value.inner_exception)
    assert time.monotonic() - started < 5, "refused by CBS status, not by a 60 s auth timeout"
    assert strict_emulator.counts("known").active == 0


async def test_wrong_key_name_is_refused(strict_emulator: ServiceBusEmulator) -> None:
    wrong = connection_string_for("127.0.0.1", strict_emulator.port, "other-policy", "s3cret-key")
    async with ServiceBusClient.from_connection_string(wrong, retry_total=0) as client:
        with pytest.raises(ServiceBusAuthenticationError) as refused:
            async with client.get_queue_sender("known") as sender:
                await sender.send_messages(ServiceBusMessage("never"))
    assert "unknown key name" in str(refused.value.inner_exception)


async def test_right_key_is_accepted(strict_emulator: ServiceBusEmulator) -> None:
    async with (
        ServiceBusClient.from_connection_string(strict_emulator.connection_string) as client,
        client.get_queue_sender("known") as sender,
    ):
        await sender.send_messages(ServiceBusMessage("welcome"))
    assert strict_emulator.counts("known").active == 1
    strict_emulator.purge_queue("known")
    assert strict_emulator.counts("known").active == 0


async def test_unknown_queue_is_not_found_without_auto_create(
    strict_emulator: ServiceBusEmulator,
) -> None:
    async with ServiceBusClient.from_connection_string(
        strict_emulator.connection_string, retry_total=0
    ) as client:
        with pytest.raises(MessagingEntityNotFoundError):
            async with client.get_queue_sender("missing") as sender:
                await sender.send_messages(ServiceBusMessage("lost"))
    assert "missing" not in [n.lower() for n in strict_emulator.queue_names()]


async def test_any_token_accepted_when_asked() -> None:
    with ServiceBusEmulator(accept_any_token=True) as emulator:
        anything = connection_string_for("127.0.0.1", emulator.port, "whoever", "whatever")
        async with (
            ServiceBusClient.from_connection_string(anything) as client,
            client.get_queue_sender("open-door") as sender,
        ):
            await sender.send_messages(ServiceBusMessage("in"))
        assert emulator.counts("open-door").active == 1


def test_sas_token_round_trip_and_failures() -> None:
    audience = "sb://localhost:5672/tasks"
    token = generate_sas_token(audience, "policy", "key")
    verified = verify_sas_token(token, "policy", "key")
    assert verified.audience == audience
    assert verified.key_name == "policy"
    with pytest.raises(TokenError, match="InvalidSignature"):
        verify_sas_token(token, "policy", "other-key")
    with pytest.raises(TokenError, match="ExpiredToken"):
        verify_sas_token(
            generate_sas_token(audience, "policy", "key", expiry=int(time.time()) - 5),
            "policy",
            "key",
        )
    with pytest.raises(TokenError, match="InvalidToken"):
        verify_sas_token("Bearer abc", "policy", "key")
    with pytest.raises(TokenError, match="missing"):
        verify_sas_token("SharedAccessSignature sr=x&se=1", "policy", "key")
    tampered = token.replace("tasks", "other")
    with pytest.raises(TokenError, match="InvalidSignature"):
        verify_sas_token(tampered, "policy", "key")


def test_sasl_plain_with_the_namespace_key_authorizes_the_connection(
    strict_emulator: ServiceBusEmulator,
) -> None:
    """Clients that authenticate with SASL PLAIN (key name, key) need no CBS token."""
    from proton import Message
    from proton.utils import BlockingConnection, LinkDetached

    url = f"amqp://127.0.0.1:{strict_emulator.port}"
    connection = BlockingConnection(
        url, user="app-policy", password="s3cret-key", allowed_mechs="PLAIN"
    )
    try:
        connection.create_sender("known").send(Message(body="over PLAIN"))
    finally:
        connection.close()
    assert strict_emulator.counts("known").active == 1
    strict_emulator.purge_queue("known")

    with pytest.raises(ConnectionException, match="unauthorized-access"):
        BlockingConnection(url, user="app-policy", password="wrong", allowed_mechs="PLAIN")

    anonymous = BlockingConnection(url, allowed_mechs="ANONYMOUS")
    try:
        with pytest.raises(LinkDetached, match="unauthorized-access"):
            anonymous.create_sender("known").send(Message(body="no token"))
    finally:
        anonymous.close()
    assert strict_emulator.counts("known").active == 0

"""``ServiceBusPublisher``: a publish-only Broker on one Azure Service Bus queue.

For services that enqueue work and never run it: one SDK sender link, opened
on first use and shared by every publish of the process, one operation at a
time. A task with no delay is a plain send (several go in as few
``ServiceBusMessageBatch`` transfers as their sizes allow); a delayed one is
scheduled with ``schedule_messages`` and reports its sequence number.

It connects in one of three ways, and closes only what it opened:

- a connection string (also the local emulator), or a namespace URL with a
  credential (``DefaultAzureCredential`` when none is given): it makes its own
  client with the SDK's retries off, so a wrong key fails at once and core's
  ``publish_attempts`` alone decides what is tried again;
- :meth:`ServiceBusPublisher.from_client`: a ``ServiceBusClient`` the service
  already owns; the publisher opens (and closes) a sender on it, under the
  client's own retry options;
- :meth:`ServiceBusPublisher.from_sender`: a ``ServiceBusSender`` the service
  already owns, used as it is and never closed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, Self, TypeVar

from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
from azure.core.credentials_async import AsyncTokenCredential
from azure.servicebus import ServiceBusMessageBatch
from azure.servicebus.aio import ServiceBusClient, ServiceBusSender
from azure.servicebus.exceptions import MessageSizeExceededError, OperationTimeoutError

from boilermaker.broker import DEFAULT_MAX_MESSAGE_SIZE, OutgoingMessage
from boilermaker.config import Config, ConfigError
from boilermaker.exceptions import BoilermakerAppException
from boilermaker.servicebus_publisher import sdk_internals
from boilermaker.servicebus_publisher.connection import (
    CredentialFactory,
    ServiceBusTarget,
    as_config,
)
from boilermaker.servicebus_publisher.errors import SDK_ERRORS, translate
from boilermaker.servicebus_publisher.messages import (
    batch_size_limit,
    group_by_schedule_time,
    to_sdk,
)

T = TypeVar("T")

#: What a namespace URL signs in with: an Azure AD token credential (azure-identity's,
#: or any other), a SAS token, or a shared access key name and key.
Credential = AsyncTokenCredential | AzureSasCredential | AzureNamedKeyCredential

#: Per-operation timeout for a send or schedule call (seconds).
SEND_TIMEOUT = 10.0
#: A last-resort bound on an SDK call that never returns (its own timeout failed).
HARD_TIMEOUT = SEND_TIMEOUT + 5.0


async def bounded(call: Awaitable[T]) -> T:
    """Await an SDK call, giving up after HARD_TIMEOUT seconds (as the SDK's timeout error)."""
    try:
        async with asyncio.timeout(HARD_TIMEOUT):  # no extra task, unlike wait_for
            return await call
    except TimeoutError as exc:
        raise OperationTimeoutError(message=f"no answer within {HARD_TIMEOUT}s") from exc


class ReceivingNotSupported(BoilermakerAppException, NotImplementedError):
    """A publish-only broker was asked for a receiver (a worker or a dead-letter tool)."""


@dataclass(slots=True)
class _Link:
    """An open sender and what the publisher opened to get it (closed in this order)."""

    sender: ServiceBusSender
    opened: tuple[Any, ...]

    async def close(self) -> None:
        if self.sender in self.opened:  # ours: no need to wait for its keep-alive to wake
            await sdk_internals.stop_keep_alive(self.sender)
        for resource in self.opened:
            with contextlib.suppress(*SDK_ERRORS):
                await resource.close()


class ServiceBusPublisher:
    """Publishes task messages to one Service Bus queue; see the module docstring.

    Takes the same arguments as ``boilermaker.service_bus.AzureServiceBus``
    (namespace URL, queue name, credential or credential factory; or
    ``connection_string=``), so a publisher moves between the two by changing
    one name; or one of
    ``client=`` / ``sender=`` (what the service owns, see :meth:`from_client`
    and :meth:`from_sender`) or ``target=`` (a :class:`ServiceBusTarget`).
    ``receiver()`` raises :class:`ReceivingNotSupported`: workers need
    ``boilermaker-servicebus``.
    """

    def __init__(
        self,
        service_bus_namespace_url: str | None = None,
        service_bus_queue_name: str | None = None,
        credential: Credential | CredentialFactory | None = None,
        *,
        credential_factory: CredentialFactory | None = None,
        connection_string: str | None = None,
        client: ServiceBusClient | None = None,
        sender: ServiceBusSender | None = None,
        target: ServiceBusTarget | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        include_msi: bool | None = None,
        config: Config | None = None,
    ) -> None:
        if credential_factory is not None:
            if credential is not None:
                raise ConfigError("pass a credential or a credential_factory, not both")
            credential = credential_factory
        given = [x for x in (client, sender, target) if x is not None]
        if given and (service_bus_namespace_url or connection_string or credential is not None):
            raise ConfigError(
                "a given client, sender or target already says where to connect: pass "
                "no namespace URL, connection string or credential with it"
            )
        if len(given) > 1:
            raise ConfigError("pass one of a client, a sender or a target, not several")
        if sender is not None:
            service_bus_queue_name = service_bus_queue_name or sender.entity_name
            if service_bus_queue_name != sender.entity_name:
                raise ConfigError(
                    f"queue {service_bus_queue_name!r} is not the given sender's "
                    f"({sender.entity_name!r})"
                )
        if not service_bus_queue_name:
            raise ConfigError(
                "no queue name: set SERVICE_BUS_QUEUE_NAME or pass service_bus_queue_name"
            )
        self.queue_name: str = service_bus_queue_name
        if not given:
            url = service_bus_namespace_url
            target = ServiceBusTarget(url, connection_string, credential, include_msi)
        #: Where the publisher connects itself; None with a given client or sender.
        self.target = target
        self.config = config
        #: Largest message the queue accepts (bytes); larger tasks are refused unsent.
        self.max_message_size = max_message_size
        self._client, self._sender = client, sender
        self._link: _Link | None = None
        self._lock = asyncio.Lock()
        #: Plain sends and batch transfers made; ``schedule_messages`` calls made.
        self.transfers = 0
        self.schedule_calls = 0

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_connection_string(cls, connection_string: str, queue_name: str, **kwargs: Any) -> Self:
        """Publish with a connection string (Azure or the local emulator)."""
        return cls(service_bus_queue_name=queue_name, connection_string=connection_string, **kwargs)

    @classmethod
    def from_config(cls, config: Config | Mapping[str, Any]) -> Self:
        """Publish where :class:`boilermaker.config.Config` (environment variables) says, or
        a dict of its settings (``{"connection_string": ..., "queue_name": ...}``: keys as
        :func:`boilermaker.servicebus_publisher.connection.as_config` takes them)."""
        config = as_config(config)
        target = ServiceBusTarget.from_config(config)
        size = config.max_message_size
        return cls(
            None, config.service_bus_queue_name, target=target, max_message_size=size, config=config
        )

    @classmethod
    def from_client(cls, client: ServiceBusClient, queue_name: str, **kwargs: Any) -> Self:
        """Publish through a client the service owns: the publisher opens a sender on it
        (under the client's retry options) and closes that sender, never the client."""
        return cls(None, queue_name, client=client, **kwargs)

    @classmethod
    def from_sender(cls, sender: ServiceBusSender, **kwargs: Any) -> Self:
        """Publish through a queue sender the service owns; it is never closed here."""
        return cls(None, None, sender=sender, **kwargs)

    def __repr__(self) -> str:
        where = self.target.fully_qualified_namespace if self.target else "given"
        key_name = self.target.key_name if self.target else None
        key = f", key_name={key_name!r}" if key_name else ""
        return f"{type(self).__name__}(namespace={where!r}, queue={self.queue_name!r}{key})"

    # -- Broker protocol ------------------------------------------------------------------

    async def send(self, messages: Sequence[OutgoingMessage]) -> list[int | None]:
        """Send immediate messages (batched by size), then schedule the delayed ones.

        Returns one entry per message: the sequence number of each scheduled
        message, None for the others. SDK failures are raised as core
        :class:`~boilermaker.broker.BrokerError` subclasses.
        """
        numbers: list[int | None] = [None] * len(messages)
        if not messages:
            return numbers
        now = [m for m in messages if m.scheduled_enqueue_time is None]
        later = [(i, m) for i, m in enumerate(messages) if m.scheduled_enqueue_time is not None]
        async with self._lock:
            sender = await self._open()
            try:
                if now:
                    await self._send_now(sender, now)
                for when, group in group_by_schedule_time(later):
                    sdk_messages = [to_sdk(m) for _, m in group]
                    got = await bounded(
                        sender.schedule_messages(sdk_messages, when, timeout=SEND_TIMEOUT)
                    )
                    self.schedule_calls += 1
                    for (index, _), number in zip(group, got, strict=True):
                        numbers[index] = int(number)
            except SDK_ERRORS as exc:
                await self._fail(exc, f"sending to {self.queue_name}")
        return numbers

    async def cancel_scheduled(self, sequence_numbers: Sequence[int]) -> None:
        """Cancel scheduled messages that have not become active yet."""
        async with self._lock:
            sender = await self._open()
            try:
                await bounded(
                    sender.cancel_scheduled_messages(list(sequence_numbers), timeout=SEND_TIMEOUT)
                )
            except SDK_ERRORS as exc:
                await self._fail(exc, f"cancelling scheduled messages on {self.queue_name}")

    def receiver(self, **options: Any) -> NoReturn:
        """Always raises :class:`ReceivingNotSupported`, whatever the options: this broker
        only publishes."""
        raise ReceivingNotSupported(
            f"{type(self).__name__} only publishes; workers and dead-letter tools receive "
            "with boilermaker.service_bus.AzureServiceBus: pip install boilermaker-servicebus"
        )

    async def close(self) -> None:
        """Close the sender (and client, credential) this publisher opened; a client or
        sender it was given stays open. Publishing again reopens."""
        async with self._lock:
            link, self._link = self._link, None
            if link is not None:
                await link.close()

    # -- the link -------------------------------------------------------------------------

    async def _open(self) -> ServiceBusSender:
        """The sender, opened on first use (call with the lock held)."""
        if self._link is not None:
            return self._link.sender
        if self._sender is not None:
            link = _Link(self._sender, ())
        elif self._client is not None:
            sender = self._client.get_queue_sender(queue_name=self.queue_name)
            sdk_internals.read_handshake_back_to_back(sender)
            link = _Link(sender, (sender,))
        else:
            assert self.target is not None
            # No SDK retries: core retries transient errors per publish_attempts, and
            # a wrong key or size error must fail at once.
            client, credential = self.target.client(retry_total=0)
            sender = client.get_queue_sender(queue_name=self.queue_name)
            sdk_internals.read_handshake_back_to_back(sender)
            link = _Link(sender, tuple(r for r in (sender, client, credential) if r is not None))
        try:
            await bounded(link.sender.__aenter__())
        except SDK_ERRORS as exc:
            await link.close()
            raise translate(exc, f"opening a sender on {self.queue_name}") from exc
        self._link = link
        return link.sender

    async def _fail(self, exc: BaseException, action: str) -> NoReturn:
        """Raise the core error for ``exc``; a link that may be broken is dropped first."""
        error = translate(exc, action)
        if error.transient and self._link is not None:
            link, self._link = self._link, None
            await link.close()
        raise error from exc

    async def _send_now(self, sender: ServiceBusSender, messages: list[OutgoingMessage]) -> None:
        """One plain send for one message; otherwise as few batches as sizes allow.

        Every batch is filled before the first goes out, so a message too
        large for the queue fails the call with nothing sent.
        """
        if len(messages) == 1:
            await bounded(sender.send_messages(to_sdk(messages[0]), timeout=SEND_TIMEOUT))
            self.transfers += 1
            return
        limit = batch_size_limit(sender, self.max_message_size)
        batches: list[ServiceBusMessageBatch] = [await sender.create_message_batch(limit)]
        for message in map(to_sdk, messages):
            try:
                batches[-1].add_message(message)
            except MessageSizeExceededError:
                if len(batches[-1]) == 0:
                    raise  # too large on its own
                batches.append(await sender.create_message_batch(limit))
                batches[-1].add_message(message)
        for batch in batches:
            await bounded(sender.send_messages(batch, timeout=SEND_TIMEOUT))
            self.transfers += 1

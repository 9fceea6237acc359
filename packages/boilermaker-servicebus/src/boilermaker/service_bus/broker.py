"""``AzureServiceBus``: the Broker protocol on one Azure Service Bus queue."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from boilermaker.broker import (
    DEFAULT_MAX_MESSAGE_SIZE,
    OutgoingMessage,
    ReceivedMessage,
    ReceiveMode,
    SubQueue,
)
from boilermaker.config import Config, ConfigError
from boilermaker.service_bus.connection import ServiceBusTarget
from boilermaker.service_bus.receiver import ServiceBusQueueReceiver
from boilermaker.service_bus.sender import BatchingSender
from boilermaker.servicebus_publisher.connection import CredentialFactory, as_config

logger = logging.getLogger("boilermaker.service_bus")

#: Bodies of the readiness messages that connection pools (aio-azure-clients-toolbox,
#: and so the published boilermaker 1.x) publish into the queue they send to.
READINESS_BODIES = frozenset({b"Connection established"})

#: The function name of the readiness task 1.x publishers put on the queue.
READINESS_TASK = "debug_task"


_READINESS_NAME = READINESS_TASK.encode()


def _is_1x_readiness_task(body: bytes) -> bool:
    if len(body) > 4096 or _READINESS_NAME not in body:
        return False
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    return (
        isinstance(doc, dict)
        and doc.get("function_name") == READINESS_TASK
        and doc.get("acks_late") is False
        and doc.get("graph_id") is None
        and doc.get("on_success") is None
        and doc.get("on_failure") is None
        and doc.get("payload") in ({}, {"args": [], "kwargs": {}})
    )


class AzureServiceBus:
    """A Service Bus queue to publish tasks to and receive them from.

    Connect with a connection string (also serves the local emulator) or a
    namespace URL plus a credential (``DefaultAzureCredential`` by default,
    managed identity excluded unless ``include_msi`` or
    ``AZURE_CREDENTIAL_INCLUDE_MSI``).

    As in 1.4.1, the third argument may be a credential factory instead (a
    zero-argument callable returning a credential, such as ``lambda:
    DefaultAzureCredential()``), also accepted as ``credential_factory=``: it
    is called whenever a connection is made, which then owns and closes the
    credential. Its ``repr`` shows the namespace, queue and key name, never a key.
    """

    def __init__(
        self,
        service_bus_namespace_url: str | None = None,
        service_bus_queue_name: str | None = None,
        credential: Any = None,
        *,
        credential_factory: CredentialFactory | None = None,
        connection_string: str | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        include_msi: bool | None = None,
        config: Config | None = None,
        sender_pool_size: int = 2,
    ) -> None:
        if not service_bus_queue_name:
            raise ConfigError(
                "no queue name: set SERVICE_BUS_QUEUE_NAME or pass service_bus_queue_name"
            )
        if credential_factory is not None:
            if credential is not None:
                raise ConfigError("pass a credential or a credential_factory, not both")
            credential = credential_factory
        self.queue_name = service_bus_queue_name
        self.target = ServiceBusTarget(
            namespace_url=service_bus_namespace_url,
            connection_string=connection_string,
            credential=credential,
            include_msi=include_msi,
        )
        self.config = config
        self._max_message_size = max_message_size
        self._sender = BatchingSender(
            self.target,
            self.queue_name,
            pool_size=sender_pool_size,
            max_batch_size=max_message_size,
        )

    @classmethod
    def from_config(cls, config: Config | Mapping[str, Any]) -> AzureServiceBus:
        """Build from :class:`boilermaker.config.Config` (environment variables), or from
        a dict of its settings (``{"connection_string": ..., "queue_name": ...}``: keys as
        :func:`boilermaker.servicebus_publisher.connection.as_config` takes them)."""
        config = as_config(config)
        connection_string = (
            config.service_bus_connection_string.get_secret_value()
            if config.service_bus_connection_string
            else None
        )
        return cls(
            config.service_bus_namespace_url,
            config.service_bus_queue_name,
            config.service_bus_credential,
            connection_string=connection_string,
            max_message_size=config.max_message_size,
            include_msi=config.azure_credential_include_msi,
            config=config,
        )

    @classmethod
    def from_connection_string(
        cls, connection_string: str, queue_name: str, **kwargs: Any
    ) -> AzureServiceBus:
        """Build from a connection string (Azure or the local emulator)."""
        return cls(None, queue_name, connection_string=connection_string, **kwargs)

    def __repr__(self) -> str:
        where = self.target.fully_qualified_namespace
        key = f", key_name={self.target.key_name!r}" if self.target.key_name else ""
        return f"{type(self).__name__}(namespace={where!r}, queue={self.queue_name!r}{key})"

    # -- Broker protocol ------------------------------------------------------------------

    @property
    def max_message_size(self) -> int:
        """Largest message the queue accepts (bytes)."""
        return self._max_message_size

    @property
    def sender(self) -> BatchingSender:
        """The batching sender (its counters show transfers and schedule calls)."""
        return self._sender

    async def send(self, messages: Sequence[OutgoingMessage]) -> list[int | None]:
        """Send, batching immediate messages; scheduled ones report sequence numbers."""
        return await self._sender.send(messages)

    async def cancel_scheduled(self, sequence_numbers: Sequence[int]) -> None:
        """Cancel scheduled messages."""
        await self._sender.cancel_scheduled(sequence_numbers)

    def receiver(
        self,
        *,
        prefetch: int = 0,
        sub_queue: SubQueue = SubQueue.Main,
        receive_mode: ReceiveMode = ReceiveMode.PeekLock,
    ) -> ServiceBusQueueReceiver:
        """A receiver for the queue or its dead-letter sub-queue (``async with``)."""
        return ServiceBusQueueReceiver(
            self.target,
            self.queue_name,
            prefetch=prefetch,
            sub_queue=sub_queue,
            receive_mode=receive_mode,
        )

    def is_control_message(self, message: ReceivedMessage) -> bool:
        """True for connection-pool readiness messages, which are not tasks: the pool's
        default body, and the task 1.x publishers use as theirs (``debug_task``, no
        arguments, acks early; one per new pooled connection of a 1.x publisher)."""
        return message.body in READINESS_BODIES or _is_1x_readiness_task(message.body)

    async def close(self) -> None:
        """Close pooled sender connections."""
        await self._sender.close()

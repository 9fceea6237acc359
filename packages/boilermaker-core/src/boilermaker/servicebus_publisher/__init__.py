"""Publishing to Azure Service Bus with ``boilermaker-core`` and the azure-servicebus SDK alone.

``pip install "boilermaker-core[servicebus]"`` gives a web service or function
app that only enqueues work a :class:`ServiceBusPublisher`: a core
:class:`~boilermaker.broker.Broker` that sends, schedules and batches task
messages on one queue, without the worker transport or its connection-pool
toolbox. Workers install ``boilermaker-servicebus``, whose ``AzureServiceBus``
builds its messages, clients and errors from the modules of this package, so
a message is the same whichever of the two sent it.

Importing ``boilermaker`` (or any other core module) imports nothing from
Azure; importing this package imports the SDK, and says which extra to
install when it is missing.
"""

INSTALL_HINT = 'pip install "boilermaker-core[servicebus]"'

try:
    import azure.servicebus.aio  # noqa: F401  (fail here, with the hint, not deep inside)
except ImportError as exc:
    if not (exc.name or "azure").startswith("azure"):
        raise
    raise ImportError(
        f"publishing to Azure Service Bus needs the azure-servicebus SDK ({exc}): "
        f"{INSTALL_HINT}; workers install boilermaker-servicebus",
        name=exc.name,
    ) from exc

from boilermaker.servicebus_publisher.connection import (  # noqa: E402
    ServiceBusTarget,
    parse_connection_string,
)
from boilermaker.servicebus_publisher.errors import (  # noqa: E402
    EntityNotFound,
    PermanentBrokerError,
)
from boilermaker.servicebus_publisher.publisher import (  # noqa: E402
    ReceivingNotSupported,
    ServiceBusPublisher,
)

__all__ = [
    "INSTALL_HINT",
    "EntityNotFound",
    "PermanentBrokerError",
    "ReceivingNotSupported",
    "ServiceBusPublisher",
    "ServiceBusTarget",
    "parse_connection_string",
]

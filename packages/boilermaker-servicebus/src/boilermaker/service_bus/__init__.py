"""Azure Service Bus transport for Boilermaker (``pip install boilermaker-servicebus``)."""

from boilermaker.service_bus.broker import READINESS_BODIES, AzureServiceBus
from boilermaker.service_bus.connection import ServiceBusTarget, parse_connection_string
from boilermaker.service_bus.errors import EntityNotFound, PermanentBrokerError
from boilermaker.service_bus.receiver import ServiceBusQueueReceiver
from boilermaker.service_bus.sender import BatchingSender

__all__ = [
    "READINESS_BODIES",
    "AzureServiceBus",
    "BatchingSender",
    "EntityNotFound",
    "PermanentBrokerError",
    "ServiceBusQueueReceiver",
    "ServiceBusTarget",
    "parse_connection_string",
]

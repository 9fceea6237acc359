"""A local Azure Service Bus namespace over AMQP 1.0 for development and tests.

The unmodified ``azure-servicebus`` SDK connects to it with a connection
string ending in ``;UseDevelopmentEmulator=true``::

    from boilermaker.emulator import ServiceBusEmulator, QueueSettings

    with ServiceBusEmulator(queues=[QueueSettings(name="tasks")]) as emu:
        client = ServiceBusClient.from_connection_string(emu.connection_string)

Also a command (``boilermaker-emulator``) and a pytest plugin providing the
``servicebus_emulator`` and ``servicebus_queue`` fixtures.
"""

from .amqp_server import ConnectionStats
from .config import (
    DEFAULT_KEY,
    DEFAULT_KEY_NAME,
    ConfigError,
    ConnectionLimits,
    QueueSettings,
    load_config_file,
)
from .server import EmulatorError, ServiceBusEmulator
from .store import QueueCounts, QueueNotFound

__all__ = [
    "DEFAULT_KEY",
    "DEFAULT_KEY_NAME",
    "ConfigError",
    "ConnectionLimits",
    "ConnectionStats",
    "EmulatorError",
    "QueueCounts",
    "QueueNotFound",
    "QueueSettings",
    "ServiceBusEmulator",
    "load_config_file",
]

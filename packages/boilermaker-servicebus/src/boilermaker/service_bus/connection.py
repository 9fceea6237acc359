"""Where to connect and with what credentials: a connection string or a namespace URL.

:class:`ServiceBusTarget` and :func:`parse_connection_string` live in core's
:mod:`boilermaker.servicebus_publisher.connection`, shared with the light
publisher, and are re-exported here for the transport and its users.
"""

from __future__ import annotations

from boilermaker.servicebus_publisher.connection import ServiceBusTarget, parse_connection_string

__all__ = ["ServiceBusTarget", "parse_connection_string"]

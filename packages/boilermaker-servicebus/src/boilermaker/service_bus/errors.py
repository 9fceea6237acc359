"""Mapping azure-servicebus exceptions onto core's broker errors.

The mapping itself (:func:`translate`, :data:`SDK_ERRORS`, :class:`EntityNotFound`,
:class:`PermanentBrokerError`) lives in core's
:mod:`boilermaker.servicebus_publisher.errors`, shared with the light
publisher, and is re-exported here. This module adds what only the pooled
transport meets: errors wrapped in exception groups and an exhausted pool.
"""

from __future__ import annotations

import sys

from boilermaker.broker import BrokerError
from boilermaker.servicebus_publisher.errors import (
    SDK_ERRORS,
    EntityNotFound,
    PermanentBrokerError,
    translate,
)

__all__ = [
    "SDK_ERRORS",
    "EntityNotFound",
    "PermanentBrokerError",
    "as_broker_error",
    "innermost",
    "translate",
]


def innermost(exc: BaseException) -> BaseException:
    """The first leaf of (nested) exception groups; ``exc`` itself if it is no group.

    The toolbox's connection pool opens connections inside an anyio task group,
    so whatever a connector raises arrives wrapped in an exception group.
    """
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _pool_exhausted(exc: BaseException) -> bool:
    """Whether ``exc`` is the toolbox pool's ConnectionsExhausted (without importing it)."""
    pooling = sys.modules.get("aio_azure_clients_toolbox.connection_pooling")
    return pooling is not None and isinstance(exc, pooling.ConnectionsExhausted)


def as_broker_error(exc: BaseException, action: str) -> BrokerError:
    """Any failure while doing ``action`` as a core broker error (groups unwrapped)."""
    exc = innermost(exc)
    if isinstance(exc, BrokerError):
        return exc
    if _pool_exhausted(exc):
        return BrokerError(f"{action}: no pooled connection became available: {exc}")
    return translate(exc, action)

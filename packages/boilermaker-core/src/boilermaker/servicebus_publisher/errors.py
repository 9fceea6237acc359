"""Mapping azure-servicebus exceptions onto core's broker errors.

Core decides what to retry from ``BrokerError.transient``; this module only
says which SDK failures are worth trying again. Authentication, size and
missing-entity errors never are, whatever the SDK's own ``retryable`` says.
Publishers and the worker transport both translate through :func:`translate`.
"""

from __future__ import annotations

from azure.core.exceptions import AzureError, ClientAuthenticationError
from azure.servicebus.exceptions import (
    MessageAlreadySettled,
    MessageLockLostError,
    MessageNotFoundError,
    MessageSizeExceededError,
    MessagingEntityNotFoundError,
    ServiceBusAuthenticationError,
    ServiceBusAuthorizationError,
    ServiceBusError,
    ServiceBusQuotaExceededError,
)

from boilermaker.broker import (
    BrokerAuthenticationError,
    BrokerError,
    BrokerMessageSizeExceeded,
    MessageLockLost,
)

#: What the SDK says (as a ValueError) when asked to settle on a link that was shut down.
_LINK_SHUT_DOWN = "handler has already been shutdown"


class EntityNotFound(BrokerError):
    """The queue does not exist in the namespace."""

    transient = False


class PermanentBrokerError(BrokerError):
    """A Service Bus error that trying again will not fix."""

    transient = False


def translate(exc: BaseException, action: str) -> BrokerError:
    """The core error for an SDK failure while doing ``action``."""
    text = f"{action}: {type(exc).__name__}: {exc}"
    if isinstance(exc, MessageLockLostError | MessageAlreadySettled | MessageNotFoundError):
        return MessageLockLost(text)
    if isinstance(exc, ValueError) and _LINK_SHUT_DOWN in str(exc):
        # Settling a message whose receive link died with the connection: its
        # lock went with the link, and the message will be delivered again.
        return MessageLockLost(text)
    if isinstance(
        exc,
        ServiceBusAuthenticationError | ServiceBusAuthorizationError | ClientAuthenticationError,
    ):
        return BrokerAuthenticationError(text)
    if isinstance(exc, MessageSizeExceededError):
        return BrokerMessageSizeExceeded(text)
    if isinstance(exc, MessagingEntityNotFoundError):
        return EntityNotFound(text)
    if isinstance(exc, ServiceBusQuotaExceededError):
        return PermanentBrokerError(text)
    if isinstance(exc, ServiceBusError | AzureError | OSError | TimeoutError):
        return BrokerError(text)
    return PermanentBrokerError(text)


#: Exceptions from the SDK (and its transport) that :func:`translate` handles. The SDK
#: raises ValueError for operations its state forbids (settling on a shut-down link,
#: settling a peeked or receive-and-delete message); those are broker errors too.
SDK_ERRORS: tuple[type[BaseException], ...] = (
    ServiceBusError,
    AzureError,
    MessageAlreadySettled,
    OSError,
    TimeoutError,
    ValueError,
)

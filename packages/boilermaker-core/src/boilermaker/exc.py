"""The published 1.x library's exception names, for code that imports them from here.

Each is this version's exception for the same failure, so ``except`` clauses
written for 1.x keep catching what they caught. New code imports from
:mod:`boilermaker.exceptions` (and :mod:`boilermaker.broker`,
:mod:`boilermaker.results_store`).
"""

from __future__ import annotations

from boilermaker.broker import BrokerError, MessageLockLost
from boilermaker.exceptions import BoilermakerAppException, BoilermakerError, UnknownTaskError
from boilermaker.results_store import ResultsStoreError


class ContinueGraphError(BoilermakerError):
    """Continuing a graph failed for now; the message is redelivered to try again.

    Kept for imports: workers of this version handle the case themselves.
    """


class BoilermakerServiceBusConfigurationError(BoilermakerError, ValueError):
    """The Service Bus settings are missing or malformed."""


#: A results-store operation failed.
BoilermakerStorageError = ResultsStoreError
#: A task names a function that is not registered.
BoilermakerUnregisteredFunction = UnknownTaskError
#: The message's lock was lost before it could be settled.
BoilermakerTaskLeaseLost = MessageLockLost
#: A Service Bus operation failed.
BoilermakerServiceBusError = BrokerError

__all__ = [
    "BoilermakerAppException",
    "BoilermakerError",
    "BoilermakerServiceBusConfigurationError",
    "BoilermakerServiceBusError",
    "BoilermakerStorageError",
    "BoilermakerTaskLeaseLost",
    "BoilermakerUnregisteredFunction",
    "ContinueGraphError",
]

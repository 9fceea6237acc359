"""Boilermaker: async Python background tasks on Azure Service Bus queues.

``boilermaker`` is one import package served by several distributions: this
one (``boilermaker-core``) owns the root modules; ``boilermaker.service_bus``,
``boilermaker.storage``, ``boilermaker.cli`` and ``boilermaker.emulator`` come
from their own distributions when installed.
"""

from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)

from boilermaker import redact as _redact
from boilermaker import retries
from boilermaker.app import Boilermaker
from boilermaker.exceptions import (
    ArgumentNotSerializable,
    BoilermakerAppException,
    BoilermakerError,
    GraphBuildError,
    InvalidTaskFormat,
    MessageTooLarge,
    PublishError,
    RegistrationError,
    ResultNotReady,
    UnknownTaskError,
)
from boilermaker.retries import (
    NoRetry,
    RetryException,
    RetryExceptionDefault,
    RetryExceptionDefaultExponential,
    RetryExceptionDefaultLinear,
    RetryMode,
    RetryPolicy,
)
from boilermaker.task import (
    Task,
    TaskChain,
    TaskFailureResult,
    TaskGraph,
    TaskGraphBuilder,
    TaskResult,
    TaskStatus,
)

_redact.install()  # no secret in any Boilermaker log line

__version__ = "2.0.0"

__all__ = [
    "ArgumentNotSerializable",
    "Boilermaker",
    "BoilermakerAppException",
    "BoilermakerError",
    "GraphBuildError",
    "InvalidTaskFormat",
    "MessageTooLarge",
    "NoRetry",
    "PublishError",
    "RegistrationError",
    "ResultNotReady",
    "RetryException",
    "RetryExceptionDefault",
    "RetryExceptionDefaultExponential",
    "RetryExceptionDefaultLinear",
    "RetryMode",
    "RetryPolicy",
    "Task",
    "TaskChain",
    "TaskFailureResult",
    "TaskGraph",
    "TaskGraphBuilder",
    "TaskResult",
    "TaskStatus",
    "UnknownTaskError",
    "retries",
]

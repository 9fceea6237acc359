"""Errors of the blob results store, and how Azure SDK errors become them.

Conflicts the ResultsStore protocol names (a changed ETag, a blob that
exists, a held lease) become the protocol's own exceptions so core can act
on them. Everything else that stops the store from working at all (the
account cannot be reached, the container is missing, access is denied)
becomes a :class:`BlobStorageError` whose message names the account, the
container and the cause, so the fix is obvious from the log line.

The exception classes, :class:`StorageLocation` and the wording live in
:mod:`boilermaker.storage.failures` (which imports no Azure SDK, for the
SDK-free reader); they are importable from here as before.
"""

from __future__ import annotations

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)

from boilermaker.storage.failures import (
    BlobStorageError,
    ContainerNotFound,
    StorageAccessDenied,
    StorageLocation,
    StorageUnreachable,
    container_missing,
    failed,
    refusal,
    unreachable,
)

__all__ = [
    "BlobStorageError",
    "ContainerNotFound",
    "StorageAccessDenied",
    "StorageLocation",
    "StorageUnreachable",
    "container_missing",
    "error_code",
    "status_code",
    "storage_failure",
    "unexpected",
]


def error_code(exc: BaseException) -> str | None:
    """The storage service's error code of an SDK error (``ConditionNotMet``, ...)."""
    code = getattr(exc, "error_code", None)
    if code is None and isinstance(exc, HttpResponseError) and exc.response is not None:
        headers = getattr(exc.response, "headers", None) or {}
        code = headers.get("x-ms-error-code")
    if code is None:
        return None
    return str(getattr(code, "value", code))


def status_code(exc: BaseException) -> int | None:
    """The HTTP status of an SDK error, if it got a response."""
    return exc.status_code if isinstance(exc, HttpResponseError) else None


def _cause(exc: BaseException) -> str:
    code = error_code(exc)
    status = status_code(exc)
    message = str(getattr(exc, "message", None) or exc).strip().splitlines()
    first = message[0] if message else type(exc).__name__
    parts = [type(exc).__name__]
    if status is not None:
        parts.append(f"HTTP {status}")
    if code:
        parts.append(code)
    return f"{' '.join(parts)}: {first}"


def storage_failure(
    exc: BaseException, location: StorageLocation, operation: str
) -> BlobStorageError | None:
    """The store-level error an SDK error amounts to, or None if it is not one.

    ``operation`` names what was being done (``read task-results/g/t.json``).
    """
    cause = _cause(exc)
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return unreachable(location, operation, cause)
    return refusal(
        location,
        operation,
        cause,
        status=status_code(exc),
        code=error_code(exc),
        authentication_failed=isinstance(exc, ClientAuthenticationError),
    )


def unexpected(exc: AzureError, location: StorageLocation, operation: str) -> BlobStorageError:
    """A store error for an SDK error nothing else explains."""
    return storage_failure(exc, location, operation) or failed(location, operation, _cause(exc))

"""Errors of the blob results store, and how Azure SDK errors become them.

Conflicts the ResultsStore protocol names (a changed ETag, a blob that
exists, a held lease) become the protocol's own exceptions so core can act
on them. Everything else that stops the store from working at all (the
account cannot be reached, the container is missing, access is denied)
becomes a :class:`BlobStorageError` whose message names the account, the
container and the cause, so the fix is obvious from the log line.
"""

from __future__ import annotations

from dataclasses import dataclass

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)

from boilermaker.redact import redact_url
from boilermaker.results_store import ResultsStoreError


class BlobStorageError(ResultsStoreError):
    """The blob results store could not do its work; the message says where and why."""


class StorageUnreachable(BlobStorageError):
    """The storage account's endpoint could not be reached (DNS, refused, timed out)."""


class ContainerNotFound(BlobStorageError):
    """The results container does not exist (create it, or pass ``create_container=True``)."""


class StorageAccessDenied(BlobStorageError):
    """The credentials were refused, or they lack permission for the operation."""


@dataclass(frozen=True, slots=True)
class StorageLocation:
    """Where a store points: used to name the account and container in errors."""

    account_name: str
    container_name: str
    url: str

    def __post_init__(self) -> None:
        # A SAS URL's query string is its signature: never kept for showing.
        object.__setattr__(self, "url", redact_url(self.url))

    def describe(self) -> str:
        """``container 'c' in storage account 'a' (url)``."""
        return (
            f"container {self.container_name!r} in storage account "
            f"{self.account_name!r} ({self.url})"
        )


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


_DENIED_CODES = frozenset(
    {
        "AuthenticationFailed",
        "AuthorizationFailure",
        "AuthorizationPermissionMismatch",
        "AuthorizationSourceIPMismatch",
        "AuthorizationProtocolMismatch",
        "AuthorizationResourceTypeMismatch",
        "AuthorizationServiceMismatch",
        "InsufficientAccountPermissions",
        "InvalidAuthenticationInfo",
        "NoAuthenticationInformation",
        "KeyBasedAuthenticationNotPermitted",
    }
)


def storage_failure(
    exc: BaseException, location: StorageLocation, operation: str
) -> BlobStorageError | None:
    """The store-level error an SDK error amounts to, or None if it is not one.

    ``operation`` names what was being done (``read task-results/g/t.json``).
    """
    where = location.describe()
    cause = _cause(exc)
    code = error_code(exc)
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return StorageUnreachable(
            f"cannot reach storage account {location.account_name!r} at {location.url} "
            f"(container {location.container_name!r}) to {operation}: {cause}"
        )
    if isinstance(exc, ClientAuthenticationError) or code in _DENIED_CODES:
        return StorageAccessDenied(
            f"access denied to {where} for {operation}: {cause}; check the account key, "
            "the credential, or its role assignment (e.g. Storage Blob Data Contributor)"
        )
    status = status_code(exc)
    if status in (401, 403):
        return StorageAccessDenied(f"access denied to {where} for {operation}: {cause}")
    if code == "ContainerNotFound":
        return container_missing(location, operation)
    if code == "ContainerBeingDeleted":
        return ContainerNotFound(f"{where} is being deleted ({operation}): {cause}")
    return None


def container_missing(location: StorageLocation, operation: str) -> ContainerNotFound:
    """The error for an operation that found no container."""
    return ContainerNotFound(
        f"{location.describe()} does not exist ({operation}): create it, or construct the "
        "store with create_container=True"
    )


def unexpected(exc: AzureError, location: StorageLocation, operation: str) -> BlobStorageError:
    """A store error for an SDK error nothing else explains."""
    return storage_failure(exc, location, operation) or BlobStorageError(
        f"{operation} failed on {location.describe()}: {_cause(exc)}"
    )

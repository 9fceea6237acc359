"""What stops a blob results store from working, as errors that say where and why.

The exception classes, :class:`StorageLocation` (the account and container an
error names) and the rules from a storage service answer (HTTP status, error
code) to an error live here, without the Azure SDK: both
:class:`~boilermaker.storage.BlobClientStorage` (through
:mod:`boilermaker.storage.errors`, which maps SDK exceptions onto these rules)
and the SDK-free :class:`~boilermaker.storage.reader.BlobReader` raise them, with
the same wording.
"""

from __future__ import annotations

from dataclasses import dataclass

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


#: Error codes of the storage service that mean the credentials were refused.
DENIED_CODES = frozenset(
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


def unreachable(location: StorageLocation, operation: str, cause: str) -> StorageUnreachable:
    """The error for an operation that got no answer from the account's endpoint.

    ``operation`` names what was being done (``read task-results/g/t.json``);
    ``cause`` what went wrong (``ConnectionRefusedError: ...``).
    """
    return StorageUnreachable(
        f"cannot reach storage account {location.account_name!r} at {location.url} "
        f"(container {location.container_name!r}) to {operation}: {cause}"
    )


def refusal(
    location: StorageLocation,
    operation: str,
    cause: str,
    *,
    status: int | None,
    code: str | None,
    authentication_failed: bool = False,
) -> BlobStorageError | None:
    """The store-level error a service answer amounts to, or None if it is not one.

    Refused credentials (``authentication_failed``, a denied error code, HTTP
    401/403) become :class:`StorageAccessDenied`; a missing container (or one
    being deleted) :class:`ContainerNotFound`.
    """
    where = location.describe()
    if authentication_failed or code in DENIED_CODES:
        return StorageAccessDenied(
            f"access denied to {where} for {operation}: {cause}; check the account key, "
            "the credential, or its role assignment (e.g. Storage Blob Data Contributor)"
        )
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


def failed(location: StorageLocation, operation: str, cause: str) -> BlobStorageError:
    """A store error for a failure nothing more specific explains."""
    return BlobStorageError(f"{operation} failed on {location.describe()}: {cause}")

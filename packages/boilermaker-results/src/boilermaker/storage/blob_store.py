"""``BlobClientStorage``: the ResultsStore protocol on Azure Blob Storage.

Each protocol operation is one request (or one per page or batch) on a single
long-lived ``ContainerClient``, whose HTTP session and connection pool every
operation shares:

==================  =========================================================
protocol            Azure Blob Storage
==================  =========================================================
read                Get Blob (ETag, metadata); missing blob -> None
write               Put Blob; ``if_match`` -> If-Match (412 -> PreconditionFailed);
                    ``create_only`` -> If-None-Match: * (409/412 -> BlobExists);
                    ``lease_id`` -> x-ms-lease-id (lease errors -> LeaseConflict);
                    ``tags`` -> index tags
acquire_lease       Lease Blob acquire (optionally If-Match)
release_lease       Lease Blob release
break_lease         Lease Blob break, period 0
find_by_tags        Find Blobs by Tags in Container (AND of equalities)
list_names          List Blobs with a prefix
delete_many         Blob Batch delete, 256 blobs per request
==================  =========================================================

Requests made are counted by kind in :attr:`BlobClientStorage.operations`,
like core's in-memory store, so benchmarks can report what a workflow costs.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Self

from azure.core import MatchConditions
from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import AzureError, ResourceExistsError
from azure.storage.blob import BlobProperties, FilteredBlob
from azure.storage.blob.aio import BlobClient, BlobLeaseClient, ContainerClient

from boilermaker.redact import redact_url
from boilermaker.results import PREFIX
from boilermaker.results_store import (
    BlobExists,
    BlobNotFound,
    LeaseConflict,
    PreconditionFailed,
    ResultsStoreError,
    StoredBlob,
)
from boilermaker.storage.client_options import client_options
from boilermaker.storage.credentials import default_credential
from boilermaker.storage.errors import (
    BlobStorageError,
    StorageLocation,
    container_missing,
    error_code,
    status_code,
    unexpected,
)
from boilermaker.storage.handle import ContainerHandle
from boilermaker.storage.tags import (
    can_match,
    check_tags,
    tag_filter,
    tags_from_metadata,
    tags_to_metadata,
)
from boilermaker.storage_interface import StorageInterface, lease_target

#: What ``credentials`` may be: an account key, a SAS, or a token credential.
Credential = (
    str | dict[str, str] | AzureNamedKeyCredential | AzureSasCredential | AsyncTokenCredential
)

#: Most blobs one Blob Batch request may delete.
BATCH_DELETE_LIMIT = 256

#: Blob clients kept for reuse: making one costs the SDK a pipeline and a generated client,
#: and a graph node touches its record several times in a row.
BLOB_CLIENT_CACHE_SIZE = 256

_LEASE_WRITE_CODES = frozenset(
    {
        "LeaseIdMissing",
        "LeaseIdMismatchWithBlobOperation",
        "LeaseNotPresentWithBlobOperation",
        "LeaseLost",
    }
)
_LEASE_HELD_CODES = frozenset(
    {
        "LeaseAlreadyPresent",
        "LeaseIsBreakingAndCannotBeAcquired",
        "LeaseIdMismatchWithLeaseOperation",
        "LeaseIsBrokenAndCannotBeRenewed",
        "LeaseLost",
    }
)
_NO_LEASE_CODE = "LeaseNotPresentWithLeaseOperation"


class BlobClientStorage(ContainerHandle, StorageInterface):
    """Task results and graph state in one Azure Blob Storage container.

    ``BlobClientStorage(az_storage_url, container_name, credentials=None)``
    authenticates with ``credentials`` or, by default, ``DefaultAzureCredential``
    (managed identity only if ``AZURE_CREDENTIAL_INCLUDE_MSI`` is true); use
    :meth:`from_connection_string` for account keys and Azurite.

    With ``create_container=True`` the container is created (if missing) before
    the first operation, or by :meth:`ensure_container`. Every operation reuses
    one HTTP client; call :meth:`close` (or use ``async with``) when done.

    Failures that stop the store from working raise subclasses of
    :class:`~boilermaker.storage.errors.BlobStorageError` naming the account,
    the container and the cause: ``StorageUnreachable``, ``ContainerNotFound``,
    ``StorageAccessDenied``. Extra keyword arguments go to the SDK client
    (e.g. ``retry_total=0``, ``connection_timeout=2``, ``read_timeout=30``).

    Differences from core's in-memory store, both from Azure itself:
    ``find_by_tags`` may lag writes by a moment on real Azure (the tag index is
    updated asynchronously; Azurite is immediate), and ``delete_many`` refuses
    (with LeaseConflict) to delete leased blobs.
    """

    def __init__(
        self,
        az_storage_url: str,
        container_name: str,
        credentials: Credential | None = None,
        *,
        create_container: bool = False,
        **client_kwargs: Any,
    ) -> None:
        owned: AsyncTokenCredential | None = None
        if credentials is None:
            owned = default_credential()
            credentials = owned
        get_token = getattr(credentials, "get_token", None)
        if get_token is not None and not inspect.iscoroutinefunction(get_token):
            raise TypeError(
                f"{type(credentials).__name__} is a synchronous credential; BlobClientStorage "
                "needs an async one (from azure.identity.aio)"
            )
        container = ContainerClient(
            account_url=az_storage_url,
            container_name=container_name,
            credential=credentials,
            **client_options(client_kwargs),
        )
        self._setup(container, create_container=create_container, owned_credential=owned)

    @classmethod
    def from_connection_string(
        cls,
        connection_string: str,
        container_name: str,
        *,
        create_container: bool = False,
        **client_kwargs: Any,
    ) -> Self:
        """A store authenticated by a connection string (account key or SAS; Azurite)."""
        container = ContainerClient.from_connection_string(
            connection_string, container_name, **client_options(client_kwargs)
        )
        store = cls.__new__(cls)
        store._setup(container, create_container=create_container, owned_credential=None)
        return store

    def _setup(
        self,
        container: ContainerClient,
        *,
        create_container: bool,
        owned_credential: AsyncTokenCredential | None,
    ) -> None:
        self._container = container
        self._owned_credential = owned_credential
        self.create_container = create_container
        self.location = StorageLocation(
            account_name=container.account_name or "?",
            container_name=container.container_name,
            url=container.url,
        )
        self.operations: Counter[str] = Counter()
        self._blob_clients: OrderedDict[str, BlobClient] = OrderedDict()
        self._container_ready = not create_container
        self._container_lock: asyncio.Lock | None = None
        self._closed = False

    # -- the published library's blob helpers ------------------------------------------

    #: Where results and graphs live in the container (1.x's attribute).
    task_result_prefix = PREFIX

    @property
    def az_storage_url(self) -> str:
        """The account URL (its query string, a SAS token, removed)."""
        return redact_url(self._container.primary_endpoint.rsplit("/", 1)[0] or self.location.url)

    async def upload_blob(
        self, blob_name: str, data: bytes | str, tags: Mapping[str, str] | None = None, **_: Any
    ) -> str:
        """Write ``data`` to ``blob_name`` (1.x's helper; :meth:`write` has the conditions)."""
        body = data.encode() if isinstance(data, str) else data
        return await self.write(blob_name, body, tags=tags)

    async def download_blob(self, blob_name: str) -> bytes:
        """The content of ``blob_name``; BlobNotFound if it does not exist."""
        found = await self.read(blob_name)
        if found is None:
            raise BlobNotFound(f"blob {blob_name} does not exist")
        return found.data

    async def delete_blob(self, blob_name: str) -> None:
        """Delete ``blob_name`` (one already gone is not an error)."""
        await self.delete_many([blob_name])

    async def list_blobs(self, prefix: str | None = None) -> list[str]:
        """Names of the container's blobs starting with ``prefix``."""
        return await self.list_names(prefix or "")

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def container_client(self) -> ContainerClient:
        """The one SDK client every operation goes through."""
        return self._container

    async def ensure_container(self) -> None:
        """Create the container if it does not exist (idempotent; safe to race)."""
        self._check_open()
        if self._container_lock is None:
            self._container_lock = asyncio.Lock()
        async with self._container_lock:
            try:
                await self._container.create_container()
            except ResourceExistsError:
                pass
            except AzureError as exc:
                raise unexpected(exc, self.location, "create the container") from exc
            self._container_ready = True

    async def _ready(self) -> None:
        self._check_open()
        if not self._container_ready:
            await self.ensure_container()

    async def close(self) -> None:
        """Close the HTTP client (and the default credential, if the store made it)."""
        if self._closed:
            return
        self._closed = True
        self._blob_clients.clear()
        await self._container.close()
        if self._owned_credential is not None:
            await self._owned_credential.close()

    async def __aenter__(self) -> Self:
        await self._ready()
        return self

    def _blob(self, name: str) -> BlobClient:
        # Shares the container client's transport: no new HTTP session per blob.
        client = self._blob_clients.get(name)
        if client is None:
            client = self._container.get_blob_client(name)
            self._blob_clients[name] = client
            if len(self._blob_clients) > BLOB_CLIENT_CACHE_SIZE:
                self._blob_clients.popitem(last=False)
        else:
            self._blob_clients.move_to_end(name)
        return client

    def _fail(self, exc: AzureError, operation: str) -> BlobStorageError:
        return unexpected(exc, self.location, operation)

    # -- blobs ----------------------------------------------------------------------------

    async def read(self, name: str) -> StoredBlob | None:
        """The blob, its ETag, index tags and last-modified time; None if it does not exist."""
        await self._ready()
        blob = self._blob(name)
        self.operations["read"] += 1
        try:
            downloader = await blob.download_blob(max_concurrency=1)
            data = await downloader.readall()
        except AzureError as exc:
            if status_code(exc) == 404 and error_code(exc) in (None, "BlobNotFound"):
                return None
            raise self._fail(exc, f"read {name}") from exc
        props = downloader.properties
        tags = tags_from_metadata(props.metadata)
        count = props.tag_count
        if tags is None or (count is not None and len(tags) != count):
            tags = await self._read_tags(blob, name) if count else {}
        return StoredBlob(
            name=name,
            data=data,
            etag=str(props.etag),
            tags=tags,
            last_modified=props.last_modified,
        )

    async def _read_tags(self, blob: BlobClient, name: str) -> dict[str, str]:
        # Only for blobs written without the metadata copy (by another writer).
        self.operations["read"] += 1
        try:
            return dict(await blob.get_blob_tags())
        except AzureError as exc:
            if status_code(exc) == 404 and error_code(exc) in (None, "BlobNotFound"):
                return {}
            raise self._fail(exc, f"read the tags of {name}") from exc

    async def write(
        self,
        name: str,
        data: bytes,
        *,
        tags: Mapping[str, str] | None = None,
        if_match: str | None = None,
        create_only: bool = False,
        lease_id: str | None = None,
    ) -> str:
        """Write the blob whole (replacing data and tags) and return its new ETag.

        ``if_match``: only if unchanged since that ETag, else PreconditionFailed.
        ``create_only``: only if it does not exist, else BlobExists.
        ``lease_id``: required while the blob is leased, else LeaseConflict.
        """
        if create_only and if_match is not None:
            raise ValueError("write(): create_only and if_match cannot be combined")
        check_tags(tags or {}, name)
        await self._ready()
        if create_only and lease_id is not None:
            # A new blob has no lease, so this can never succeed; say why, as core's store does.
            if await self._exists(name):
                raise BlobExists(f"blob {name} already exists")
            raise LeaseConflict(f"blob {name} does not exist, so it has no lease {lease_id}")
        kwargs: dict[str, Any] = {
            "overwrite": True,
            "metadata": tags_to_metadata(tags or {}),
        }
        if tags:
            kwargs["tags"] = dict(tags)
        if if_match is not None:
            kwargs["etag"] = if_match
            kwargs["match_condition"] = MatchConditions.IfNotModified
        elif create_only:
            # No etag argument: the SDK sends If-None-Match: * for IfMissing by itself.
            kwargs["match_condition"] = MatchConditions.IfMissing
        elif lease_id is not None:
            # If-Match: * -- only an existing blob can hold the lease (Azurite skips this check).
            kwargs["match_condition"] = MatchConditions.IfPresent
        if lease_id is not None:
            kwargs["lease"] = lease_id
        self.operations["write"] += 1
        try:
            response = await self._blob(name).upload_blob(data, **kwargs)
        except AzureError as exc:
            raise self._write_error(exc, name, if_match, create_only, lease_id) from exc
        return str(response["etag"])

    def _write_error(
        self,
        exc: AzureError,
        name: str,
        if_match: str | None,
        create_only: bool,
        lease_id: str | None,
    ) -> ResultsStoreError:
        code = error_code(exc)
        status = status_code(exc)
        if code in _LEASE_WRITE_CODES:
            if create_only and lease_id is None:
                # Only an existing blob can be leased.
                return BlobExists(f"blob {name} already exists (and is leased)")
            if lease_id is None:
                return LeaseConflict(f"blob {name} is leased; the write needs the lease id")
            return LeaseConflict(f"blob {name} does not hold lease {lease_id} ({code})")
        if create_only and (status == 409 or (status == 412 and code == "ConditionNotMet")):
            return BlobExists(f"blob {name} already exists")
        if if_match is not None and (
            (status == 412 and code == "ConditionNotMet") or code == "BlobNotFound"
        ):
            return PreconditionFailed(f"blob {name} changed since ETag {if_match} (or is gone)")
        if lease_id is not None and status == 412 and code == "ConditionNotMet":
            return LeaseConflict(f"blob {name} does not exist, so it has no lease {lease_id}")
        return self._fail(exc, f"write {name}")

    async def _properties(self, name: str) -> BlobProperties | None:
        self.operations["read"] += 1
        try:
            return await self._blob(name).get_blob_properties()
        except AzureError as exc:
            if status_code(exc) == 404:
                return None
            raise self._fail(exc, f"read the properties of {name}") from exc

    async def _exists(self, name: str) -> bool:
        return await self._properties(name) is not None

    async def _has_active_lease(self, name: str) -> bool:
        props = await self._properties(name)
        return props is not None and props.lease.state in ("leased", "breaking")

    # -- leases ---------------------------------------------------------------------------

    async def acquire_lease(
        self, name: str, duration: float = -1, *, if_match: str | None = None
    ) -> str:
        """Lease the blob for 15-60 s (or -1: until released or broken); returns the lease id.

        ``if_match``: only if the blob is unchanged since that ETag, else
        PreconditionFailed. A blob leased by someone else raises LeaseConflict.
        """
        if duration != -1 and not 15 <= duration <= 60:
            raise ValueError("lease duration must be 15-60 seconds or -1 (infinite)")
        await self._ready()
        lease = BlobLeaseClient(self._blob(name))
        kwargs: dict[str, Any] = {}
        if if_match is not None:
            kwargs["etag"] = if_match
            kwargs["match_condition"] = MatchConditions.IfNotModified
        self.operations["lease"] += 1
        try:
            await lease.acquire(lease_duration=int(duration), **kwargs)
        except AzureError as exc:
            raise self._lease_error(exc, name, "acquire a lease on") from exc
        return str(lease.id)

    async def release_lease(self, name: str, lease_id: str, held: str | None = None) -> None:
        """Give the lease back; a lease already gone (broken, expired) is not an error.

        Also 1.x's ``release_lease(task_id, graph_id, lease_id)``.
        """
        name, lease_id = lease_target(name, lease_id, held)
        await self._ready()
        lease = BlobLeaseClient(self._blob(name), lease_id=lease_id)
        self.operations["lease"] += 1
        try:
            await lease.release()
        except AzureError as exc:
            code = error_code(exc)
            if code == _NO_LEASE_CODE:
                return
            if code == "LeaseIdMismatchWithLeaseOperation" and not await self._has_active_lease(
                name
            ):
                # Azurite reports a mismatch where Azure says there is no lease: either
                # way nobody holds the blob, which is what releasing is for.
                return
            raise self._lease_error(exc, name, "release the lease on") from exc

    async def break_lease(self, name: str) -> None:
        """End whatever lease the blob has, at once (break period 0)."""
        await self._ready()
        lease = BlobLeaseClient(self._blob(name))
        self.operations["lease"] += 1
        try:
            await lease.break_lease(lease_break_period=0)
        except AzureError as exc:
            if error_code(exc) == _NO_LEASE_CODE:
                return
            raise self._lease_error(exc, name, "break the lease on") from exc

    def _lease_error(self, exc: AzureError, name: str, action: str) -> ResultsStoreError:
        code = error_code(exc)
        status = status_code(exc)
        if status == 404 and code in (None, "BlobNotFound"):
            return BlobNotFound(name)
        if status == 412 and code == "ConditionNotMet":
            return PreconditionFailed(f"blob {name} changed since the ETag given")
        if code in _LEASE_HELD_CODES or (status == 409 and code and code.startswith("Lease")):
            return LeaseConflict(f"cannot {action} {name}: {code}")
        return self._fail(exc, f"{action} {name}")

    # -- queries and cleanup --------------------------------------------------------------

    async def find_by_tags(self, tags: Mapping[str, str]) -> list[str]:
        """Names of blobs in the container whose index tags include all of ``tags``, sorted.

        No tags matches every blob (as a listing).
        """
        if not tags:
            return await self.list_names("")
        if not can_match(tags):
            return []  # Azure accepts no such tag, so no blob carries it.
        await self._ready()
        expression = tag_filter(tags)
        names: list[str] = []
        try:
            pages = self._container.find_blobs_by_tags(expression).by_page()
            async for page in pages:
                self.operations["find"] += 1
                names.extend([item.name async for item in page])
        except AzureError as exc:
            raise self._fail(exc, f"find blobs by tags ({expression})") from exc
        return sorted(set(names))

    async def list_names(self, prefix: str) -> list[str]:
        """Names of blobs starting with ``prefix``, sorted."""
        await self._ready()
        names: list[str] = []
        try:
            pages = self._container.list_blob_names(name_starts_with=prefix or None).by_page()
            async for page in pages:
                self.operations["list"] += 1
                names.extend([name async for name in page])
        except AzureError as exc:
            raise self._fail(exc, f"list blobs under {prefix!r}") from exc
        return sorted(names)

    async def find_blobs_by_tags(self, filter_expression: str) -> AsyncIterator[FilteredBlob]:
        """Blobs of the container matching a blob-index filter expression, such as
        ``"graph_id" = 'x' AND "status" = 'failure'`` (1.x's method; each item has
        ``name`` and the matched ``tags``)."""
        await self._ready()
        self.operations["find"] += 1
        try:
            async for blob in self._container.find_blobs_by_tags(filter_expression):
                yield blob
        except AzureError as exc:
            raise self._fail(exc, f"find blobs by tags ({filter_expression})") from exc

    async def delete_many(self, names: Sequence[str]) -> None:
        """Delete blobs, 256 per batch request; missing blobs are ignored.

        Raises LeaseConflict naming leased blobs (which Azure will not delete
        without their lease), after deleting everything else.
        """
        unique = list(dict.fromkeys(names))
        if not unique:
            return
        await self._ready()
        leased: list[str] = []
        failed: list[str] = []
        for start in range(0, len(unique), BATCH_DELETE_LIMIT):
            batch = unique[start : start + BATCH_DELETE_LIMIT]
            self.operations["delete"] += 1
            try:
                responses = await self._container.delete_blobs(*batch, raise_on_any_failure=False)
                outcomes = [response async for response in responses]
            except AzureError as exc:
                raise self._fail(exc, f"delete {len(batch)} blobs") from exc
            for name, response in zip(batch, outcomes, strict=True):
                status = response.status_code
                code = response.headers.get("x-ms-error-code")
                if code == "ContainerNotFound":
                    raise container_missing(self.location, f"delete {name}")
                if status in (200, 202, 204, 404):
                    continue
                if code in _LEASE_WRITE_CODES:
                    leased.append(name)
                else:
                    failed.append(f"{name} (HTTP {status} {code})")
        if failed:
            raise BlobStorageError(
                f"could not delete {len(failed)} blob(s) from {self.location.describe()}: "
                + ", ".join(failed[:10])
            )
        if leased:
            raise LeaseConflict(
                f"{len(leased)} blob(s) are leased and were not deleted: " + ", ".join(leased[:10])
            )

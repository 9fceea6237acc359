"""``BlobReader``: the reading half of the ResultsStore protocol, without the Azure SDK.

Read-only commands (``boilermaker inspect``, ``graph status``, ``results get``)
read a handful of blobs and exit; importing ``azure.storage.blob`` (which
brings in azure-core's aiohttp and requests transports) would cost them more
than the reading. :class:`BlobReader` speaks the Blob service's REST API
itself, over the standard library only (asyncio streams, ``ssl`` for https,
``hmac`` for Shared Key, ``xml.etree`` for listings), and answers exactly what
:class:`~boilermaker.storage.BlobClientStorage` answers for the same blobs:

==================  ========================================================
protocol            Azure Blob Storage
==================  ========================================================
read                Get Blob (data, ETag, Last-Modified, metadata, tag count);
                    Get Blob Tags only when the metadata holds no copy of
                    the index tags, as ``BlobClientStorage.read`` does;
                    missing blob -> None
list_names          List Blobs with a prefix, page by page (``NextMarker``)
find_by_tags        Find Blobs by Tags in Container, page by page
close               closes the connections
==================  ========================================================

What it does:

- connects as a connection string says (:mod:`boilermaker.storage.account`):
  account key (Shared Key signatures), SAS token, or anonymous; Azurite's
  path-style endpoints included;
- keeps up to ``max_connections`` keep-alive HTTP/1.1 connections
  (:mod:`boilermaker.storage.http_connection`), with a connect timeout and a
  per-request timeout, and tries a request up to ``attempts`` times, with a
  short backoff, when the connection fails or the service answers 408, 500,
  502, 503 or 504 (the Azure SDK's default policy retries the same);
- raises the store's own errors, worded as ``BlobClientStorage`` words them
  (:mod:`boilermaker.storage.failures`): ``StorageUnreachable``,
  ``ContainerNotFound``, ``StorageAccessDenied``, ``BlobStorageError``; no
  key or signature is ever part of one.

What it does not do: write, lease or delete (those raise
:class:`ReadOnlyStoreError`: use ``BlobClientStorage``), sign in with an
Azure AD credential (``DefaultAzureCredential`` stays with the SDK), go through
an HTTP proxy, or create the container.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping, Sequence
from email.utils import formatdate, parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import quote, unquote, urlsplit

from boilermaker.redact import redact
from boilermaker.results_store import StoredBlob
from boilermaker.storage.account import BlobAccount
from boilermaker.storage.failures import (
    BlobStorageError,
    StorageLocation,
    failed,
    refusal,
    unreachable,
)
from boilermaker.storage.handle import ContainerHandle
from boilermaker.storage.http_connection import (
    HttpConnectionError,
    HttpConnections,
    HttpResponse,
)
from boilermaker.storage.tags import can_match, tag_filter, tags_from_metadata

if TYPE_CHECKING:
    from xml.etree.ElementTree import Element

#: The Blob service REST API version requests ask for (Find Blobs by Tags in a
#: container needs 2021-04-10 or later).
API_VERSION = "2021-08-06"
#: Statuses worth another try: the service was busy or failed for a moment.
RETRY_STATUSES = frozenset({408, 500, 502, 503, 504})
#: Seconds before the second try; each later one waits twice as long.
FIRST_BACKOFF = 0.2

_METADATA_PREFIX = "x-ms-meta-"


class ReadOnlyStoreError(BlobStorageError):
    """A write, lease or delete was asked of a :class:`BlobReader`, which only reads."""


class BlobReader(ContainerHandle):
    """Read task results and graph state from one blob container, without the Azure SDK.

    ``BlobReader.from_connection_string(connection_string, container_name)``
    takes the connection strings ``BlobClientStorage.from_connection_string``
    takes. ``read``, ``list_names`` and ``find_by_tags`` return what
    ``BlobClientStorage`` returns for the same blobs; the writing half of the
    ResultsStore protocol raises :class:`ReadOnlyStoreError`. Call
    :meth:`close` (or use ``async with``) when done.

    ``list_page_size`` asks for at most that many names per List Blobs page
    (the service's default, 5000, when None). Requests made are counted by
    kind in :attr:`operations`, as ``BlobClientStorage`` counts them.
    """

    def __init__(
        self,
        account: BlobAccount,
        container_name: str,
        *,
        max_connections: int = 4,
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
        attempts: int = 3,
        list_page_size: int | None = None,
    ) -> None:
        if not container_name:
            raise ValueError("BlobReader needs a container name")
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        if list_page_size is not None and list_page_size < 1:
            raise ValueError("list_page_size must be at least 1")
        self.account = account
        self.attempts = attempts
        self.list_page_size = list_page_size
        endpoint = urlsplit(account.endpoint)
        self._base_path = endpoint.path.rstrip("/")
        self._container_path = f"{self._base_path}/{quote(container_name, safe='')}"
        container_url = f"{account.endpoint}/{quote(container_name, safe='')}"
        if account.sas_token:
            container_url += f"?{account.sas_token}"
        self.location = StorageLocation(
            account_name=account.account_name or "?",
            container_name=container_name,
            url=container_url,
        )
        assert endpoint.hostname is not None  # BlobAccount checked it
        self._connections = HttpConnections(
            endpoint.scheme,
            endpoint.hostname,
            endpoint.port or (443 if endpoint.scheme == "https" else 80),
            max_connections=max_connections,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        )
        self.operations: Counter[str] = Counter()
        self._closed = False

    @classmethod
    def from_connection_string(
        cls, connection_string: str, container_name: str, **options: Any
    ) -> Self:
        """A reader on ``container_name`` of the account a connection string names.

        Raises ValueError, naming the problem and never the key, if the
        connection string is malformed. ``options`` are the constructor's.
        """
        return cls(BlobAccount.from_connection_string(connection_string), container_name, **options)

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def connections_opened(self) -> int:
        """How many connections have been made so far (kept alive and reused)."""
        return self._connections.opened

    async def close(self) -> None:
        """Close the connections; the reader refuses work afterwards."""
        if self._closed:
            return
        self._closed = True
        await self._connections.close()

    async def __aenter__(self) -> Self:
        return self

    # -- reading --------------------------------------------------------------------------

    async def read(self, name: str) -> StoredBlob | None:
        """The blob, its ETag, index tags and last-modified time; None if it does not exist."""
        operation = f"read {name}"
        path = self._blob_path(name)
        self.operations["read"] += 1
        response = await self._get(path, [], operation)
        if response.status == 404 and self._error_code(response) in (None, "BlobNotFound"):
            return None
        if response.status != 200:
            raise self._failure(response, operation)
        metadata = {
            key[len(_METADATA_PREFIX) :]: value
            for key, value in response.headers
            if key.lower().startswith(_METADATA_PREFIX)
        }
        tags = tags_from_metadata(metadata)
        count_header = response.header("x-ms-tag-count")
        count = int(count_header) if count_header and count_header.isdigit() else None
        if tags is None or (count is not None and len(tags) != count):
            tags = await self._read_tags(name) if count else {}
        last_modified = response.header("Last-Modified")
        return StoredBlob(
            name=name,
            data=response.body,
            etag=response.header("ETag") or "",
            tags=tags,
            last_modified=parsedate_to_datetime(last_modified) if last_modified else None,
        )

    async def _read_tags(self, name: str) -> dict[str, str]:
        # Only for blobs written without the metadata copy (by another writer).
        operation = f"read the tags of {name}"
        self.operations["read"] += 1
        response = await self._get(self._blob_path(name), [("comp", "tags")], operation)
        if response.status == 404 and self._error_code(response) in (None, "BlobNotFound"):
            return {}
        if response.status != 200:
            raise self._failure(response, operation)
        root = self._xml(response, operation)
        tags: dict[str, str] = {}
        for tag in root.iter("Tag"):
            tags[tag.findtext("Key") or ""] = tag.findtext("Value") or ""
        return tags

    async def list_names(self, prefix: str) -> list[str]:
        """Names of blobs starting with ``prefix``, sorted."""
        query = [("restype", "container"), ("comp", "list")]
        if prefix:
            query.append(("prefix", prefix))
        names = await self._pages(query, "list", f"list blobs under {prefix!r}")
        return sorted(names)

    async def find_by_tags(self, tags: Mapping[str, str]) -> list[str]:
        """Names of blobs in the container whose index tags include all of ``tags``, sorted.

        No tags matches every blob (as a listing).
        """
        if not tags:
            return await self.list_names("")
        if not can_match(tags):
            return []  # Azure accepts no such tag, so no blob carries it.
        expression = tag_filter(tags)
        query = [("restype", "container"), ("comp", "blobs"), ("where", expression)]
        names = await self._pages(query, "find", f"find blobs by tags ({expression})")
        return sorted(set(names))

    async def _pages(self, query: list[tuple[str, str]], kind: str, operation: str) -> list[str]:
        """Every blob name of a listing, following ``NextMarker`` from page to page."""
        if self.list_page_size is not None:
            query = [*query, ("maxresults", str(self.list_page_size))]
        names: list[str] = []
        marker = ""
        while True:
            self.operations[kind] += 1
            page = [*query, ("marker", marker)] if marker else query
            response = await self._get(self._container_path, page, operation)
            if response.status != 200:
                raise self._failure(response, operation)
            root = self._xml(response, operation)
            for element in root.iterfind("Blobs/Blob/Name"):
                text = element.text or ""
                names.append(unquote(text) if element.get("Encoded") == "true" else text)
            marker = root.findtext("NextMarker") or ""
            if not marker:
                return names

    # -- the read-only refusals -----------------------------------------------------------

    def _read_only(self, operation: str) -> ReadOnlyStoreError:
        return ReadOnlyStoreError(
            f"the blob reader for {self.location.describe()} is read-only: it cannot "
            f"{operation} (boilermaker.storage.BlobClientStorage writes)"
        )

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
        """Refused: a reader does not write (:class:`ReadOnlyStoreError`)."""
        raise self._read_only(f"write {name}")

    async def acquire_lease(
        self, name: str, duration: float = -1, *, if_match: str | None = None
    ) -> str:
        """Refused: a reader takes no lease (:class:`ReadOnlyStoreError`)."""
        raise self._read_only(f"acquire a lease on {name}")

    async def release_lease(self, name: str, lease_id: str) -> None:
        """Refused: a reader holds no lease (:class:`ReadOnlyStoreError`)."""
        raise self._read_only(f"release the lease on {name}")

    async def break_lease(self, name: str) -> None:
        """Refused: a reader breaks no lease (:class:`ReadOnlyStoreError`)."""
        raise self._read_only(f"break the lease on {name}")

    async def delete_many(self, names: Sequence[str]) -> None:
        """Refused: a reader deletes nothing (:class:`ReadOnlyStoreError`)."""
        raise self._read_only(f"delete {len(names)} blob(s)")

    # -- requests -------------------------------------------------------------------------

    def _blob_path(self, name: str) -> str:
        if not name:
            raise ValueError("a blob name cannot be empty")
        if any(part in (".", "..") for part in name.split("/")):
            # A URL path would climb out of the container on them.
            raise ValueError(f"blob name {name!r} has a '.' or '..' segment")
        return f"{self._container_path}/{quote(name, safe='~/')}"

    async def _get(self, path: str, query: list[tuple[str, str]], operation: str) -> HttpResponse:
        """GET ``path?query``, signed, tried up to ``attempts`` times; the last response."""
        self._check_open()
        target = path
        encoded = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in query)
        if self.account.sas_token:
            encoded = f"{encoded}&{self.account.sas_token}" if encoded else self.account.sas_token
        if encoded:
            target = f"{path}?{encoded}"
        for attempt in range(1, self.attempts + 1):
            headers = {
                "x-ms-date": formatdate(usegmt=True),
                "x-ms-version": API_VERSION,
                "Accept-Encoding": "identity",
                "User-Agent": "boilermaker-blob-reader",
            }
            if self.account.signs_with_shared_key:
                headers["Authorization"] = self.account.authorization("GET", path, query, headers)
            try:
                response = await self._connections.request("GET", target, list(headers.items()))
            except HttpConnectionError as exc:
                if attempt == self.attempts or self._closed:
                    raise unreachable(self.location, operation, redact(str(exc))) from None
            else:
                if response.status not in RETRY_STATUSES or attempt == self.attempts:
                    return response
            await asyncio.sleep(FIRST_BACKOFF * 2 ** (attempt - 1))
        raise AssertionError("unreachable: the last attempt returns or raises")

    @staticmethod
    def _error_code(response: HttpResponse) -> str | None:
        code = response.header("x-ms-error-code")
        if code is None and response.body.lstrip().startswith(b"<"):
            code = _error_document(response.body)[0]
        return code

    def _failure(self, response: HttpResponse, operation: str) -> BlobStorageError:
        code, message = _error_document(response.body)
        code = response.header("x-ms-error-code") or code
        first = (message or response.reason or "").strip().splitlines()
        cause = f"HTTP {response.status}{f' {code}' if code else ''}: {first[0] if first else '-'}"
        cause = redact(cause)
        return refusal(
            self.location, operation, cause, status=response.status, code=code
        ) or failed(self.location, operation, cause)

    def _xml(self, response: HttpResponse, operation: str) -> Element:
        from xml.etree.ElementTree import ParseError, fromstring

        try:
            return fromstring(response.body)
        except ParseError as exc:
            raise failed(
                self.location, operation, f"the service answered with XML it cannot parse ({exc})"
            ) from None


def _error_document(body: bytes) -> tuple[str | None, str | None]:
    """The ``Code`` and ``Message`` of an error response's XML body, if it has one."""
    if not body.lstrip().startswith(b"<"):
        return None, None
    from xml.etree.ElementTree import ParseError, fromstring

    try:
        root = fromstring(body)
    except ParseError:
        return None, None
    return root.findtext("Code"), root.findtext("Message")

"""The ResultsStore protocol: blob storage semantics that results and graphs need.

Names are paths (``task-results/{graph_id}/{task_id}.json``). Every write
returns the new ETag; conditional writes give optimistic concurrency:

- ``if_match=etag``: write only if the blob is unchanged since that read
  (compare-and-swap), else :class:`PreconditionFailed`.
- ``create_only=True``: write only if the blob does not exist, else
  :class:`BlobExists`.
- Leases lock a blob for writing: while leased, writes must carry the lease
  id, else :class:`LeaseConflict`.

Core ships :class:`boilermaker.memory.InMemoryResultsStore`;
``boilermaker.storage.BlobClientStorage`` implements it on Azure Blob Storage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

from boilermaker.exceptions import BoilermakerError


class ResultsStoreError(BoilermakerError):
    """A results store operation failed."""


class BlobNotFound(ResultsStoreError, KeyError):
    """The blob does not exist."""


class BlobExists(ResultsStoreError):
    """A create-only write found the blob already there."""


class PreconditionFailed(ResultsStoreError):
    """The blob changed since the ETag given (or the lease condition was not met)."""


class LeaseConflict(ResultsStoreError):
    """The blob is leased by someone else, or the lease id given is not the active one."""


@dataclass(frozen=True, slots=True)
class StoredBlob:
    """A blob's content with the ETag it was read at."""

    name: str
    data: bytes
    etag: str
    tags: Mapping[str, str] = field(default_factory=dict)
    last_modified: datetime | None = None


@runtime_checkable
class ResultsStore(Protocol):
    """Blob operations with ETags, leases and index tags."""

    async def read(self, name: str) -> StoredBlob | None:
        """The blob and its ETag, or None if it does not exist."""
        ...

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
        """Write the blob (with index tags) and return its new ETag."""
        ...

    async def acquire_lease(
        self, name: str, duration: float = -1, *, if_match: str | None = None
    ) -> str:
        """Lease the blob (seconds, 15-60, or -1 for infinite); returns the lease id."""
        ...

    async def release_lease(self, name: str, lease_id: str) -> None:
        """Give the lease back."""
        ...

    async def break_lease(self, name: str) -> None:
        """End whatever lease the blob has, at once."""
        ...

    async def find_by_tags(self, tags: Mapping[str, str]) -> list[str]:
        """Names of blobs whose index tags include all of ``tags``."""
        ...

    async def list_names(self, prefix: str) -> list[str]:
        """Names of blobs starting with ``prefix``, sorted."""
        ...

    async def delete_many(self, names: Sequence[str]) -> None:
        """Delete blobs (missing ones are ignored)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...

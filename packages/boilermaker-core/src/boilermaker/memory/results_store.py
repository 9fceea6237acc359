"""An in-memory results store with Azure Blob Storage semantics, for tests and local runs.

ETags change on every write; ``if_match`` and ``create_only`` are enforced;
leases (15-60 s or infinite) block writes that do not carry the lease id,
expire on their own and can be broken; index tags can be queried. Operation
counts are kept so tests and benchmarks can check what a workflow costs.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from boilermaker.results_store import (
    BlobExists,
    BlobNotFound,
    LeaseConflict,
    PreconditionFailed,
    StoredBlob,
)
from boilermaker.storage_interface import StorageInterface, lease_target


@dataclass(slots=True)
class _Blob:
    data: bytes
    etag: str
    tags: dict[str, str]
    last_modified: datetime
    lease_id: str | None = None
    lease_expires: float | None = None  # monotonic; None = infinite while leased

    def active_lease(self) -> str | None:
        if self.lease_id is None:
            return None
        if self.lease_expires is not None and time.monotonic() >= self.lease_expires:
            self.lease_id = None
            self.lease_expires = None
        return self.lease_id


class InMemoryResultsStore(StorageInterface):
    """Blob-like storage in a dict (see :class:`boilermaker.results_store.ResultsStore`)."""

    def __init__(self) -> None:
        self._blobs: dict[str, _Blob] = {}
        self._etags = itertools.count(1)
        self.operations: Counter[str] = Counter()

    def _next_etag(self) -> str:
        return f'"0x{next(self._etags):016X}"'

    async def read(self, name: str) -> StoredBlob | None:
        """The blob and its ETag, or None."""
        self.operations["read"] += 1
        blob = self._blobs.get(name)
        if blob is None:
            return None
        return StoredBlob(name, blob.data, blob.etag, dict(blob.tags), blob.last_modified)

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
        """Write with optional compare-and-swap, create-only and lease conditions."""
        self.operations["write"] += 1
        blob = self._blobs.get(name)
        if create_only and blob is not None:
            raise BlobExists(f"blob {name} already exists")
        if if_match is not None:
            if blob is None:
                raise PreconditionFailed(f"blob {name} does not exist (expected ETag {if_match})")
            if blob.etag != if_match:
                raise PreconditionFailed(f"blob {name} changed since ETag {if_match}")
        if blob is not None:
            active = blob.active_lease()
            if active is not None and lease_id != active:
                raise LeaseConflict(f"blob {name} is leased; write needs the lease id")
            if active is None and lease_id is not None:
                raise LeaseConflict(f"blob {name} has no active lease {lease_id}")
        elif lease_id is not None:
            raise LeaseConflict(f"blob {name} does not exist, so it has no lease")
        etag = self._next_etag()
        new = _Blob(bytes(data), etag, dict(tags or {}), datetime.now(UTC))
        if blob is not None:
            new.lease_id, new.lease_expires = blob.lease_id, blob.lease_expires
        self._blobs[name] = new
        return etag

    async def acquire_lease(
        self, name: str, duration: float = -1, *, if_match: str | None = None
    ) -> str:
        """Lease a blob for 15-60 s, or -1 for infinite."""
        self.operations["lease"] += 1
        if duration != -1 and not 15 <= duration <= 60:
            raise ValueError("lease duration must be 15-60 seconds or -1 (infinite)")
        blob = self._blobs.get(name)
        if blob is None:
            raise BlobNotFound(name)
        if if_match is not None and blob.etag != if_match:
            raise PreconditionFailed(f"blob {name} changed since ETag {if_match}")
        if blob.active_lease() is not None:
            raise LeaseConflict(f"blob {name} is already leased")
        blob.lease_id = str(uuid.uuid4())
        blob.lease_expires = None if duration == -1 else time.monotonic() + duration
        return blob.lease_id

    async def release_lease(self, name: str, lease_id: str, lease: str | None = None) -> None:
        """Release a lease we hold (also 1.x's ``release_lease(task_id, graph_id,
        lease_id)``)."""
        name, lease_id = lease_target(name, lease_id, lease)
        self.operations["lease"] += 1
        blob = self._blobs.get(name)
        if blob is None:
            raise BlobNotFound(name)
        if blob.active_lease() not in (None, lease_id):
            raise LeaseConflict(f"lease {lease_id} is not the active lease on {name}")
        blob.lease_id = None
        blob.lease_expires = None

    async def break_lease(self, name: str) -> None:
        """End any lease at once."""
        self.operations["lease"] += 1
        blob = self._blobs.get(name)
        if blob is None:
            raise BlobNotFound(name)
        blob.lease_id = None
        blob.lease_expires = None

    async def find_by_tags(self, tags: Mapping[str, str]) -> list[str]:
        """Names of blobs whose tags include all the given pairs."""
        self.operations["find"] += 1
        return sorted(
            name
            for name, blob in self._blobs.items()
            if all(blob.tags.get(k) == v for k, v in tags.items())
        )

    async def list_names(self, prefix: str) -> list[str]:
        """Names starting with ``prefix``, sorted."""
        self.operations["list"] += 1
        return sorted(name for name in self._blobs if name.startswith(prefix))

    async def delete_many(self, names: Sequence[str]) -> None:
        """Delete blobs; missing ones are ignored."""
        self.operations["delete"] += 1
        for name in names:
            self._blobs.pop(name, None)

    async def close(self) -> None:
        """Nothing to release."""

    def total_operations(self) -> int:
        """Every operation counted so far."""
        return sum(self.operations.values())

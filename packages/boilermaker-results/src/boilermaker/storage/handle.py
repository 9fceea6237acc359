"""What both blob stores share: where they point, what they have done, and being closed.

:class:`~boilermaker.storage.BlobClientStorage` (the Azure SDK's client) and
:class:`~boilermaker.storage.reader.BlobReader` (the standard library's) each
open their own way; naming their container, counting their requests,
refusing work once closed and closing at the end of ``async with`` are the
same, and live here once. No Azure import.
"""

from __future__ import annotations

from collections import Counter
from types import TracebackType

from boilermaker.results_store import ResultsStoreError
from boilermaker.storage.failures import StorageLocation


class ContainerHandle:
    """The lifecycle part of a blob store on one container (a base class)."""

    location: StorageLocation
    #: Requests made so far, by kind (``read``, ``write``, ``list``, ...).
    operations: Counter[str]
    _closed: bool

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    @property
    def container_name(self) -> str:
        """The results container."""
        return self.location.container_name

    def total_operations(self) -> int:
        """Every request counted so far."""
        return sum(self.operations.values())

    def _check_open(self) -> None:
        if self._closed:
            raise ResultsStoreError(f"the results store for {self.location.describe()} is closed")

    async def close(self) -> None:
        """Release what the store holds; it refuses work afterwards."""
        raise NotImplementedError

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(account={self.location.account_name!r}, "
            f"container={self.container_name!r})"
        )

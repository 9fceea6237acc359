"""Azure Blob Storage results store for Boilermaker.

``from boilermaker.storage import BlobClientStorage`` (the published library's
import path): task results and task-graph state in one blob container, with
ETags, leases and index tags, behind core's ResultsStore protocol::

    store = BlobClientStorage("https://ACCOUNT.blob.core.windows.net", "results")
    app = Boilermaker(state, broker, results_storage=store)

:class:`~boilermaker.storage.reader.BlobReader` reads the same blobs without
the Azure SDK, for read-only work that must start fast (the CLI's ``inspect``).

The names below are imported when first used, so importing a submodule (such
as ``boilermaker.storage.reader``) does not import the Azure SDK.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from boilermaker.storage.blob_store import BlobClientStorage
    from boilermaker.storage.failures import (
        BlobStorageError,
        ContainerNotFound,
        StorageAccessDenied,
        StorageUnreachable,
    )
    from boilermaker.storage.reader import BlobReader, ReadOnlyStoreError
    from boilermaker.storage_interface import StorageInterface

#: Where each public name lives (imported on first use).
_HOMES = {
    "BlobClientStorage": "boilermaker.storage.blob_store",
    "BlobReader": "boilermaker.storage.reader",
    "BlobStorageError": "boilermaker.storage.failures",
    "ContainerNotFound": "boilermaker.storage.failures",
    "ReadOnlyStoreError": "boilermaker.storage.reader",
    "StorageAccessDenied": "boilermaker.storage.failures",
    "StorageInterface": "boilermaker.storage_interface",
    "StorageUnreachable": "boilermaker.storage.failures",
}

__all__ = [
    "BlobClientStorage",
    "BlobReader",
    "BlobStorageError",
    "ContainerNotFound",
    "ReadOnlyStoreError",
    "StorageAccessDenied",
    "StorageInterface",
    "StorageUnreachable",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # found once, then a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

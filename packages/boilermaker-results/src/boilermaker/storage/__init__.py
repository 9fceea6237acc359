"""Azure Blob Storage results store for Boilermaker.

``from boilermaker.storage import BlobClientStorage`` (the published library's
import path): task results and task-graph state in one blob container, with
ETags, leases and index tags, behind core's ResultsStore protocol::

    store = BlobClientStorage("https://ACCOUNT.blob.core.windows.net", "results")
    app = Boilermaker(state, broker, results_storage=store)
"""

from boilermaker.storage.blob_store import BlobClientStorage
from boilermaker.storage.errors import (
    BlobStorageError,
    ContainerNotFound,
    StorageAccessDenied,
    StorageUnreachable,
)
from boilermaker.storage_interface import StorageInterface

__all__ = [
    "BlobClientStorage",
    "BlobStorageError",
    "ContainerNotFound",
    "StorageAccessDenied",
    "StorageInterface",
    "StorageUnreachable",
]

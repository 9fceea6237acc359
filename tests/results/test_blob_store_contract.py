"""BlobClientStorage keeps the ResultsStore contract, on Azurite."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from boilermaker.storage import BlobClientStorage
from tests.contracts.results_store_contract import ResultsStoreContract


class TestBlobClientStorageContract(ResultsStoreContract):
    @pytest.fixture
    async def results_store(self, blob_store: BlobClientStorage) -> AsyncIterator[BlobClientStorage]:
        yield blob_store

"""BlobClientStorage keeps the ResultsStore contract, on Azurite."""

from __future__ import annotations

import pytest

from boilermaker.storage import BlobClientStorage
from tests.contracts.results_store_contract import ResultsStoreContract


class TestBlobClientStorageContract(ResultsStoreContract):
    @pytest.fixture
    def results_store(self, blob_store: BlobClientStorage) -> BlobClientStorage:
        return blob_store

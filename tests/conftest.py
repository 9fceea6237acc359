"""Fixtures shared across test packages. Add yours by appending; keep each one small.

``tests`` is a package so that suites can import the reusable contracts
(``from tests.contracts.broker_contract import BrokerContract``).
"""

# -- Azurite and the blob results store (boilermaker-results) --------------------------

import gc
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import pytest

from boilermaker.storage.azurite import Azurite

if TYPE_CHECKING:
    from boilermaker.storage import BlobClientStorage


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """Azurite (local Azure Blob Storage) on 127.0.0.1, a free port, in memory."""
    if not Azurite.available():
        pytest.skip(
            "Azurite is not installed (node_modules/.bin/azurite-blob is missing): "
            "run `npm ci` at the repository root"
        )
    with Azurite() as server:
        yield server


def unique_container_name(prefix: str = "test") -> str:
    """A valid container name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


@pytest.fixture
async def blob_store(azurite: Azurite) -> AsyncIterator["BlobClientStorage"]:
    """A ``BlobClientStorage`` on a fresh container in Azurite; removed afterwards."""
    from boilermaker.storage import BlobClientStorage

    store = BlobClientStorage.from_connection_string(
        azurite.connection_string, container_name=unique_container_name(), create_container=True
    )
    await store.ensure_container()
    try:
        yield store
    finally:
        if not store.closed:
            await store.container_client.delete_container()
            await store.close()


# -- leaks reported against the test that made them ------------------------------------


@pytest.fixture(autouse=True)
def _collect_leaked_sockets(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Collect garbage after each test, so a socket or transport it leaked is reported
    (as an error, warnings being errors) against it, not against whichever later test
    the collector happens to run in. The test's log records go first: one logged
    with a traceback holds the frames, and the connections, it was raised through,
    and pytest would keep it until the next test began."""
    yield
    for phase in ("setup", "call"):
        caplog.get_records(phase).clear()  # pytest's own lists, kept past teardown
    gc.collect()

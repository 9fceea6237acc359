"""The in-memory results store keeps the ResultsStore contract, plus what only it can show."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from boilermaker.memory import InMemoryResultsStore
from boilermaker.memory import results_store as memory_store
from boilermaker.results_store import BlobNotFound, LeaseConflict, ResultsStore
from tests.contracts.results_store_contract import ResultsStoreContract


class TestInMemoryResultsStore(ResultsStoreContract):
    @pytest.fixture
    async def results_store(self) -> AsyncIterator[InMemoryResultsStore]:
        store = InMemoryResultsStore()
        yield store
        await store.close()


@pytest.fixture
def store() -> InMemoryResultsStore:
    return InMemoryResultsStore()


class _Clock:
    """Stands in for the ``time`` module inside the store, so leases can expire at once."""

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    fake = _Clock()
    monkeypatch.setattr(memory_store, "time", fake)
    return fake


def test_satisfies_the_protocol(store: InMemoryResultsStore) -> None:
    assert isinstance(store, ResultsStore)


async def test_timed_lease_expires_on_its_own(store: InMemoryResultsStore, clock: _Clock) -> None:
    await store.write("b", b"1")
    lease = await store.acquire_lease("b", 15)
    clock.offset = 14.0
    with pytest.raises(LeaseConflict):
        await store.write("b", b"2")
    clock.offset = 15.5
    await store.write("b", b"2")
    # The lapsed lease id is no longer accepted.
    with pytest.raises(LeaseConflict):
        await store.write("b", b"3", lease_id=lease)
    # And someone else may lease the blob now.
    await store.acquire_lease("b", 60)


async def test_infinite_lease_never_expires(store: InMemoryResultsStore, clock: _Clock) -> None:
    await store.write("b", b"1")
    await store.acquire_lease("b", -1)
    clock.offset = 10 * 365 * 24 * 3600.0
    with pytest.raises(LeaseConflict):
        await store.write("b", b"2")


@pytest.mark.parametrize("duration", [0, 14, 61, 3600])
async def test_lease_duration_must_be_15_to_60_or_infinite(
    store: InMemoryResultsStore, duration: float
) -> None:
    await store.write("b", b"1")
    with pytest.raises(ValueError, match="15-60"):
        await store.acquire_lease("b", duration)


async def test_lease_operations_on_a_missing_blob(store: InMemoryResultsStore) -> None:
    with pytest.raises(BlobNotFound):
        await store.acquire_lease("missing", 15)
    with pytest.raises(BlobNotFound):
        await store.release_lease("missing", "lease")
    with pytest.raises(BlobNotFound):
        await store.break_lease("missing")
    with pytest.raises(LeaseConflict):
        await store.write("missing", b"x", lease_id="lease")


async def test_releasing_someone_elses_lease_is_refused(store: InMemoryResultsStore) -> None:
    await store.write("b", b"1")
    await store.acquire_lease("b", 15)
    with pytest.raises(LeaseConflict):
        await store.release_lease("b", "not-the-lease")
    with pytest.raises(LeaseConflict):
        await store.write("b", b"2")


async def test_read_returns_tags_and_last_modified(store: InMemoryResultsStore) -> None:
    await store.write("b", b"1", tags={"graph_id": "g", "status": "pending"})
    blob = await store.read("b")
    assert blob is not None
    assert dict(blob.tags) == {"graph_id": "g", "status": "pending"}
    assert blob.last_modified is not None
    await store.write("b", b"2")
    blob = await store.read("b")
    assert blob is not None
    assert dict(blob.tags) == {}


async def test_operations_are_counted(store: InMemoryResultsStore) -> None:
    await store.write("b", b"1")
    await store.read("b")
    await store.read("missing")
    lease = await store.acquire_lease("b", 15)
    await store.release_lease("b", lease)
    await store.find_by_tags({"x": "y"})
    await store.list_names("")
    await store.delete_many(["b"])
    assert dict(store.operations) == {
        "write": 1,
        "read": 2,
        "lease": 2,
        "find": 1,
        "list": 1,
        "delete": 1,
    }
    assert store.total_operations() == 8

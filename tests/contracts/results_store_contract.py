"""The ResultsStore contract: blob semantics every results store must keep.

Subclass :class:`ResultsStoreContract` in a test module and provide a
``results_store`` fixture: a :class:`boilermaker.results_store.ResultsStore`
on a fresh, empty container (closed by the fixture afterwards).

Leases are never waited out (that takes 15 s or more on real storage); the
tests break them instead. Tag queries are polled, since a real blob index
may lag a write by a moment.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping

import pytest

from boilermaker.results_store import (
    BlobExists,
    LeaseConflict,
    PreconditionFailed,
    ResultsStore,
)

#: Longest a tag query may take to reflect a write.
TAG_INDEX_DEADLINE = 15.0


async def find_eventually(
    store: ResultsStore, tags: Mapping[str, str], expected: list[str]
) -> list[str]:
    """Poll ``find_by_tags`` until it returns ``expected`` (sorted), or the deadline passes."""
    deadline = time.monotonic() + TAG_INDEX_DEADLINE
    while True:
        found = sorted(await store.find_by_tags(tags))
        if found == sorted(expected) or time.monotonic() >= deadline:
            return found
        await asyncio.sleep(0.2)


def _tag() -> str:
    """A tag value no other test (or earlier run) uses."""
    return uuid.uuid4().hex


class ResultsStoreContract:
    """Blob semantics shared by the in-memory store and the Azure Blob adapter."""

    # -- reads and writes -------------------------------------------------------------

    async def test_read_missing_is_none(self, results_store: ResultsStore) -> None:
        assert await results_store.read("task-results/nope/missing.json") is None

    async def test_write_read_round_trip_with_etag(self, results_store: ResultsStore) -> None:
        name = "task-results/g1/t1.json"
        data = '{"status": "success", "result": "✓ ünïcode"}'.encode()
        etag = await results_store.write(name, data)
        assert isinstance(etag, str)
        assert etag
        blob = await results_store.read(name)
        assert blob is not None
        assert blob.name == name
        assert blob.data == data
        assert blob.etag == etag

    async def test_etag_changes_on_every_write(self, results_store: ResultsStore) -> None:
        name = "task-results/g1/etag.json"
        etags = [await results_store.write(name, b"same") for _ in range(3)]
        assert len(set(etags)) == 3
        blob = await results_store.read(name)
        assert blob is not None
        assert blob.etag == etags[-1]

    async def test_if_match_compare_and_swap(self, results_store: ResultsStore) -> None:
        name = "task-results/g1/cas.json"
        first = await results_store.write(name, b"v1")
        second = await results_store.write(name, b"v2", if_match=first)
        assert second != first
        with pytest.raises(PreconditionFailed):
            await results_store.write(name, b"v3", if_match=first)
        blob = await results_store.read(name)
        assert blob is not None
        assert (blob.data, blob.etag) == (b"v2", second)

    async def test_create_only(self, results_store: ResultsStore) -> None:
        name = "task-results/g1/create.json"
        etag = await results_store.write(name, b"first", create_only=True)
        with pytest.raises(BlobExists):
            await results_store.write(name, b"second", create_only=True)
        blob = await results_store.read(name)
        assert blob is not None
        assert (blob.data, blob.etag) == (b"first", etag)

    # -- leases ------------------------------------------------------------------------

    @pytest.mark.parametrize("duration", [15, -1])
    async def test_lease_blocks_writes_without_its_id(
        self, results_store: ResultsStore, duration: float
    ) -> None:
        name = "task-results/g1/leased.json"
        await results_store.write(name, b"v1")
        lease = await results_store.acquire_lease(name, duration)
        assert isinstance(lease, str)
        assert lease
        with pytest.raises(LeaseConflict):
            await results_store.write(name, b"intruder")
        with pytest.raises(LeaseConflict):
            await results_store.write(name, b"intruder", lease_id=str(uuid.uuid4()))
        etag = await results_store.write(name, b"v2", lease_id=lease)
        # The lease outlives a write made under it.
        with pytest.raises(LeaseConflict):
            await results_store.write(name, b"intruder")
        with pytest.raises(LeaseConflict):
            await results_store.acquire_lease(name, duration)
        await results_store.release_lease(name, lease)
        blob = await results_store.read(name)
        assert blob is not None
        assert (blob.data, blob.etag) == (b"v2", etag)
        await results_store.write(name, b"v3")
        again = await results_store.acquire_lease(name, duration)
        await results_store.release_lease(name, again)

    async def test_break_lease_frees_the_blob_at_once(self, results_store: ResultsStore) -> None:
        name = "task-results/g1/broken.json"
        await results_store.write(name, b"v1")
        await results_store.acquire_lease(name, -1)
        await results_store.break_lease(name)
        await results_store.write(name, b"v2")
        lease = await results_store.acquire_lease(name, 15)
        await results_store.break_lease(name)
        with pytest.raises(LeaseConflict):
            await results_store.write(name, b"v3", lease_id=lease)
        await results_store.write(name, b"v3")
        blob = await results_store.read(name)
        assert blob is not None
        assert blob.data == b"v3"

    async def test_acquire_lease_guarded_by_etag(self, results_store: ResultsStore) -> None:
        name = "task-results/g1/guarded.json"
        stale = await results_store.write(name, b"v1")
        await results_store.write(name, b"v2")
        with pytest.raises(PreconditionFailed):
            await results_store.acquire_lease(name, 15, if_match=stale)
        # The failed attempt left no lease behind.
        current = await results_store.write(name, b"v3")
        lease = await results_store.acquire_lease(name, 15, if_match=current)
        await results_store.write(name, b"v4", lease_id=lease)
        await results_store.release_lease(name, lease)

    # -- tags, listing, deletion --------------------------------------------------------

    async def test_find_by_tags_matches_all_given_tags(self, results_store: ResultsStore) -> None:
        g1, g2 = _tag(), _tag()
        await results_store.write("r/a.json", b"a", tags={"graph_id": g1, "status": "success"})
        await results_store.write("r/b.json", b"b", tags={"graph_id": g1, "status": "failure"})
        await results_store.write("r/c.json", b"c", tags={"graph_id": g2, "status": "success"})
        assert await find_eventually(results_store, {"graph_id": g1}, ["r/a.json", "r/b.json"]) == [
            "r/a.json",
            "r/b.json",
        ]
        assert await find_eventually(
            results_store, {"graph_id": g1, "status": "success"}, ["r/a.json"]
        ) == ["r/a.json"]
        assert await find_eventually(results_store, {"graph_id": g2, "status": "failure"}, []) == []

    async def test_rewriting_a_blob_replaces_its_tags(self, results_store: ResultsStore) -> None:
        graph = _tag()
        name = "r/moving.json"
        await results_store.write(name, b"1", tags={"graph_id": graph, "status": "pending"})
        assert await find_eventually(
            results_store, {"graph_id": graph, "status": "pending"}, [name]
        ) == [name]
        await results_store.write(name, b"2", tags={"graph_id": graph, "status": "success"})
        assert await find_eventually(
            results_store, {"graph_id": graph, "status": "success"}, [name]
        ) == [name]
        assert (
            await find_eventually(results_store, {"graph_id": graph, "status": "pending"}, []) == []
        )

    async def test_list_names_by_prefix(self, results_store: ResultsStore) -> None:
        for name in ["task-results/g1/b.json", "task-results/g1/a.json", "task-results/g2/a.json"]:
            await results_store.write(name, b"x")
        assert await results_store.list_names("task-results/g1/") == [
            "task-results/g1/a.json",
            "task-results/g1/b.json",
        ]
        assert len(await results_store.list_names("task-results/")) == 3
        assert await results_store.list_names("nothing-here/") == []

    async def test_delete_many_ignores_missing_names(self, results_store: ResultsStore) -> None:
        for name in ["d/1.json", "d/2.json", "d/3.json"]:
            await results_store.write(name, b"x")
        await results_store.delete_many(["d/1.json", "d/missing.json", "d/3.json"])
        assert await results_store.read("d/1.json") is None
        assert await results_store.read("d/3.json") is None
        assert await results_store.list_names("d/") == ["d/2.json"]
        await results_store.delete_many([])
        await results_store.delete_many(["d/missing.json"])
        assert await results_store.list_names("d/") == ["d/2.json"]

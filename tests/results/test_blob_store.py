"""What only the Azure Blob adapter can show: errors, connections, tags, batches, on Azurite."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from azure.core.credentials import AzureNamedKeyCredential
from azure.identity import ManagedIdentityCredential

from boilermaker.results_store import BlobExists, LeaseConflict, ResultsStore, ResultsStoreError
from boilermaker.storage import (
    BlobClientStorage,
    ContainerNotFound,
    StorageAccessDenied,
    StorageUnreachable,
)
from boilermaker.storage.azurite import ACCOUNT_KEY, ACCOUNT_NAME, Azurite
from boilermaker.storage.client_options import client_options
from boilermaker.storage.credentials import include_managed_identity
from boilermaker.storage.tags import tag_filter
from tests.conftest import unique_container_name
from tests.results.counting_proxy import CountingProxy


def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- construction -----------------------------------------------------------------------


def test_is_a_results_store(blob_store: BlobClientStorage) -> None:
    assert isinstance(blob_store, ResultsStore)


async def test_account_url_constructor_with_a_key_credential(azurite: Azurite) -> None:
    container = unique_container_name()
    store = BlobClientStorage(
        azurite.blob_endpoint,
        container,
        credentials=AzureNamedKeyCredential(ACCOUNT_NAME, ACCOUNT_KEY),
        create_container=True,
    )
    async with store:
        etag = await store.write("task-results/t/t.json", b"{}")
        blob = await store.read("task-results/t/t.json")
        assert blob is not None
        assert blob.etag == etag
        await store.container_client.delete_container()
    assert store.closed


async def test_default_credential_leaves_out_managed_identity_unless_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def chain(store: BlobClientStorage) -> list[str]:
        credential = store._owned_credential
        assert credential is not None
        return [type(c).__name__ for c in credential.credentials]

    monkeypatch.delenv("AZURE_CREDENTIAL_INCLUDE_MSI", raising=False)
    store = BlobClientStorage("https://account.blob.core.windows.net", "results")
    assert ManagedIdentityCredential.__name__ not in chain(store)
    await store.close()

    monkeypatch.setenv("AZURE_CREDENTIAL_INCLUDE_MSI", "true")
    store = BlobClientStorage("https://account.blob.core.windows.net", "results")
    assert ManagedIdentityCredential.__name__ in chain(store)
    await store.close()


@pytest.mark.parametrize(
    ("value", "expected"),
    [("", False), ("0", False), ("false", False), ("1", True), ("TRUE", True), ("yes", True)],
)
def test_include_msi_values(value: str, expected: bool) -> None:
    assert include_managed_identity({"AZURE_CREDENTIAL_INCLUDE_MSI": value}) is expected


def test_include_msi_rejects_non_booleans_naming_the_variable() -> None:
    with pytest.raises(ValueError, match="AZURE_CREDENTIAL_INCLUDE_MSI"):
        include_managed_identity({"AZURE_CREDENTIAL_INCLUDE_MSI": "maybe"})


async def test_create_container_is_idempotent_and_safe_to_race(azurite: Azurite) -> None:
    container = unique_container_name()
    stores = [
        BlobClientStorage.from_connection_string(
            azurite.connection_string, container, create_container=True
        )
        for _ in range(3)
    ]
    # No explicit ensure_container(): the first operation of each creates it.
    await asyncio.gather(*(s.write(f"x/{i}.json", b"x") for i, s in enumerate(stores)))
    await stores[0].ensure_container()
    assert await stores[1].list_names("x/") == ["x/0.json", "x/1.json", "x/2.json"]
    await stores[0].container_client.delete_container()
    for store in stores:
        await store.close()


async def test_a_closed_store_refuses_work(blob_store: BlobClientStorage) -> None:
    await blob_store.close()
    await blob_store.close()  # idempotent
    with pytest.raises(ResultsStoreError, match="closed"):
        await blob_store.read("x")


# -- clear errors -----------------------------------------------------------------------


async def test_missing_container_is_named_in_the_error(azurite: Azurite) -> None:
    container = unique_container_name("missing")
    async with BlobClientStorage.from_connection_string(
        azurite.connection_string, container
    ) as store:
        for operation in (
            store.read("task-results/g/t.json"),
            store.write("task-results/g/t.json", b"{}"),
            store.list_names("task-results/"),
            store.delete_many(["task-results/g/t.json"]),
        ):
            with pytest.raises(ContainerNotFound) as caught:
                await operation
            message = str(caught.value)
            assert container in message
            assert ACCOUNT_NAME in message
            assert "create_container=True" in message


async def test_a_wrong_key_is_reported_as_access_denied(azurite: Azurite) -> None:
    wrong_key = "A" * 86 + "=="
    async with BlobClientStorage.from_connection_string(
        azurite.connection_string_with_key(wrong_key), "results"
    ) as store:
        with pytest.raises(StorageAccessDenied) as caught:
            await store.read("task-results/g/t.json")
        message = str(caught.value)
        assert ACCOUNT_NAME in message
        assert "'results'" in message
        assert "HTTP 403" in message

        with pytest.raises(StorageAccessDenied):
            await store.ensure_container()


async def test_an_unreachable_endpoint_fails_fast_with_a_clear_error(azurite: Azurite) -> None:
    port = closed_port()
    connection_string = azurite.connection_string.replace(f":{azurite.port}/", f":{port}/")
    store = BlobClientStorage.from_connection_string(
        connection_string, "results", retry_total=0, connection_timeout=2
    )
    started = time.monotonic()
    with pytest.raises(StorageUnreachable) as caught:
        await store.read("task-results/g/t.json")
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message
    assert ACCOUNT_NAME in message
    assert "'results'" in message
    await store.close()


def test_retry_settings_and_a_retry_policy_are_exclusive() -> None:
    from azure.storage.blob.aio import ExponentialRetry

    with pytest.raises(TypeError, match="retry_policy"):
        BlobClientStorage.from_connection_string(
            "DefaultEndpointsProtocol=http;AccountName=a;AccountKey=a2V5;"
            "BlobEndpoint=http://127.0.0.1:1/a;",
            "results",
            retry_policy=ExponentialRetry(),
            retry_total=0,
        )


# -- one HTTP client, reused ---------------------------------------------------------------


async def test_operations_reuse_one_connection(azurite: Azurite) -> None:
    container = unique_container_name()
    async with CountingProxy(azurite.port or 0) as proxy:
        connection_string = azurite.connection_string.replace(
            f":{azurite.port}/", f":{proxy.port}/"
        )
        store = BlobClientStorage.from_connection_string(
            connection_string, container, create_container=True
        )
        async with store:
            client = store.container_client
            for i in range(10):
                name = f"task-results/g/{i}.json"
                etag = await store.write(name, b"{}", tags={"graph_id": "g", "status": "pending"})
                assert await store.read(name) is not None
                lease = await store.acquire_lease(name, 15, if_match=etag)
                await store.write(name, b"{}", lease_id=lease)
                await store.release_lease(name, lease)
            await store.find_by_tags({"graph_id": "g"})
            await store.list_names("task-results/g/")
            await store.delete_many(await store.list_names("task-results/"))
            assert store.total_operations() >= 50
            # Sequential work: one TCP connection, kept alive and reused.
            assert proxy.connections == 1
            assert store.container_client is client

            # Concurrent work opens a pool of connections, which later work reuses.
            await asyncio.gather(*(store.write(f"c/{i}.json", b"x") for i in range(8)))
            pooled = proxy.connections
            assert pooled <= 8
            for i in range(20):
                await store.read(f"c/{i % 8}.json")
            assert proxy.connections == pooled
            await store.container_client.delete_container()


# -- operations, tags, batches ------------------------------------------------------------


async def test_operations_are_counted_by_kind(blob_store: BlobClientStorage) -> None:
    name = "task-results/g/t.json"
    etag = await blob_store.write(name, b"1")
    await blob_store.read(name)
    lease = await blob_store.acquire_lease(name, 15, if_match=etag)
    await blob_store.release_lease(name, lease)
    await blob_store.break_lease(name)
    await blob_store.find_by_tags({"graph_id": "g"})
    await blob_store.list_names("task-results/")
    await blob_store.delete_many([name])
    assert dict(blob_store.operations) == {
        "write": 1,
        "read": 1,
        "lease": 3,
        "find": 1,
        "list": 1,
        "delete": 1,
    }


async def test_read_returns_the_index_tags_without_another_request(
    blob_store: BlobClientStorage,
) -> None:
    name = "task-results/g/t.json"
    tags = {"graph_id": "g-1", "status": "success", "created_date": "2025-01-31"}
    await blob_store.write(name, b"{}", tags=tags)
    before = blob_store.operations["read"]
    blob = await blob_store.read(name)
    assert blob is not None
    assert dict(blob.tags) == tags
    assert blob.last_modified is not None
    assert blob_store.operations["read"] == before + 1
    # What read reports is what the blob index holds.
    index = await blob_store.container_client.get_blob_client(name).get_blob_tags()
    assert dict(index) == tags


async def test_read_fetches_tags_of_blobs_written_by_others(blob_store: BlobClientStorage) -> None:
    name = "task-results/g/legacy.json"
    tags = {"graph_id": "g", "status": "success"}
    await blob_store.container_client.upload_blob(name, b"{}", tags=tags)
    before = blob_store.operations["read"]
    blob = await blob_store.read(name)
    assert blob is not None
    assert dict(blob.tags) == tags
    assert blob_store.operations["read"] == before + 2


async def test_tags_azure_would_refuse_are_rejected_before_any_request(
    blob_store: BlobClientStorage,
) -> None:
    with pytest.raises(ValueError, match="tag values may only contain"):
        await blob_store.write("x.json", b"{}", tags={"status": "it's"})
    with pytest.raises(ValueError, match="at most 10"):
        await blob_store.write("x.json", b"{}", tags={f"k{i}": "v" for i in range(11)})
    assert blob_store.operations["write"] == 0
    # No blob can carry such a tag, so a query for it finds nothing.
    assert await blob_store.find_by_tags({"status": "it's"}) == []


def test_tag_filter_quotes_names_and_values() -> None:
    assert tag_filter({"status": "success", "graph_id": "g-1"}) == (
        "\"graph_id\" = 'g-1' AND \"status\" = 'success'"
    )
    assert tag_filter({'a"b': "it's"}) == "\"a\"\"b\" = 'it''s'"
    with pytest.raises(ValueError, match="at least one tag"):
        tag_filter({})


async def test_find_by_tags_with_no_tags_lists_everything(blob_store: BlobClientStorage) -> None:
    await blob_store.write("b.json", b"x", tags={"status": "x"})
    await blob_store.write("a.json", b"x")
    assert await blob_store.find_by_tags({}) == ["a.json", "b.json"]


async def test_delete_many_batches_256_blobs_per_request(blob_store: BlobClientStorage) -> None:
    names = [f"task-results/g/{i:04}.json" for i in range(300)]
    semaphore = asyncio.Semaphore(50)

    async def put(name: str) -> None:
        async with semaphore:
            await blob_store.write(name, b"x")

    await asyncio.gather(*(put(n) for n in names))
    await blob_store.delete_many([*names, "task-results/g/missing.json"])
    assert blob_store.operations["delete"] == 2
    assert await blob_store.list_names("task-results/") == []


async def test_delete_many_reports_leased_blobs_and_deletes_the_rest(
    blob_store: BlobClientStorage,
) -> None:
    for name in ("a.json", "b.json", "c.json"):
        await blob_store.write(name, b"x")
    await blob_store.acquire_lease("b.json", -1)
    with pytest.raises(LeaseConflict, match=r"b\.json"):
        await blob_store.delete_many(["a.json", "b.json", "c.json"])
    assert await blob_store.list_names("") == ["b.json"]
    await blob_store.break_lease("b.json")
    await blob_store.delete_many(["b.json"])
    assert await blob_store.list_names("") == []


async def test_lease_edge_cases_match_the_in_memory_store(blob_store: BlobClientStorage) -> None:
    # A write under a lease to a blob that does not exist: there is no such lease.
    with pytest.raises(LeaseConflict):
        await blob_store.write("new.json", b"x", lease_id="00000000-0000-0000-0000-000000000001")
    assert await blob_store.read("new.json") is None
    with pytest.raises(LeaseConflict):
        await blob_store.write(
            "new.json", b"x", create_only=True, lease_id="00000000-0000-0000-0000-000000000001"
        )
    await blob_store.write("new.json", b"x")
    with pytest.raises(BlobExists):
        await blob_store.write(
            "new.json", b"x", create_only=True, lease_id="00000000-0000-0000-0000-000000000001"
        )
    # Releasing or breaking a lease nobody holds is not an error.
    await blob_store.release_lease("new.json", "00000000-0000-0000-0000-000000000001")
    await blob_store.break_lease("new.json")
    # A lease held by someone else cannot be released with another id.
    await blob_store.acquire_lease("new.json", 15)
    with pytest.raises(LeaseConflict):
        await blob_store.release_lease("new.json", "00000000-0000-0000-0000-000000000001")
    await blob_store.break_lease("new.json")


async def test_create_only_and_if_match_cannot_be_combined(blob_store: BlobClientStorage) -> None:
    with pytest.raises(ValueError, match="create_only"):
        await blob_store.write("x.json", b"x", create_only=True, if_match='"0x1"')


def test_client_reads_proxy_settings_only_when_a_proxy_is_configured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for variable in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)
        monkeypatch.delenv(variable.lower(), raising=False)
    assert client_options({})["use_env_settings"] is False
    monkeypatch.setenv("https_proxy", "http://proxy.internal:3128")
    assert client_options({})["use_env_settings"] is True
    assert client_options({"use_env_settings": False})["use_env_settings"] is False


def test_retry_settings_adjust_the_default_policy() -> None:
    options = client_options({"retry_total": 0, "connection_timeout": 2})
    assert options["retry_policy"].total_retries == 0
    assert options["connection_timeout"] == 2
    assert client_options({})["retry_policy"].total_retries == 3


def test_a_synchronous_credential_is_refused_at_construction() -> None:
    from azure.identity import EnvironmentCredential

    with pytest.raises(TypeError, match=r"azure\.identity\.aio"):
        BlobClientStorage(
            "https://account.blob.core.windows.net", "results", credentials=EnvironmentCredential()
        )

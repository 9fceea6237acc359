"""The SDK-free ``BlobReader`` reads what ``BlobClientStorage`` wrote, on Azurite, and
answers exactly what ``BlobClientStorage`` answers; its errors are the store's errors."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from boilermaker.results_store import ResultsStore, ResultsStoreError
from boilermaker.storage import (
    BlobClientStorage,
    BlobStorageError,
    ContainerNotFound,
    StorageAccessDenied,
    StorageUnreachable,
)
from boilermaker.storage.account import BlobAccount, string_to_sign
from boilermaker.storage.azurite import ACCOUNT_KEY, ACCOUNT_NAME, Azurite
from boilermaker.storage.reader import BlobReader, ReadOnlyStoreError
from boilermaker.storage.tags import TAGS_METADATA_KEY, tags_to_metadata
from tests.conftest import unique_container_name
from tests.results.counting_proxy import CountingProxy

#: Blob names as graphs and tasks make them, and harder ones: spaces, non-ASCII,
#: and characters that mean something in a URL.
NAMES = [
    "task-results/01900000-0000-7000-8000-000000000000/graph.json",
    "task-results/g 1/t ü.json",
    "task-results/ünïcødé/∂ata 𝄞.json",
    "task-results/odd/100% ?#&+=;,'!$@~.json",
]
TAGS = {"graph_id": "g-1", "status": "success"}


def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def reader(blob_store: BlobClientStorage, azurite: Azurite) -> AsyncIterator[BlobReader]:
    """A reader on ``blob_store``'s container."""
    async with BlobReader.from_connection_string(
        azurite.connection_string, blob_store.container_name
    ) as opened:
        yield opened


# -- the same answers as BlobClientStorage ------------------------------------------------


async def test_is_a_results_store(reader: BlobReader) -> None:
    assert isinstance(reader, ResultsStore)


async def test_read_returns_what_the_sdk_store_returns(
    blob_store: BlobClientStorage, reader: BlobReader
) -> None:
    for name in NAMES:
        await blob_store.write(name, f"data of {name}".encode(), tags=TAGS)
    await blob_store.write("task-results/empty.json", b"")
    big = bytes(range(256)) * 4000  # about 1 MB: more than one read of the socket
    await blob_store.write("task-results/big.bin", big)

    for name in [*NAMES, "task-results/empty.json", "task-results/big.bin"]:
        theirs = await blob_store.read(name)
        ours = await reader.read(name)
        assert theirs is not None
        assert ours == theirs, name
        assert ours.etag.startswith('"')
        assert ours.last_modified is not None
        assert ours.last_modified.tzinfo is not None
    got = await reader.read(NAMES[1])
    assert got is not None
    assert got.data == f"data of {NAMES[1]}".encode()
    assert got.tags == TAGS
    big_read = await reader.read("task-results/big.bin")
    assert big_read is not None
    assert big_read.data == big
    # The tags come from the metadata copy: one request per read.
    assert reader.operations["read"] == len(NAMES) + 4


async def test_a_missing_blob_reads_as_none(
    blob_store: BlobClientStorage, reader: BlobReader
) -> None:
    assert await blob_store.read("task-results/nope/none.json") is None
    assert await reader.read("task-results/nope/none.json") is None
    assert await reader.read("task-results/g 1/ü missing.json") is None


@pytest.mark.parametrize("name", ["../other/x.json", "a/./b", "task-results/..", "a//b/../c"])
async def test_a_name_that_would_leave_the_container_is_refused(
    reader: BlobReader, name: str
) -> None:
    with pytest.raises(ValueError, match="segment"):
        await reader.read(name)
    assert sum(reader.operations.values()) == 0


async def test_tags_of_blobs_written_by_others_are_read_like_the_sdk_store_reads_them(
    blob_store: BlobClientStorage, reader: BlobReader
) -> None:
    client = blob_store.container_client
    # No metadata copy (written by another tool): Get Blob Tags.
    await client.upload_blob("others/tagged.json", b"1", tags={"a": "1", "b": "x y"})
    # A copy that disagrees with the tag count (tags changed since): Get Blob Tags.
    await client.upload_blob(
        "others/stale-copy.json",
        b"2",
        tags={"a": "1", "b": "2"},
        metadata=tags_to_metadata({"a": "1"}),
    )
    # No tags at all, no copy: no second request.
    await client.upload_blob("others/plain.json", b"3", metadata={"owner": "someone"})
    # A copy that cannot be read (not JSON) and no tags.
    await client.upload_blob("others/junk-copy.json", b"4", metadata={TAGS_METADATA_KEY: "%7B"})

    expected_tags = {
        "others/tagged.json": {"a": "1", "b": "x y"},
        "others/stale-copy.json": {"a": "1", "b": "2"},
        "others/plain.json": {},
        "others/junk-copy.json": {},
    }
    for name, tags in expected_tags.items():
        theirs = await blob_store.read(name)
        ours = await reader.read(name)
        assert ours == theirs, name
        assert ours is not None
        assert ours.tags == tags
    assert reader.operations["read"] == 4 + 2  # the two tagged blobs took Get Blob Tags


async def test_list_names_follows_pages_as_the_sdk_store_lists(
    blob_store: BlobClientStorage, azurite: Azurite
) -> None:
    names = [*NAMES, *(f"task-results/g/{i}.json" for i in range(7)), "other/x.json"]
    await asyncio.gather(*(blob_store.write(name, b"x") for name in names))
    async with BlobReader.from_connection_string(
        azurite.connection_string, blob_store.container_name, list_page_size=3
    ) as paged:
        everything = await paged.list_names("")
        assert paged.operations["list"] == 4  # 12 names, 3 a page
        under = await paged.list_names("task-results/g/")
        unicode_prefix = await paged.list_names("task-results/ünïcødé/")
        none = await paged.list_names("no-such-prefix/")

    assert everything == await blob_store.list_names("") == sorted(names)
    assert under == await blob_store.list_names("task-results/g/")
    assert under == [f"task-results/g/{i}.json" for i in range(7)]
    assert unicode_prefix == [NAMES[2]]
    assert none == []


async def test_find_by_tags_finds_what_the_sdk_store_finds(
    blob_store: BlobClientStorage, azurite: Azurite
) -> None:
    for i in range(5):
        await blob_store.write(f"task-results/g/{i}.json", b"x", tags={"graph_id": "g", "n": "a"})
    await blob_store.write("task-results/h/0.json", b"x", tags={"graph_id": "h", "n": "a"})
    await blob_store.write(NAMES[1], b"x", tags={"graph_id": "g", "n": "b"})
    async with BlobReader.from_connection_string(
        azurite.connection_string, blob_store.container_name
    ) as finder:
        for tags in ({"graph_id": "g"}, {"graph_id": "g", "n": "a"}, {"n": "a"}, {"n": "zz"}):
            assert await finder.find_by_tags(tags) == await blob_store.find_by_tags(tags), tags
        assert await finder.find_by_tags({"graph_id": "g"}) == sorted(
            [*(f"task-results/g/{i}.json" for i in range(5)), NAMES[1]]
        )
        # A tag Azure would refuse matches nothing, without asking; no tags lists all.
        before = finder.total_operations()
        assert await finder.find_by_tags({"bad key!": "x"}) == []
        assert finder.total_operations() == before
        assert await finder.find_by_tags({}) == await blob_store.list_names("")
    # Page by page. (Azurite cuts a page short, and ends the listing, when a blob
    # of the page does not match, with the SDK too; every blob up to the last matches here.)
    async with BlobReader.from_connection_string(
        azurite.connection_string, blob_store.container_name, list_page_size=2
    ) as paged:
        assert await paged.find_by_tags({"graph_id": "g"}) == await blob_store.find_by_tags(
            {"graph_id": "g"}
        )
        assert paged.operations["find"] >= 3


async def test_a_sas_connection_string_reads(
    blob_store: BlobClientStorage, azurite: Azurite
) -> None:
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    await blob_store.write(NAMES[1], b"with a sas", tags=TAGS)
    sas = generate_container_sas(
        ACCOUNT_NAME,
        blob_store.container_name,
        account_key=ACCOUNT_KEY,
        permission=ContainerSasPermissions(read=True, list=True, filter_by_tags=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    connection_string = f"BlobEndpoint={azurite.blob_endpoint};SharedAccessSignature={sas}"
    async with BlobReader.from_connection_string(
        connection_string, blob_store.container_name
    ) as by_sas:
        assert await by_sas.read(NAMES[1]) == await blob_store.read(NAMES[1])
        assert await by_sas.read("task-results/none.json") is None
        assert await by_sas.list_names("task-results/") == [NAMES[1]]
        assert await by_sas.find_by_tags({"graph_id": "g-1"}) == [NAMES[1]]
        assert by_sas.location.account_name == ACCOUNT_NAME
        assert "sig=" not in by_sas.location.url

    signature = sas.split("sig=", 1)[1].split("&", 1)[0]
    async with BlobReader.from_connection_string(
        f"BlobEndpoint={azurite.blob_endpoint};SharedAccessSignature={sas}",
        unique_container_name("other"),
    ) as elsewhere:
        with pytest.raises(BlobStorageError) as caught:
            await elsewhere.read("task-results/x.json")  # the SAS is for another container
    assert signature not in str(caught.value)
    assert "?***" in str(caught.value)


async def test_a_closed_reader_refuses_work(reader: BlobReader) -> None:
    await reader.close()
    await reader.close()  # idempotent
    assert reader.closed
    with pytest.raises(ResultsStoreError, match="closed"):
        await reader.read("x")


# -- read-only ----------------------------------------------------------------------------


async def test_writes_leases_and_deletes_are_refused_as_read_only(
    blob_store: BlobClientStorage, reader: BlobReader
) -> None:
    name = "task-results/g/t.json"
    etag = await blob_store.write(name, b"before", tags=TAGS)
    refused = [
        reader.write(name, b"after"),
        reader.write(name, b"after", if_match=etag),
        reader.acquire_lease(name, 15),
        reader.release_lease(name, "lease-id"),
        reader.break_lease(name),
        reader.delete_many([name]),
    ]
    for attempt in refused:
        with pytest.raises(ReadOnlyStoreError) as caught:
            await attempt
        message = str(caught.value)
        assert "read-only" in message
        assert blob_store.container_name in message
    after = await blob_store.read(name)
    assert after is not None
    assert after.data == b"before"
    assert after.etag == etag
    assert reader.total_operations() == 0  # refused before any request


# -- errors, as BlobClientStorage words them ----------------------------------------------


async def test_a_missing_container_is_named_in_the_error(azurite: Azurite) -> None:
    container = unique_container_name("missing")
    async with BlobReader.from_connection_string(azurite.connection_string, container) as missing:
        for operation in (
            missing.read("task-results/g/t.json"),
            missing.list_names("task-results/"),
            missing.find_by_tags({"graph_id": "g"}),
        ):
            with pytest.raises(ContainerNotFound) as caught:
                await operation
            message = str(caught.value)
            assert container in message
            assert ACCOUNT_NAME in message
            assert "does not exist" in message


async def test_a_wrong_key_is_access_denied_without_the_key(azurite: Azurite) -> None:
    wrong_key = "QUJD" * 21 + "QQ=="
    async with BlobReader.from_connection_string(
        azurite.connection_string_with_key(wrong_key), "results"
    ) as denied:
        with pytest.raises(StorageAccessDenied) as caught:
            await denied.read("task-results/g/t.json")
        with pytest.raises(StorageAccessDenied):
            await denied.list_names("")
    message = str(caught.value)
    assert ACCOUNT_NAME in message
    assert "'results'" in message
    assert "HTTP 403" in message
    assert "access denied" in message
    assert wrong_key not in message
    assert wrong_key[:20] not in message
    assert ACCOUNT_KEY[:20] not in message


async def test_a_refused_port_is_unreachable_after_a_few_quick_tries(azurite: Azurite) -> None:
    port = closed_port()
    connection_string = azurite.connection_string.replace(f":{azurite.port}/", f":{port}/")
    async with BlobReader.from_connection_string(connection_string, "results") as nowhere:
        started = time.monotonic()
        with pytest.raises(StorageUnreachable) as caught:
            await nowhere.read("task-results/g/t.json")
        assert time.monotonic() - started < 3
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message
    assert ACCOUNT_NAME in message
    assert "'results'" in message
    assert "ConnectionRefusedError" in message


async def test_a_silent_server_times_out_as_unreachable() -> None:
    handlers: list[asyncio.Task[None]] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        await reader.read()  # never answers; ends when the client gives up
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    account = BlobAccount(f"http://127.0.0.1:{port}/{ACCOUNT_NAME}", ACCOUNT_NAME)
    try:
        async with BlobReader(account, "results", read_timeout=0.3, attempts=2) as slow:
            started = time.monotonic()
            with pytest.raises(StorageUnreachable, match="TimeoutError"):
                await slow.read("task-results/g/t.json")
            assert time.monotonic() - started < 2
    finally:
        server.close()
        await server.wait_closed()
        await asyncio.wait_for(asyncio.gather(*handlers), 5)  # each saw the client give up
    assert len(handlers) == 2  # one connection per try


async def test_busy_answers_are_retried_then_reported(
    blob_store: BlobClientStorage, azurite: Azurite
) -> None:
    await blob_store.write(NAMES[0], b"x")
    for busy, attempts in ((2, 3), (3, 3)):
        async with CountingProxy(azurite.port or 0, busy_answers=busy) as proxy:
            connection_string = azurite.connection_string.replace(
                f":{azurite.port}/", f":{proxy.port}/"
            )
            async with BlobReader.from_connection_string(
                connection_string, blob_store.container_name, attempts=attempts
            ) as retrying:
                if busy < attempts:
                    assert await retrying.read(NAMES[0]) == await blob_store.read(NAMES[0])
                else:
                    with pytest.raises(BlobStorageError) as caught:
                        await retrying.read(NAMES[0])
                    assert "HTTP 503 ServerBusy" in str(caught.value)
                    assert blob_store.container_name in str(caught.value)
            assert proxy.connections == attempts


# -- connections --------------------------------------------------------------------------


async def test_reads_reuse_one_kept_alive_connection(
    blob_store: BlobClientStorage, azurite: Azurite
) -> None:
    for name in NAMES:
        await blob_store.write(name, b"x", tags=TAGS)
    async with CountingProxy(azurite.port or 0) as proxy:
        connection_string = azurite.connection_string.replace(
            f":{azurite.port}/", f":{proxy.port}/"
        )
        async with BlobReader.from_connection_string(
            connection_string, blob_store.container_name, list_page_size=2
        ) as reused:
            for _ in range(5):
                for name in NAMES:
                    assert await reused.read(name) is not None
                await reused.list_names("")
                await reused.find_by_tags({"graph_id": "g-1"})
            assert proxy.connections == 1
            assert reused.connections_opened == 1

            # The server closes idle connections: the next request opens another.
            proxy.drop_connections()
            await asyncio.sleep(0.05)
            assert await reused.read(NAMES[0]) is not None
            assert proxy.connections == 2

            # Concurrent reads use a few connections at most, kept for later reads.
            await asyncio.gather(*(reused.read(NAMES[i % 4]) for i in range(32)))
            pooled = proxy.connections
            assert pooled <= 2 + 4
            for name in NAMES:
                await reused.read(name)
            assert proxy.connections == pooled


# -- connection strings -------------------------------------------------------------------


KEY = "a2V5LWJ5dGVzLWZvci10ZXN0cw=="
CONNECTION_STRINGS = [
    f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={KEY};"
    "EndpointSuffix=core.windows.net",
    f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={KEY};"
    "EndpointSuffix=core.chinacloudapi.cn;",
    f"AccountName=acct;AccountKey={KEY}",
    f"accountname=acct;accountkey={KEY};defaultendpointsprotocol=http;endpointsuffix=example.org",
    f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
    f"BlobEndpoint=http://127.0.0.1:10000/{ACCOUNT_NAME};",
    "BlobEndpoint=https://acct.blob.core.windows.net/;SharedAccessSignature=?sv=2021&sig=abc",
    "BlobEndpoint=https://custom.example.com;SharedAccessSignature=sv=2021&sig=abc",
    "UseDevelopmentStorage=true",
    "UseDevelopmentStorage=true;DevelopmentStorageProxyUri=http://ignored",
]


@pytest.mark.parametrize("connection_string", CONNECTION_STRINGS)
async def test_connection_strings_point_where_the_sdk_store_points(
    connection_string: str,
) -> None:
    sdk = BlobClientStorage.from_connection_string(connection_string, "results")
    ours = BlobReader.from_connection_string(connection_string, "results")
    try:
        assert ours.location == sdk.location
        assert repr(ours.account).count(KEY) == 0
        assert "sig=abc" not in repr(ours.account)
    finally:
        await sdk.close()
        await ours.close()


def test_development_storage_is_the_local_emulator_with_its_key() -> None:
    account = BlobAccount.from_connection_string("UseDevelopmentStorage=true")
    assert account.endpoint == f"http://127.0.0.1:10000/{ACCOUNT_NAME}"
    assert account.account_name == ACCOUNT_NAME
    assert account.signs_with_shared_key
    sas = BlobAccount.from_connection_string(CONNECTION_STRINGS[5])
    assert sas.sas_token == "sv=2021&sig=abc"
    assert not sas.signs_with_shared_key


@pytest.mark.parametrize(
    ("connection_string", "problem"),
    [
        ("", "empty"),
        ("junk", "malformed"),
        (f"AccountKey={KEY};Nonsense", "part 2 is not a Key=value pair"),
        (f"AccountKey={KEY};DefaultEndpointsProtocol=https", "names no blob endpoint"),
        ("AccountName=acct;AccountKey=not*base64!", "AccountKey is not a base64"),
        ("BlobEndpoint=ftp://host/acct;AccountName=a", "is not an http(s) URL"),
        (f"BlobSecondaryEndpoint=https://x;AccountKey={KEY}", "only a secondary"),
    ],
)
def test_a_malformed_connection_string_names_the_problem_not_the_key(
    connection_string: str, problem: str
) -> None:
    with pytest.raises(ValueError, match=r"connection string|endpoint") as caught:
        BlobReader.from_connection_string(connection_string, "results")
    message = str(caught.value)
    assert problem in message
    assert KEY not in message
    assert "not*base64!" not in message


def test_the_shared_key_string_to_sign_follows_the_rest_spec() -> None:
    text = string_to_sign(
        "acct",
        "get",
        "/acct/c/a%20b",
        [("restype", "container"), ("Comp", "list"), ("include", "tags"), ("include", "meta")],
        {
            "x-ms-version": "2021-08-06",
            "X-MS-Date": "Mon, 01 Jan 2024 00:00:00 GMT",
            "Content-Length": "0",
            "Range": "bytes=0-9",
            "User-Agent": "not signed",
        },
    )
    assert text == (
        "GET\n\n\n\n\n\n\n\n\n\n\nbytes=0-9\n"
        "x-ms-date:Mon, 01 Jan 2024 00:00:00 GMT\nx-ms-version:2021-08-06\n"
        "/acct/acct/c/a%20b\ncomp:list\ninclude:meta,tags\nrestype:container"
    )


# -- no Azure SDK -------------------------------------------------------------------------


def test_importing_the_reader_imports_no_azure_sdk() -> None:
    script = textwrap.dedent(
        """
        import sys
        import boilermaker.storage.reader
        from boilermaker.storage import BlobReader, ContainerNotFound
        heavy = sorted(
            m for m in sys.modules if m.split(".")[0] in ("azure", "aiohttp", "requests")
        )
        print(heavy)
        from boilermaker.storage import BlobClientStorage
        print(BlobClientStorage.__module__, "azure.storage.blob" in sys.modules)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    heavy, store = done.stdout.splitlines()
    assert heavy == "[]"
    assert store == "boilermaker.storage.blob_store True"

"""The reader's HTTP/1.1 client on response shapes Azurite does not send (Azurite's own,
Content-Length and chunked, are covered by the reader's tests)."""

from __future__ import annotations

import asyncio

import pytest

from boilermaker.storage.http_connection import (
    HttpConnectionError,
    HttpConnections,
    proxy_configured,
)

#: What the test server answers, one entry per connection it accepts.
ANSWERS = [
    # A body that ends when the server closes the connection.
    b"HTTP/1.1 200 OK\r\nx-ms-meta-Owner: someone\r\n\r\nuntil the end",
    # An informational answer first, then a chunked body with an extension and trailers.
    b"HTTP/1.1 100 Continue\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n",
    # A truncated body.
    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort",
]


async def test_close_delimited_informational_chunked_and_truncated_answers() -> None:
    served: list[asyncio.Task[None]] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        served.append(task)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(ANSWERS[len(served) - 1])
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    connections = HttpConnections("http", "127.0.0.1", port, read_timeout=5)
    try:
        first = await connections.request("GET", "/a", [])
        second = await connections.request("GET", "/b", [])
        with pytest.raises(HttpConnectionError, match="IncompleteReadError") as caught:
            await connections.request("GET", "/c", [])
    finally:
        await connections.close()
        server.close()
        await server.wait_closed()
        await asyncio.wait_for(asyncio.gather(*served), 5)

    assert first.status == 200
    assert first.body == b"until the end"
    assert first.header("X-MS-META-OWNER") == "someone"
    assert first.headers == (("x-ms-meta-Owner", "someone"),)  # names as sent
    assert second.status == 200
    assert second.body == b"hello world"
    assert caught.value.responded
    assert connections.opened == 3  # none of these answers could keep its connection
    assert connections.host_header == f"127.0.0.1:{port}"


async def test_a_closed_client_refuses_requests() -> None:
    connections = HttpConnections("https", "example.invalid", 443)
    assert connections.host_header == "example.invalid"
    await connections.close()
    with pytest.raises(HttpConnectionError, match="closed"):
        await connections.request("GET", "/", [])


def test_proxy_variables_in_either_case_count() -> None:
    assert not proxy_configured({})
    assert not proxy_configured({"HTTPS_PROXY": ""})
    assert proxy_configured({"https_proxy": "http://proxy:3128"})
    assert proxy_configured({"ALL_PROXY": "socks5://proxy"})

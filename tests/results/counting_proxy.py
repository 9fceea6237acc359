"""A TCP relay that counts the connections made through it, to see connection reuse.

It can also drop them all (as a server does with idle keep-alive connections),
and answer the first requests itself with 503 Server Busy, as a storage
account under load does, to see clients retry.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Self

#: A storage service's answer when it is too busy to serve (HTTP 503, error code ServerBusy).
BUSY_ANSWER = (
    b"HTTP/1.1 503 The server is busy.\r\n"
    b"x-ms-error-code: ServerBusy\r\n"
    b"Content-Type: application/xml\r\n"
    b"Connection: close\r\n"
    b"Content-Length: 114\r\n\r\n"
    b'<?xml version="1.0" encoding="utf-8"?>'
    b"<Error><Code>ServerBusy</Code><Message>The server is busy.</Message></Error>"
)


class CountingProxy:
    """Relays 127.0.0.1:<port> to a target port and counts accepted connections.

    The first ``busy_answers`` connections get, for their first request, an
    HTTP 503 ``ServerBusy`` answer (and are then closed) instead of the relay.
    """

    def __init__(self, target_port: int, *, busy_answers: int = 0) -> None:
        self.target_port = target_port
        self.busy_answers = busy_answers
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._relays: set[asyncio.Task[None]] = set()
        self._clients: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        for relay in list(self._relays):
            relay.cancel()
        await asyncio.gather(*self._relays, return_exceptions=True)

    def drop_connections(self) -> None:
        """Close every relayed connection on the client's side."""
        for writer in list(self._clients):
            writer.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._clients.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self._relays.add(task)
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            if self.connections <= self.busy_answers:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(BUSY_ANSWER)
                await writer.drain()
                return
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", self.target_port
            )
            await asyncio.gather(
                self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer)
            )
        finally:
            for w in (writer, upstream_writer):
                if w is not None:
                    w.close()
                    with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                        await w.wait_closed()
            self._relays.discard(task)
            self._clients.discard(writer)

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except ConnectionError:
            pass
        finally:
            if sink.can_write_eof():
                with contextlib.suppress(OSError):
                    sink.write_eof()

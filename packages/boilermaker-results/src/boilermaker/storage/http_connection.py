"""A small HTTP/1.1 client over asyncio streams, enough for the Blob service's read calls.

:class:`HttpConnections` keeps a few keep-alive connections to one host
(plain TCP, or TLS with the system's certificate store) and sends a request
without a body on whichever is idle. Responses are read whole: a
``Content-Length`` body, a chunked one, or one that ends when the server
closes. A connection the server closed while it sat idle is replaced, and
the request sent again, without the caller noticing; any other failure to
get a response raises :class:`HttpConnectionError`.

What it does not do: request bodies, redirects, compression, proxies
(:func:`proxy_configured` says whether the environment asks for one, for a
caller to choose another client), or HTTP/2.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ssl

#: Longest status line or header line accepted (bytes).
MAX_LINE = 64 * 1024
#: Most header lines accepted in one response.
MAX_HEADERS = 200

#: The environment variables that name an HTTP proxy (each also in lower case).
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
_NO_BODY_STATUSES = frozenset({204, 304})


def proxy_configured(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment names an HTTP proxy (``HTTPS_PROXY`` and friends)."""
    env = os.environ if environ is None else environ
    return any(env.get(v) or env.get(v.lower()) for v in PROXY_VARIABLES)


class HttpConnectionError(Exception):
    """No complete response: the connection could not be made, broke, or timed out.

    The message is ``ExceptionType: what happened``; ``responded`` says
    whether any of a response had arrived.
    """

    def __init__(self, message: str, *, responded: bool = False) -> None:
        super().__init__(message)
        self.responded = responded


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A response, read whole. ``headers`` keeps each header as sent (name case included)."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case), or None."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)


class _Connection:
    """One keep-alive connection; one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.reusable = True

    @property
    def stale(self) -> bool:
        """Whether the server has already closed it."""
        return self.reader.at_eof() or self.writer.is_closing()

    async def exchange(self, request: bytes, head_only: bool) -> HttpResponse:
        self.writer.write(request)
        await self.writer.drain()
        status, reason, headers, version = await self._read_head()
        while 100 <= status < 200:  # informational: the real response follows
            status, reason, headers, version = await self._read_head()
        lowered = {name.lower(): value for name, value in headers}
        connection = lowered.get("connection", "").lower()
        if connection == "close" or (version == "HTTP/1.0" and connection != "keep-alive"):
            self.reusable = False
        if head_only or status in _NO_BODY_STATUSES:
            body = b""
        elif "chunked" in lowered.get("transfer-encoding", "").lower():
            body = await self._read_chunked()
        elif "content-length" in lowered:
            try:
                length = int(lowered["content-length"])
            except ValueError:
                raise HttpConnectionError(
                    f"ValueError: bad Content-Length {lowered['content-length']!r}",
                    responded=True,
                ) from None
            body = await self.reader.readexactly(length)
        else:
            body = await self.reader.read()
            self.reusable = False
        return HttpResponse(status, reason, tuple(headers), body)

    async def _read_line(self) -> bytes:
        line = await self.reader.readuntil(b"\n")
        return line.rstrip(b"\r\n")

    async def _read_head(self) -> tuple[int, str, list[tuple[str, str]], str]:
        first = await self.reader.readline()
        if not first:
            raise ConnectionResetError("the server closed the connection")
        version, _, rest = first.rstrip(b"\r\n").decode("latin-1").partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise ValueError(f"not an HTTP/1.x status line: {first[:80]!r}")
        headers: list[tuple[str, str]] = []
        while True:
            line = await self._read_line()
            if not line:
                break
            if len(headers) >= MAX_HEADERS:
                raise ValueError(f"more than {MAX_HEADERS} response headers")
            name, colon, value = line.partition(b":")
            if not colon:
                raise ValueError(f"malformed response header line {line[:80]!r}")
            headers.append(
                (name.strip().decode("latin-1"), value.strip().decode("utf-8", "surrogateescape"))
            )
        return int(code), reason, headers, version

    async def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size_line = await self._read_line()
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while await self._read_line():  # trailers, up to the blank line
                    pass
                return b"".join(parts)
            parts.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)  # the CRLF after each chunk

    def abort(self) -> None:
        self.reusable = False
        self.writer.transport.abort()

    async def close(self) -> None:
        self.reusable = False
        self.writer.close()
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            async with asyncio.timeout(1):
                await self.writer.wait_closed()


class HttpConnections:
    """Up to ``max_connections`` keep-alive connections to ``host``:``port``, reused.

    ``connect_timeout`` bounds making a connection (TLS handshake included),
    ``read_timeout`` each request from sending it to the last byte of the
    response. :attr:`opened` counts the connections made.
    """

    def __init__(
        self,
        scheme: str,
        host: str,
        port: int,
        *,
        max_connections: int = 4,
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
    ) -> None:
        if scheme not in ("http", "https"):
            raise ValueError(f"unsupported URL scheme {scheme!r} (http or https)")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.scheme = scheme
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.opened = 0
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        self._ssl: ssl.SSLContext | None = None
        self._closed = False

    @property
    def host_header(self) -> str:
        """The ``Host`` header: the host, and the port unless it is the scheme's default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    async def request(
        self, method: str, target: str, headers: Sequence[tuple[str, str]]
    ) -> HttpResponse:
        """Send a request without a body; the response, read whole.

        ``target`` is the path and query, already percent-encoded. Raises
        :class:`HttpConnectionError` if no complete response arrives.
        """
        if self._closed:
            raise HttpConnectionError("RuntimeError: the HTTP connections are closed")
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host_header}"]
        lines += [f"{name}: {value}" for name, value in headers]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")
        async with self._slots:
            connection = self._take_idle()
            if connection is not None:
                try:
                    return await self._exchange(connection, request, method == "HEAD")
                except HttpConnectionError as exc:
                    if exc.responded:
                        raise
                    # The server closed the idle connection as the request went out:
                    # send it again on a new one.
            connection = await self._connect()
            return await self._exchange(connection, request, method == "HEAD")

    def _take_idle(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()
            if not connection.stale:
                return connection
            self._forget(connection)
            connection.abort()
        return None

    async def _connect(self) -> _Connection:
        context: ssl.SSLContext | None = None
        if self.scheme == "https":
            if self._ssl is None:
                import ssl

                self._ssl = ssl.create_default_context()
            context = self._ssl
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(
                    self.host,
                    self.port,
                    ssl=context,
                    server_hostname=self.host if context is not None else None,
                    limit=MAX_LINE,
                )
        except TimeoutError:
            raise HttpConnectionError(
                f"TimeoutError: no connection to {self.host_header} within "
                f"{self.connect_timeout:g}s"
            ) from None
        except OSError as exc:
            raise HttpConnectionError(f"{type(exc).__name__}: {exc}") from None
        self.opened += 1
        connection = _Connection(reader, writer)
        self._open.add(connection)
        return connection

    async def _exchange(self, connection: _Connection, request: bytes, head: bool) -> HttpResponse:
        responded = False
        try:
            async with asyncio.timeout(self.read_timeout):
                response = await connection.exchange(request, head)
                responded = True
        except HttpConnectionError:
            self._drop(connection)
            raise
        except TimeoutError:
            self._drop(connection)
            raise HttpConnectionError(
                f"TimeoutError: no complete response within {self.read_timeout:g}s",
                responded=True,
            ) from None
        except (OSError, EOFError, ValueError, asyncio.LimitOverrunError) as exc:
            # IncompleteReadError is an EOFError: the response was cut short.
            self._drop(connection)
            cut_short = isinstance(exc, asyncio.IncompleteReadError | ValueError)
            raise HttpConnectionError(
                f"{type(exc).__name__}: {exc}", responded=responded or cut_short
            ) from None
        if connection.reusable and not self._closed:
            self._idle.append(connection)
        else:
            self._forget(connection)
            await connection.close()
        return response

    def _drop(self, connection: _Connection) -> None:
        self._forget(connection)
        connection.abort()

    def _forget(self, connection: _Connection) -> None:
        self._open.discard(connection)

    async def close(self) -> None:
        """Close every connection (idle or not); later requests fail."""
        self._closed = True
        self._idle.clear()
        connections, self._open = list(self._open), set()
        for connection in connections:
            await connection.close()

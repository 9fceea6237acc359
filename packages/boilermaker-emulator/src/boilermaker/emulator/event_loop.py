"""A lean single-threaded loop that drives proton's AMQP engine over sockets.

Proton's own ``Container`` wraps every engine event in Python objects and
routes it through several handler layers, which costs more CPU per message
than the SDK spends on the other end. This loop keeps proton for what it does
well (framing, SASL, sessions, links, credit, deliveries) and does the rest
directly: a ``selectors`` poll over non-blocking sockets, bytes pushed into
and pulled out of each ``Transport``, and engine events read from the
collector as integers, so only the events the server handles are ever
wrapped.

Everything runs on the thread that calls :meth:`EventLoop.run`; other
threads use :meth:`EventLoop.call_soon_threadsafe`.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import selectors
import socket
import time
from collections.abc import Callable
from typing import Any

from cproton import (  # type: ignore[import-untyped]  # proton's cffi layer ships no hints
    addressof,
    pn_collector_peek,
    pn_collector_pop,
    pn_event_type,
)
from proton import Collector, Connection, Transport

from .sasl import SaslHandshake

__all__ = ["EventLoop", "Socket"]

logger = logging.getLogger("boilermaker.emulator")

#: Handles one engine event, given the raw ``pn_event_t`` pointer.
EventHandler = Callable[[Any], None]

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE


class Socket:
    """A client socket bound to its proton transport."""

    __slots__ = ("closed", "connection", "handshake", "key", "mask", "sock", "transport")

    def __init__(
        self,
        sock: socket.socket,
        transport: Transport,
        connection: Connection,
        handshake: SaslHandshake | None,
    ) -> None:
        self.sock = sock
        self.transport = transport
        self.connection = connection
        self.handshake = handshake
        self.mask = _READ
        self.closed = False
        self.key = addressof(connection._impl)


class EventLoop:
    """Poll sockets, feed proton transports, dispatch engine events, run timers."""

    def __init__(
        self,
        handlers: dict[int, EventHandler],
        on_authenticated: Callable[[Socket, SaslHandshake], None] | None = None,
    ) -> None:
        self.handlers = handlers
        self.on_authenticated = on_authenticated
        self.collector = Collector()
        self.selector = selectors.DefaultSelector()
        self.sockets: dict[int, Socket] = {}
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.selector.register(self._wake_r, _READ, None)
        self._listeners: dict[int, Callable[[socket.socket], None]] = {}
        self._stopped = False
        self.closed = False

    # -- scheduling ---------------------------------------------------------

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop thread after ``delay`` seconds (loop thread only)."""
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._order), fn))

    def call_soon_threadsafe(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop thread as soon as possible (any thread)."""
        self._calls.put(fn)
        try:
            self._wake_w.send(b"!")
        except (BlockingIOError, OSError):
            pass

    def stop(self) -> None:
        """Make :meth:`run` return after the current iteration (loop thread only)."""
        self._stopped = True

    # -- sockets ------------------------------------------------------------------

    def listen(self, sock: socket.socket, on_accept: Callable[[socket.socket], None]) -> None:
        """Call ``on_accept(client_socket)`` for each connection accepted on ``sock``."""
        sock.setblocking(False)
        self.selector.register(sock, _READ, on_accept)
        self._listeners[sock.fileno()] = on_accept

    def close_listener(self, sock: socket.socket) -> None:
        if sock.fileno() >= 0:
            self._listeners.pop(sock.fileno(), None)
            try:
                self.selector.unregister(sock)
            except (KeyError, ValueError):
                pass
        sock.close()

    def adopt(
        self,
        sock: socket.socket,
        transport: Transport,
        connection: Connection,
        handshake: SaslHandshake | None = None,
    ) -> Socket:
        """Serve an accepted socket with a transport already bound to ``connection``.

        With a ``handshake``, the SASL layer is negotiated here first and
        proton sees the stream from the AMQP header on.
        """
        sock.setblocking(False)
        connection.collect(self.collector)
        wrapped = Socket(sock, transport, connection, handshake)
        self.sockets[wrapped.key] = wrapped
        self.selector.register(sock, _READ, wrapped)
        return wrapped

    def _close_socket(self, wrapped: Socket) -> None:
        if wrapped.closed:
            return
        wrapped.closed = True
        self.sockets.pop(wrapped.key, None)
        if wrapped.mask:
            try:
                self.selector.unregister(wrapped.sock)
            except (KeyError, ValueError):
                pass
        wrapped.sock.close()

    def release(self, connection_key: int) -> None:
        """Forget a connection whose transport has closed; closes its socket."""
        wrapped = self.sockets.get(connection_key)
        if wrapped is not None:
            self._close_socket(wrapped)
            wrapped.transport.unbind()

    def drop(self, wrapped: Socket) -> None:
        """Cut a connection at the socket, as a network failure would."""
        try:
            wrapped.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _read(self, wrapped: Socket) -> None:
        transport = wrapped.transport
        capacity = transport.capacity()
        if capacity <= 0:
            if capacity < 0:  # the engine will read no more; wait for it to close
                self._set_mask(wrapped, wrapped.mask & ~_READ)
            return
        try:
            data = wrapped.sock.recv(min(capacity, 262144))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            if wrapped.handshake is not None:
                data = self._negotiate(wrapped, data)
            if data:
                transport.push(data)
            return
        # The peer went away (often without an AMQP close): nothing more to say to it.
        transport.close_tail()
        transport.close_head()
        self._set_mask(wrapped, 0)

    def _negotiate(self, wrapped: Socket, data: bytes) -> bytes:
        """Run the SASL exchange; return the bytes that belong to proton."""
        handshake = wrapped.handshake
        assert handshake is not None
        reply, rest = handshake.feed(data)
        if reply:
            try:
                wrapped.sock.sendall(reply)
            except OSError:
                handshake.failed = True
        if handshake.failed:
            wrapped.transport.close_tail()
            wrapped.transport.close_head()
            self._set_mask(wrapped, 0)
            return b""
        if handshake.done:
            wrapped.handshake = None
            if self.on_authenticated is not None:
                self.on_authenticated(wrapped, handshake)
        return rest

    def _write(self, wrapped: Socket) -> None:
        transport = wrapped.transport
        pending = transport.pending()
        while pending > 0:
            try:
                sent = wrapped.sock.send(transport.peek(pending) or b"")
            except (BlockingIOError, InterruptedError):
                self._set_mask(wrapped, wrapped.mask | _WRITE)
                return
            except OSError:
                transport.close_head()
                transport.close_tail()
                self._set_mask(wrapped, 0)
                return
            transport.pop(sent)
            pending = transport.pending()
        if wrapped.mask & _WRITE:
            self._set_mask(wrapped, wrapped.mask & ~_WRITE)

    def _set_mask(self, wrapped: Socket, mask: int) -> None:
        if wrapped.closed or mask == wrapped.mask:
            return
        if wrapped.mask == 0:
            self.selector.register(wrapped.sock, mask, wrapped)
        elif mask == 0:
            self.selector.unregister(wrapped.sock)
        else:
            self.selector.modify(wrapped.sock, mask, wrapped)
        wrapped.mask = mask

    def flush(self) -> None:
        """Write out whatever the engine has queued on every connection."""
        for wrapped in list(self.sockets.values()):
            if wrapped.transport.pending() > 0:
                self._write(wrapped)

    def tick_transports(self) -> None:
        """Let transports send heartbeats and notice idle peers."""
        now = time.monotonic()
        for wrapped in list(self.sockets.values()):
            wrapped.transport.tick(now)

    # -- the loop ---------------------------------------------------------------------

    def _dispatch_events(self) -> None:
        collector = self.collector._impl
        handlers = self.handlers
        while True:
            event = pn_collector_peek(collector)
            if not event:
                return
            handler = handlers.get(pn_event_type(event))
            if handler is not None:
                try:
                    handler(event)
                except Exception:
                    logger.exception("error while handling an AMQP event")
            pn_collector_pop(collector)

    def _run_calls_and_timers(self) -> None:
        while True:
            try:
                fn = self._calls.get_nowait()
            except queue.Empty:
                break
            fn()
        timers = self._timers
        now = time.monotonic()
        while timers and timers[0][0] <= now:
            _, _, fn = heapq.heappop(timers)
            try:
                fn()
            except Exception:
                logger.exception("error in a scheduled emulator task")

    def run(self) -> None:
        """Serve until :meth:`stop`; then close every socket."""
        selector = self.selector
        try:
            while not self._stopped:
                self._dispatch_events()
                self.flush()
                timeout = None
                if self._timers:
                    timeout = max(0.0, self._timers[0][0] - time.monotonic())
                for key, mask in selector.select(timeout):
                    target = key.data
                    if target is None:
                        try:
                            while self._wake_r.recv(4096):
                                pass
                        except (BlockingIOError, InterruptedError):
                            pass
                    elif isinstance(target, Socket):
                        if mask & _READ:
                            self._read(target)
                        if mask & _WRITE and not target.closed:
                            self._write(target)
                    else:
                        self._accept(key.fileobj, target)  # type: ignore[arg-type]
                    self._dispatch_events()
                self._run_calls_and_timers()
        finally:
            self._close_everything()

    def _accept(self, listener: socket.socket, on_accept: Callable[[socket.socket], None]) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                logger.warning("accept failed: %s", exc)
                return
            try:
                on_accept(sock)
            except Exception:
                logger.exception("could not take over an accepted connection")
                sock.close()

    def _close_everything(self) -> None:
        # Calls that raced with the stop still get an answer (their callers wait on it).
        while True:
            try:
                fn = self._calls.get_nowait()
            except queue.Empty:
                break
            try:
                fn()
            except Exception:
                logger.exception("error in a call made while the emulator stopped")
        for wrapped in list(self.sockets.values()):
            self._close_socket(wrapped)
        for fd in list(self._listeners):
            key = self.selector.get_key(fd)
            self.close_listener(key.fileobj)  # type: ignore[arg-type]
        self.selector.close()
        self._wake_r.close()
        self._wake_w.close()
        self.closed = True

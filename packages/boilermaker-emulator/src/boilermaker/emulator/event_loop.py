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

The loop defends itself against peers that misbehave: a failing
``accept()`` pauses the listener (:mod:`~boilermaker.emulator.accept_backoff`)
instead of spinning, a transport whose input has ended gets a short grace to
flush its last frames before its socket is cut, and a socket the engine
cannot read from yet is not polled until it can.
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

from .accept_backoff import PER_CONNECTION_ERRORS, AcceptBackoff
from .sasl import SaslHandshake

__all__ = ["EventLoop", "Socket"]

logger = logging.getLogger("boilermaker.emulator")

#: Handles one engine event, given the raw ``pn_event_t`` pointer.
EventHandler = Callable[[Any], None]

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE

#: Connections taken from the backlog per wake-up, so a flood of connects
#: cannot starve the connections already served.
ACCEPTS_PER_WAKEUP = 64
#: Seconds a transport whose input has ended may take to write its last
#: frames (a close, an error) before its socket is cut.
LINGER = 2.0


class Socket:
    """A client socket bound to its proton transport."""

    __slots__ = (
        "closed",
        "connection",
        "handshake",
        "key",
        "lingering",
        "mask",
        "sock",
        "transport",
    )

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
        self.lingering = False
        self.key = addressof(connection._impl)


class EventLoop:
    """Poll sockets, feed proton transports, dispatch engine events, run timers."""

    def __init__(
        self,
        handlers: dict[int, EventHandler],
        on_authenticated: Callable[[Socket, SaslHandshake], None] | None = None,
        accept_backoff: AcceptBackoff | None = None,
    ) -> None:
        self.handlers = handlers
        self.on_authenticated = on_authenticated
        self.accept_backoff = accept_backoff or AcceptBackoff()
        #: ``accept()`` calls that failed since the loop started.
        self.accept_errors = 0
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
        self._listeners: dict[int, tuple[socket.socket, Callable[[socket.socket], None]]] = {}
        #: Sockets whose transport had no room for input; polled again once it has.
        self._stalled: set[Socket] = set()
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
        self._listeners[sock.fileno()] = (sock, on_accept)

    def close_listener(self, sock: socket.socket) -> None:
        """Stop accepting on ``sock`` and close it."""
        if sock.fileno() >= 0:
            self._listeners.pop(sock.fileno(), None)
            try:
                self.selector.unregister(sock)
            except (KeyError, ValueError):
                pass
        sock.close()

    def _pause_listener(self, listener: socket.socket, seconds: float) -> None:
        try:
            self.selector.unregister(listener)
        except (KeyError, ValueError):
            pass
        self.call_later(seconds, lambda: self._resume_listener(listener))

    def _resume_listener(self, listener: socket.socket) -> None:
        entry = self._listeners.get(listener.fileno())
        if self._stopped or entry is None or entry[0] is not listener:
            return
        try:
            self.selector.register(listener, _READ, entry[1])
        except (KeyError, ValueError):
            pass

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
        self._stalled.discard(wrapped)
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

    def abort(self, wrapped: Socket) -> None:
        """End a connection without a word: its transport closes, then its socket.

        The server hears of it as for any closed transport
        (``PN_TRANSPORT_CLOSED``), so its bookkeeping has one exit.
        """
        if wrapped.closed:
            return
        wrapped.handshake = None
        wrapped.transport.close_tail()
        wrapped.transport.close_head()
        self._set_mask(wrapped, 0)

    def linger(self, connection_key: int) -> None:
        """Cut a connection whose input has ended if it has not closed within :data:`LINGER`.

        The engine closes a transport once its last frames are written; a
        peer that stopped reading, or input the engine gave up on without a
        close to send, would otherwise hold the socket forever.
        """
        wrapped = self.sockets.get(connection_key)
        if wrapped is None or wrapped.lingering:
            return
        wrapped.lingering = True

        def cut() -> None:
            if not wrapped.closed:
                logger.debug("cutting a connection that did not close within %.1f s", LINGER)
                self.abort(wrapped)

        self.call_later(LINGER, cut)

    def _read(self, wrapped: Socket) -> None:
        transport = wrapped.transport
        capacity = transport.capacity()
        if capacity <= 0:
            self._set_mask(wrapped, wrapped.mask & ~_READ)
            if capacity < 0:  # the engine will read no more; let it flush and close
                self.linger(wrapped.key)
            else:  # no room for input yet: stop polling it until there is
                self._stalled.add(wrapped)
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

    def _resume_stalled(self) -> None:
        for wrapped in list(self._stalled):
            if wrapped.closed:
                self._stalled.discard(wrapped)
                continue
            capacity = wrapped.transport.capacity()
            if capacity != 0:
                self._stalled.discard(wrapped)
                if capacity > 0:
                    self._set_mask(wrapped, wrapped.mask | _READ)

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
                if self._stalled:
                    self._resume_stalled()
        finally:
            self._close_everything()

    def _accept(self, listener: socket.socket, on_accept: Callable[[socket.socket], None]) -> None:
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in PER_CONNECTION_ERRORS:
                    logger.debug("a connection vanished before it was accepted: %s", exc)
                    continue
                # Out of descriptors or buffers: the listener stays readable, so
                # selecting it again at once would spin. Leave it alone a while.
                self.accept_errors += 1
                self._pause_listener(listener, self.accept_backoff.failed(exc))
                return
            self.accept_backoff.succeeded()
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
        for listener, _ in list(self._listeners.values()):
            self.close_listener(listener)
        self.selector.close()
        self._wake_r.close()
        self._wake_w.close()
        self.closed = True

"""The AMQP 1.0 side of the emulator: connections, links and their events.

One :class:`AmqpServer` serves a :class:`~boilermaker.emulator.store.Namespace`
on one thread (:meth:`AmqpServer.run`), driving proton's engine through the
lean :class:`~boilermaker.emulator.event_loop.EventLoop`. Proton objects are
not thread-safe, so other threads reach the server only through
:meth:`AmqpServer.call`, which runs a function on the server thread and waits
for its result.

Connections authenticate the way Service Bus clients do: SASL ANONYMOUS,
then a CBS ``put-token`` with a SAS token verified against the namespace key
(see :mod:`~boilermaker.emulator.attach`); SASL PLAIN with the key name and
key authorizes a connection too.
"""

from __future__ import annotations

import concurrent.futures
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import cproton  # type: ignore[import-untyped]  # proton's cffi layer ships no hints
from cproton import (
    addressof,
    pn_event_connection,
    pn_event_delivery,
    pn_event_link,
)
from proton import (
    Connection,
    Delivery,
    Link,
    Sender,
    Session,
    Transport,
)

from .accept_backoff import ThrottledLog
from .attach import LinkAttacher, Peer
from .config import ConnectionLimits
from .event_loop import EventLoop, Socket
from .links import (
    QueueInbox,
    QueueOutbox,
    RefusingInbox,
    ReplyOutbox,
    RequestInbox,
    error_condition,
)
from .sasl import SaslHandshake
from .store import Entity, Namespace

__all__ = ["AmqpServer", "ConnectionStats"]

logger = logging.getLogger("boilermaker.emulator")

T = TypeVar("T")

CONTAINER_ID = "boilermaker-emulator"
#: Frame size offered to clients (the SDK proposes 1 MB); big messages take fewer frames.
MAX_FRAME_SIZE = 1_048_576
#: Connections over the cap that may be in the middle of being refused with an
#: AMQP error; a connection beyond these is closed as soon as it is accepted.
REFUSALS_IN_FLIGHT = 64
#: Seconds a refused client has to read the ``close`` before its socket is cut.
REFUSAL_GRACE = 1.0
RESOURCE_LIMIT_EXCEEDED = "amqp:resource-limit-exceeded"
_IDLE_EXPIRED = "local-idle-timeout expired"  # the engine's description of its idle close


@dataclass(frozen=True)
class ConnectionStats:
    """What the emulator did with client connections since it started."""

    #: Client connections open now (including those still in their handshake).
    open: int
    #: Client connections accepted.
    accepted: int
    #: Connections over ``max_connections``, refused.
    refused: int
    #: Sockets closed because they sent no ``open`` within the handshake time-out.
    handshake_timeouts: int
    #: Connections closed because they sent no frame within the idle time-out.
    idle_timeouts: int
    #: ``accept()`` calls that failed (out of descriptors, buffers...).
    accept_errors: int


def _bind_listener(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(256)
    except OSError:
        sock.close()
        raise
    return sock


class AmqpServer:
    """Serves a :class:`~boilermaker.emulator.store.Namespace` over AMQP on one thread."""

    def __init__(
        self,
        namespace: Namespace,
        *,
        host: str,
        port: int,
        key_name: str,
        key: str,
        accept_any_token: bool = False,
        tick_interval: float = 0.05,
        limits: ConnectionLimits | None = None,
    ) -> None:
        self.namespace = namespace
        self.limits = limits or ConnectionLimits()
        #: Sockets that have not sent their ``open`` yet, by connection key.
        self._awaiting_open: dict[int, Socket] = {}
        #: Connections accepted over the cap, to be refused when they open.
        self._over_cap: set[int] = set()
        self._cap_warning = ThrottledLog(logger, 5.0)
        self._accepted = self._refused = 0
        self._handshake_timeouts = self._idle_timeouts = 0
        self.key_name = key_name
        self.key = key
        self.accept_any_token = accept_any_token
        self.tick_interval = tick_interval
        self.peers: dict[int, Peer] = {}
        self.consumers: dict[Entity, list[QueueOutbox]] = {}
        self.links = LinkAttacher(
            namespace,
            self.consumers,
            key_name=key_name,
            key=key,
            accept_any_token=accept_any_token,
        )
        self.frame_delay = 0.0
        self._refuse_until = 0.0
        self._delayed: list[tuple[float, Callable[..., None], tuple[Any, ...]]] = []
        self._stopping = False
        self._thread_id: int | None = None
        self.loop = EventLoop(
            {
                cproton.PN_CONNECTION_REMOTE_OPEN: self._on_connection_open,
                cproton.PN_SESSION_REMOTE_OPEN: self._on_session_open,
                cproton.PN_LINK_REMOTE_OPEN: self._on_link_open,
                cproton.PN_LINK_FLOW: self._on_link_flow,
                cproton.PN_DELIVERY: self._on_delivery,
                cproton.PN_LINK_REMOTE_CLOSE: self._on_link_close,
                cproton.PN_LINK_REMOTE_DETACH: self._on_link_close,
                cproton.PN_SESSION_REMOTE_CLOSE: self._on_session_close,
                cproton.PN_CONNECTION_REMOTE_CLOSE: self._on_connection_close,
                cproton.PN_TRANSPORT_ERROR: self._on_transport_error,
                cproton.PN_TRANSPORT_TAIL_CLOSED: self._on_transport_tail_closed,
                cproton.PN_TRANSPORT_CLOSED: self._on_transport_closed,
            },
            on_authenticated=self._on_authenticated,
        )
        self._listener = _bind_listener(host, port)
        self.port: int = self._listener.getsockname()[1]
        self.loop.listen(self._listener, self._accept)
        self.loop.call_later(tick_interval, self._tick)

    # -- lifecycle -----------------------------------------------------------

    def run(self) -> None:
        """Serve until :meth:`shutdown`; call on the thread that will own the server."""
        self._thread_id = threading.get_ident()
        try:
            self.loop.run()
        finally:
            self.peers.clear()
            self.consumers.clear()
            self.namespace.journal.close()

    def shutdown(self) -> None:
        """Stop serving: close the listener and every connection (thread-safe)."""
        if self.loop.closed:
            return
        try:
            self.call(self._stop, timeout=10)
        except (RuntimeError, concurrent.futures.TimeoutError):
            pass

    def _stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._delayed.clear()
        self.namespace.journal.flush()
        self.loop.stop()

    # -- cross-thread calls ----------------------------------------------------

    def call(self, fn: Callable[[], T], timeout: float | None = 30) -> T:
        """Run ``fn`` on the server thread and return its result (re-raising its error)."""
        if threading.get_ident() == self._thread_id:
            return fn()
        if self._stopping or self.loop.closed:
            raise RuntimeError("emulator is stopping")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)
            self._flush_dirty()

        self.loop.call_soon_threadsafe(run)
        return future.result(timeout)

    def delete_queue(self, name: str) -> None:
        """Delete a queue and detach its receivers (call on the server thread)."""
        queue = self.namespace.queue(name, create=False)
        self.namespace.delete_queue(name)
        for entity in (queue.main, queue.dead_letters):
            for outbox in list(self.consumers.get(entity, ())):
                self._forget(outbox)
                outbox.link.condition = error_condition(
                    "amqp:resource-deleted", f"The messaging entity '{entity.path}' was deleted."
                )
                outbox.link.close()

    # -- fault injection (call on the server thread) ---------------------------

    def refusing(self) -> bool:
        return time.monotonic() < self._refuse_until

    def refuse_for(self, seconds: float) -> None:
        self._refuse_until = time.monotonic() + seconds

    def drop_connections(self) -> int:
        """Cut every client socket without an AMQP close; return how many were cut."""
        sockets = list(self.loop.sockets.values())
        for wrapped in sockets:
            self.loop.drop(wrapped)
        return len(sockets)

    # -- event plumbing -----------------------------------------------------------

    def _run(self, fn: Callable[..., None], *args: Any) -> None:
        """Handle an event now, or later when frames are being delayed."""
        if self.frame_delay > 0:
            self._delayed.append((time.monotonic() + self.frame_delay, fn, args))
            self.loop.call_later(self.frame_delay, self._replay_delayed)
            return
        self._invoke(fn, args)

    def _invoke(self, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
        try:
            fn(*args)
        except Exception:
            logger.exception("error while handling %s", getattr(fn, "__name__", fn))
        self._flush_dirty()

    def _replay_delayed(self) -> None:
        now = time.monotonic()
        while self._delayed and self._delayed[0][0] <= now + 0.001:
            _, fn, args = self._delayed.pop(0)
            self._invoke(fn, args)

    def _flush_dirty(self) -> None:
        dirty = self.namespace.dirty
        while dirty:
            self._dispatch(dirty.pop())

    def _dispatch(self, entity: Entity) -> None:
        """Hand ready messages of ``entity`` to its receivers with credit, round-robin."""
        outboxes = self.consumers.get(entity)
        if not outboxes:
            return
        now = time.time()
        wanting = [o for o in outboxes if o.wants]
        while wanting:
            for outbox in wanting:
                if not outbox.send_one(now):
                    for o in outboxes:
                        o.finish_drain()
                    return
            wanting = [o for o in wanting if o.wants]
        if len(outboxes) > 1:
            outboxes.append(outboxes.pop(0))

    def _tick(self) -> None:
        if self._stopping:
            return
        try:
            self.namespace.tick(time.time())
            self._flush_dirty()
            self.namespace.journal.flush()
            self.loop.tick_transports()
        except Exception:
            logger.exception("error in the emulator's periodic tick")
        self.loop.call_later(self.tick_interval, self._tick)

    # -- connections ---------------------------------------------------------------

    @property
    def connection_count(self) -> int:
        """Connections being served, not counting those being refused over the cap."""
        return len(self.loop.sockets) - len(self._over_cap)

    def stats(self) -> ConnectionStats:
        """Connection counters (call on the server thread)."""
        return ConnectionStats(
            open=len(self.loop.sockets),
            accepted=self._accepted,
            refused=self._refused,
            handshake_timeouts=self._handshake_timeouts,
            idle_timeouts=self._idle_timeouts,
            accept_errors=self.loop.accept_errors,
        )

    def _accept(self, sock: socket.socket) -> None:
        """Take over an accepted socket as a new AMQP server connection."""
        if self.refusing() or self._stopping:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
            logger.info("refused a connection (fault injection)")
            return
        limits = self.limits
        self._accepted += 1
        over_cap = self.connection_count >= limits.max_connections
        if over_cap:
            self._refused += 1
            self._cap_warning.warning(
                "refusing a connection: %d connections open (max_connections=%d)",
                self.connection_count,
                limits.max_connections,
            )
            if len(self._over_cap) >= REFUSALS_IN_FLIGHT:
                sock.close()  # too many refusals under way to explain this one too
                return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = Connection()
        transport = Transport(Transport.SERVER)
        transport.require_auth(False)
        transport.max_frame_size = MAX_FRAME_SIZE
        if limits.idle_timeout is not None:
            # The engine closes after this much silence and advertises half of it.
            transport.idle_timeout = limits.idle_timeout
        transport.bind(connection)
        handshake = SaslHandshake(self._verify_plain)
        wrapped = self.loop.adopt(sock, transport, connection, handshake)
        self.peers[wrapped.key] = Peer(wrapped.key, connection)
        self._awaiting_open[wrapped.key] = wrapped
        if over_cap:
            self._over_cap.add(wrapped.key)
        self.loop.call_later(limits.handshake_timeout, lambda: self._handshake_expired(wrapped))

    def _handshake_expired(self, wrapped: Socket) -> None:
        if wrapped.closed or self._awaiting_open.get(wrapped.key) is not wrapped:
            return
        logger.debug(
            "closing a connection that sent no open within %.1f s", self.limits.handshake_timeout
        )
        self._handshake_timeouts += 1
        self.loop.abort(wrapped)

    def _verify_plain(self, user: str, password: str) -> bool:
        return self.accept_any_token or (user == self.key_name and password == self.key)

    def _on_authenticated(self, wrapped: Socket, handshake: SaslHandshake) -> None:
        peer = self.peers.get(wrapped.key)
        if peer is not None and handshake.authorized:
            peer.authorized = True
            logger.debug("connection authenticated with SASL PLAIN as %s", handshake.user)

    def _peer(self, connection: Connection) -> Peer | None:
        return self.peers.get(addressof(connection._impl))

    def _on_connection_open(self, event: Any) -> None:
        pointer = pn_event_connection(event)
        key = addressof(pointer)
        self._awaiting_open.pop(key, None)
        connection = Connection.wrap(pointer)
        if key in self._over_cap:
            self._refuse_connection(key, connection)
            return
        self._run(self._open_connection, connection)

    def _open_connection(self, connection: Connection) -> None:
        connection.container = CONTAINER_ID
        connection.open()

    def _refuse_connection(self, key: int, connection: Connection) -> None:
        """Answer an ``open`` over the cap with a ``close`` that says why."""
        cap = self.limits.max_connections
        connection.container = CONTAINER_ID
        # The SDK reads condition, description and info of a close's error.
        connection.condition = error_condition(
            RESOURCE_LIMIT_EXCEEDED,
            f"The emulator already serves its maximum of {cap} connections"
            f" (max_connections={cap}); close a connection or raise the limit.",
        )
        connection.open()
        connection.close()
        wrapped = self.loop.sockets.get(key)
        if wrapped is not None:
            self.loop.call_later(REFUSAL_GRACE, lambda: self.loop.abort(wrapped))

    def _on_session_open(self, event: Any) -> None:
        self._run(_open_session, Session.wrap(cproton.pn_event_session(event)))

    def _on_link_open(self, event: Any) -> None:
        self._run(self._attach, Link.wrap(pn_event_link(event)))

    def _attach(self, link: Link) -> None:
        peer = self._peer(link.connection)
        if peer is not None:
            self.links.attach(link, peer)

    def _on_link_flow(self, event: Any) -> None:
        link = Link.wrap(pn_event_link(event))
        if isinstance(link, Sender):
            self._run(self._flow, link)

    def _on_delivery(self, event: Any) -> None:
        self._run(self._delivery, Delivery.wrap(pn_event_delivery(event)))

    def _on_link_close(self, event: Any) -> None:
        self._run(self._detach, Link.wrap(pn_event_link(event)))

    def _on_session_close(self, event: Any) -> None:
        self._run(_close_session, Session.wrap(cproton.pn_event_session(event)))

    def _on_connection_close(self, event: Any) -> None:
        self._run(_close_connection, Connection.wrap(pn_event_connection(event)))

    def _on_transport_error(self, event: Any) -> None:
        transport = Transport.wrap(cproton.pn_event_transport(event))
        condition = transport.condition if transport else None
        if condition is not None and condition.description == _IDLE_EXPIRED:
            self._idle_timeouts += 1
            logger.debug("closing a connection idle for %s s", self.limits.idle_timeout)
            return
        logger.debug("transport error: %s", condition)

    def _on_transport_tail_closed(self, event: Any) -> None:
        pointer = pn_event_connection(event)
        if pointer:
            self.loop.linger(addressof(pointer))

    def _on_transport_closed(self, event: Any) -> None:
        pointer = pn_event_connection(event)
        if not pointer:
            return
        key = addressof(pointer)
        self._awaiting_open.pop(key, None)
        self._over_cap.discard(key)
        peer = self.peers.pop(key, None)
        if peer is not None:
            for outbox in peer.outboxes:
                self._forget(outbox)
            peer.outboxes.clear()
            peer.replies.clear()
        self.loop.release(key)

    def _detach(self, link: Link) -> None:
        role = _role_of(link)
        if isinstance(role, QueueOutbox):
            self._forget(role)
        link.close()

    def _forget(self, outbox: QueueOutbox) -> None:
        outbox.open = False
        outboxes = self.consumers.get(outbox.entity)
        if outboxes and outbox in outboxes:
            outboxes.remove(outbox)
            if not outboxes:
                del self.consumers[outbox.entity]

    def _flow(self, link: Link) -> None:
        role = _role_of(link)
        if isinstance(role, QueueOutbox):
            now = time.time()
            while role.wants and role.send_one(now):
                pass
            role.finish_drain()
        elif isinstance(role, ReplyOutbox):
            role.flush()

    def _delivery(self, delivery: Delivery) -> None:
        link = delivery.link
        role = _role_of(link)
        now = time.time()
        if isinstance(role, QueueOutbox):
            if delivery.updated:
                role.on_disposition(delivery, now)
        elif isinstance(role, (QueueInbox, RequestInbox, RefusingInbox)):
            role.on_delivery(delivery, now)
        elif link.is_sender and delivery.settled:
            delivery.settle()


def _open_session(session: Session) -> None:
    session.open()


def _close_session(session: Session) -> None:
    session.close()


def _close_connection(connection: Connection) -> None:
    connection.close()


def _role_of(link: Link) -> Any:
    try:
        return link.role
    except AttributeError:
        return None

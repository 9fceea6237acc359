"""The AMQP 1.0 side of the emulator: connections, links and their events.

One :class:`AmqpServer` serves a :class:`~boilermaker.emulator.store.Namespace`
on one thread (:meth:`AmqpServer.run`), driving proton's engine through the
lean :class:`~boilermaker.emulator.event_loop.EventLoop`. Proton objects are
not thread-safe, so other threads reach the server only through
:meth:`AmqpServer.call`, which runs a function on the server thread and waits
for its result.

Connections authenticate the way Service Bus clients do: SASL ANONYMOUS (or
PLAIN), then a CBS ``put-token`` with a SAS token that is verified against
the namespace key. Queue and ``$management`` links of a connection without a
valid token are refused with ``amqp:unauthorized-access`` (unless any token
is accepted).
"""

from __future__ import annotations

import concurrent.futures
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

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
    Message,
    Receiver,
    Sender,
    Session,
    Transport,
)

from .event_loop import EventLoop, Socket
from .links import (
    QueueInbox,
    QueueOutbox,
    RefusingInbox,
    ReplyOutbox,
    RequestInbox,
    error_condition,
    is_receive_and_delete,
)
from .management import ManagementReply, handle_management
from .sas import TokenError, verify_sas_token
from .sasl import SaslHandshake
from .store import Entity, Namespace, QueueNotFound

__all__ = ["AmqpServer", "Peer"]

logger = logging.getLogger("boilermaker.emulator")

T = TypeVar("T")

CBS_ADDRESS = "$cbs"
MANAGEMENT_SUFFIX = "/$management"
CONTAINER_ID = "boilermaker-emulator"
NOT_FOUND = "amqp:not-found"
UNAUTHORIZED = "amqp:unauthorized-access"
#: Frame size offered to clients (the SDK proposes 1 MB); big messages take fewer frames.
MAX_FRAME_SIZE = 1_048_576


def entity_path(address: str | None) -> str:
    """The entity path of a link address: ``amqps://host:port/tasks`` -> ``tasks``."""
    if not address:
        return ""
    path = urlsplit(address).path if "://" in address else address
    return path.strip("/")


class Peer:
    """One client connection: its authorization and its links."""

    def __init__(self, key: int, connection: Connection) -> None:
        self.key = key
        self.connection = connection
        self.authorized = False
        self.replies: dict[str, ReplyOutbox] = {}
        self.outboxes: list[QueueOutbox] = []

    def reply_link(self, reply_to: str | None, fallback: str) -> ReplyOutbox | None:
        """Where a response goes: the link named by ``reply_to``, else the request's own address."""
        if reply_to and reply_to in self.replies:
            return self.replies[reply_to]
        return self.replies.get(fallback)


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
    ) -> None:
        self.namespace = namespace
        self.key_name = key_name
        self.key = key
        self.accept_any_token = accept_any_token
        self.tick_interval = tick_interval
        self.peers: dict[int, Peer] = {}
        self.consumers: dict[Entity, list[QueueOutbox]] = {}
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

    def _accept(self, sock: socket.socket) -> None:
        """Take over an accepted socket as a new AMQP server connection."""
        if self.refusing() or self._stopping:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
            logger.info("refused a connection (fault injection)")
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = Connection()
        transport = Transport(Transport.SERVER)
        transport.require_auth(False)
        transport.max_frame_size = MAX_FRAME_SIZE
        transport.bind(connection)
        handshake = SaslHandshake(self._verify_plain)
        wrapped = self.loop.adopt(sock, transport, connection, handshake)
        self.peers[wrapped.key] = Peer(wrapped.key, connection)

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
        self._run(self._open_connection, Connection.wrap(pn_event_connection(event)))

    def _open_connection(self, connection: Connection) -> None:
        connection.container = CONTAINER_ID
        connection.open()

    def _on_session_open(self, event: Any) -> None:
        self._run(_open_session, Session.wrap(cproton.pn_event_session(event)))

    def _on_link_open(self, event: Any) -> None:
        self._run(self._attach, Link.wrap(pn_event_link(event)))

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
        logger.debug("transport error: %s", transport.condition if transport else None)

    def _on_transport_closed(self, event: Any) -> None:
        pointer = pn_event_connection(event)
        if not pointer:
            return
        key = addressof(pointer)
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

    # -- links -----------------------------------------------------------------------

    def _refuse(self, link: Link, condition: str, description: str) -> None:
        """Refuse a link the way the SDK reports well (see :class:`RefusingInbox`)."""
        link.source.copy(link.remote_source)
        link.target.copy(link.remote_target)
        logger.info("refused link %r: %s", link.name, description)
        if isinstance(link, Receiver):
            link.role = RefusingInbox(link, condition, description)
            link.open()
            return
        link.open()
        link.condition = error_condition(condition, description)
        link.close()

    def _attach(self, link: Link) -> None:
        peer = self._peer(link.connection)
        if peer is None:
            return
        address = link.remote_target.address if link.is_receiver else link.remote_source.address
        path = entity_path(address)
        if path == CBS_ADDRESS or path.lower().endswith(MANAGEMENT_SUFFIX):
            self._attach_request_link(link, peer, path, address or path)
            return
        if not (peer.authorized or self.accept_any_token):
            self._refuse(link, UNAUTHORIZED, "put a valid SAS token on $cbs first")
            return
        try:
            entity = self.namespace.entity(path)
        except QueueNotFound:
            self._refuse(link, NOT_FOUND, _not_found(path))
            return
        except ValueError as exc:
            self._refuse(link, "amqp:invalid-field", str(exc))
            return
        link.source.copy(link.remote_source)
        link.target.copy(link.remote_target)
        if isinstance(link, Receiver):
            link.max_message_size = entity.queue.settings.max_message_size
            link.rcv_settle_mode = link.remote_rcv_settle_mode
            link.role = QueueInbox(link, entity)
            link.open()
            return
        assert isinstance(link, Sender)
        if _wants_session(link):
            self._refuse(link, "amqp:not-implemented", "sessions are not supported by the emulator")
            return
        receive_and_delete = is_receive_and_delete(link)
        link.snd_settle_mode = Link.SND_SETTLED if receive_and_delete else Link.SND_UNSETTLED
        link.rcv_settle_mode = link.remote_rcv_settle_mode
        outbox = QueueOutbox(link, entity, peek_lock=not receive_and_delete)
        link.role = outbox
        link.open()
        peer.outboxes.append(outbox)
        self.consumers.setdefault(entity, []).append(outbox)

    def _attach_request_link(self, link: Link, peer: Peer, path: str, address: str) -> None:
        link.source.copy(link.remote_source)
        link.target.copy(link.remote_target)
        if isinstance(link, Sender):
            outbox = ReplyOutbox(link)
            link.role = outbox
            peer.replies[address] = outbox
            if path != address:
                peer.replies.setdefault(path, outbox)
            link.open()
            return
        if path == CBS_ADDRESS:
            respond = self._cbs_responder(peer)
        elif not (peer.authorized or self.accept_any_token):
            respond = _refusal_responder(401, UNAUTHORIZED, "put a valid SAS token on $cbs first")
        else:
            entity_name = path[: -len(MANAGEMENT_SUFFIX)]
            try:
                respond = _management_responder(self.namespace.entity(entity_name))
            except QueueNotFound:
                respond = _refusal_responder(404, NOT_FOUND, _not_found(entity_name))
        assert isinstance(link, Receiver)
        link.role = RequestInbox(link, peer, address, respond)
        link.open()

    def _cbs_responder(self, peer: Peer) -> Callable[[Message, float], Message]:
        def respond(request: Message, now: float) -> Message:
            props: dict[Any, Any] = request.properties or {}
            if props.get("operation") != "put-token":
                return _cbs_reply(400, f"unsupported CBS operation {props.get('operation')!r}")
            if self.accept_any_token:
                peer.authorized = True
                return _cbs_reply(202, "Accepted")
            token = request.body
            if not isinstance(token, (str, bytes)):
                return _cbs_reply(400, "put-token body must be the token string")
            try:
                verify_sas_token(token, self.key_name, self.key, now=now)
            except TokenError as exc:
                logger.info("CBS put-token refused: %s", exc.description)
                return _cbs_reply(exc.status, exc.description)
            peer.authorized = True
            return _cbs_reply(202, "Accepted")

        return respond

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


def _cbs_reply(status: int, description: str) -> Message:
    return Message(properties={"status-code": status, "status-description": description})


def _not_found(path: str) -> str:
    return f"The messaging entity '{path}' could not be found."


def _refusal_responder(
    status: int, condition: str, description: str
) -> Callable[[Message, float], Message]:
    reply = ManagementReply.error(status, condition, description)

    def respond(request: Message, now: float) -> Message:
        return Message(body=None, properties=reply.properties())

    return respond


def _management_responder(entity: Entity) -> Callable[[Message, float], Message]:
    def respond(request: Message, now: float) -> Message:
        props: dict[Any, Any] = request.properties or {}
        reply = handle_management(entity, str(props.get("operation", "")), request.body, now)
        return Message(body=reply.body, properties=reply.properties())

    return respond


def _wants_session(link: Link) -> bool:
    """True when a receiver asks for a message session (``com.microsoft:session-filter``)."""
    data = link.remote_source.filter
    data.rewind()
    if data.next() is None:
        return False
    filters = data.get_object()
    return isinstance(filters, dict) and any("session-filter" in str(k) for k in filters)


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

"""The AMQP 1.0 side of the emulator: proton's container, connections and links.

One :class:`AmqpServer` owns a proton ``Container`` and runs it on a single
thread (:meth:`AmqpServer.run`). Proton objects are not thread-safe, so other
threads reach the server only through :meth:`AmqpServer.call`, which hands a
function to the container thread and waits for its result.

Connections authenticate the way Service Bus clients do: SASL ANONYMOUS (or
PLAIN), then a CBS ``put-token`` with a SAS token that is verified against
the namespace key. Queue and ``$management`` links on a connection without a
valid token are refused with ``amqp:unauthorized-access`` (unless any token
is accepted).
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from proton import (
    Connection,
    Delivery,
    Handler,
    Link,
    Message,
    Receiver,
    Sender,
    Session,
    Transport,
)
from proton.handlers import IOHandler
from proton.reactor import ApplicationEvent, Container, EventInjector

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
from .store import Entity, Namespace, QueueNotFound

__all__ = ["AmqpServer", "Peer"]

logger = logging.getLogger("boilermaker.emulator")

T = TypeVar("T")

CBS_ADDRESS = "$cbs"
MANAGEMENT_SUFFIX = "/$management"
CONTAINER_ID = "boilermaker-emulator"
NOT_FOUND = "amqp:not-found"
UNAUTHORIZED = "amqp:unauthorized-access"


class _QuietProtonResets(logging.Filter):
    """Drop proton's log lines about sockets a client closed without an AMQP close."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not ("Couldn't recv" in text or "Couldn't send" in text or "reset" in text.lower())


_proton_logger = logging.getLogger("proton")
if not any(isinstance(f, _QuietProtonResets) for f in _proton_logger.filters):
    _proton_logger.addFilter(_QuietProtonResets())


def entity_path(address: str | None) -> str:
    """The entity path of a link address: ``amqps://host:port/tasks`` -> ``tasks``."""
    if not address:
        return ""
    path = urlsplit(address).path if "://" in address else address
    return path.strip("/")


class Peer:
    """One client connection: its authorization and its links."""

    def __init__(self, connection: Connection, transport: Transport) -> None:
        self.connection = connection
        self.transport = transport
        self.authorized = False
        self.replies: dict[str, ReplyOutbox] = {}
        self.outboxes: list[QueueOutbox] = []

    def reply_link(self, reply_to: str | None, fallback: str) -> ReplyOutbox | None:
        """Where a response goes: the link named by ``reply_to``, else the request's own address."""
        if reply_to and reply_to in self.replies:
            return self.replies[reply_to]
        return self.replies.get(fallback)


class _Timer(Handler):
    def __init__(self, action: Callable[[], None]) -> None:
        self.action = action

    def on_timer_task(self, event: Any) -> None:
        self.action()


class _Listener:
    """Accepts TCP connections and hands them to proton; can refuse them for a while."""

    def __init__(self, server: AmqpServer, host: str, port: int) -> None:
        self.server = server
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(256)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        self.selectable: Any = None

    def register(self, container: Container) -> None:
        # The container treats a selectable's handler like its own acceptor.
        selectable: Any = container.selectable(handler=cast(Any, self), delegate=self.sock)
        selectable.reading = True
        selectable._transport = None
        container.update(selectable)
        self.selectable = selectable

    def on_selectable_readable(self, event: Any) -> None:
        while True:
            try:
                sock, address = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                logger.warning("accept failed: %s", exc)
                return
            if self.server.refusing():
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
                logger.info("refused a connection from %s (fault injection)", address[0])
                continue
            self.server.adopt(sock, address)

    def close(self) -> None:
        if self.selectable is not None and not self.selectable.is_terminal:
            self.selectable.terminate()
            self.selectable.update()
        else:
            self.sock.close()


class AmqpServer(Handler):
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
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]]
        self._calls = queue.SimpleQueue()
        self._stopping = False
        self._stop_deadline = 0.0
        self._thread_id: int | None = None
        self.container = Container(self)
        self.container.container_id = CONTAINER_ID
        self._listener = _Listener(self, host, port)
        self._listener.register(self.container)
        self._injector = EventInjector()
        self.container.selectable(self._injector)
        self._ticker = _Timer(self._tick)
        self._delay_timer = _Timer(self._replay_delayed)

    @property
    def port(self) -> int:
        return self._listener.port

    # -- lifecycle -----------------------------------------------------------

    def run(self) -> None:
        """Serve until :meth:`shutdown`; call on the thread that will own the server."""
        self._thread_id = threading.get_ident()
        try:
            self.container.run()
        finally:
            self._release_resources()

    def _release_resources(self) -> None:
        for peer in list(self.peers.values()):
            selectable = getattr(peer.transport, "_selectable", None)
            if selectable is not None:
                selectable.close()
        self.peers.clear()
        try:
            self._listener.sock.close()
        except OSError:
            pass
        for fd in self._injector.pipe:
            try:
                import os

                os.close(fd)
            except OSError:
                pass
        while not self._calls.empty():
            _, future = self._calls.get_nowait()
            future.set_exception(RuntimeError("emulator stopped"))
        self.namespace.journal.close()

    def shutdown(self) -> None:
        """Stop serving: close the listener and every connection (thread-safe)."""
        try:
            self.call(self._begin_stop, timeout=10)
        except (RuntimeError, concurrent.futures.TimeoutError):
            pass

    def _begin_stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._listener.close()
        self._drop_all()
        self._delayed.clear()
        self._injector.close()
        self._stop_deadline = time.monotonic() + 3.0
        self.namespace.journal.flush()

    # -- cross-thread calls ----------------------------------------------------

    def call(self, fn: Callable[[], T], timeout: float | None = 30) -> T:
        """Run ``fn`` on the server thread and return its result (re-raising its error)."""
        if threading.get_ident() == self._thread_id:
            return fn()
        if self._stopping:
            raise RuntimeError("emulator is stopping")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._calls.put((fn, future))
        self._injector.trigger(ApplicationEvent("emulator_call"))
        return future.result(timeout)

    def on_emulator_call(self, event: Any) -> None:
        while True:
            try:
                fn, future = self._calls.get_nowait()
            except queue.Empty:
                return
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)
            self._flush_dirty()

    # -- fault injection (call on the server thread) ---------------------------

    def refusing(self) -> bool:
        return time.monotonic() < self._refuse_until

    def refuse_for(self, seconds: float) -> None:
        self._refuse_until = time.monotonic() + seconds

    def drop_connections(self) -> int:
        """Cut every client socket without an AMQP close; return how many were cut."""
        return self._drop_all()

    def _drop_all(self) -> int:
        count = 0
        for peer in list(self.peers.values()):
            selectable = getattr(peer.transport, "_selectable", None)
            if selectable is None:
                continue
            try:
                selectable._delegate.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            count += 1
        return count

    # -- event plumbing -----------------------------------------------------------

    def _run(self, fn: Callable[..., None], *args: Any) -> None:
        """Handle an event now, or later when frames are being delayed."""
        if self.frame_delay > 0:
            due = time.monotonic() + self.frame_delay
            self._delayed.append((due, fn, args))
            self.container.schedule(self.frame_delay, self._delay_timer)
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
            # Wait (briefly) for the dropped connections to wind down, then end the loop.
            if not self.peers or time.monotonic() > self._stop_deadline:
                self.container.stop()
            else:
                self.container.schedule(self.tick_interval, self._ticker)
            return
        try:
            self.namespace.tick(time.time())
            self._flush_dirty()
            self.namespace.journal.flush()
        except Exception:
            logger.exception("error in the emulator's periodic tick")
        self.container.schedule(self.tick_interval, self._ticker)

    # -- connections ---------------------------------------------------------------

    def adopt(self, sock: socket.socket, address: Any) -> None:
        """Take over an accepted socket as a new AMQP server connection."""
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        container = self.container
        connection: Any = container.connection(self)
        # Marks the connection as accepted so proton's IO handler does not dial out.
        connection._acceptor = self._listener
        transport = Transport(Transport.SERVER)
        transport.bind(connection)
        selectable: Any = container.selectable(delegate=sock)
        selectable._transport = transport
        transport._selectable = selectable
        IOHandler.update(transport, selectable, container.now)
        logger.debug("connection from %s:%s", address[0], address[1])

    def on_reactor_init(self, event: Any) -> None:
        self.container.schedule(self.tick_interval, self._ticker)

    def on_connection_bound(self, event: Any) -> None:
        transport = event.transport
        sasl = transport.sasl()
        sasl.allow_insecure_mechs = True
        sasl.allowed_mechs("ANONYMOUS PLAIN")
        connection = event.connection
        peer = Peer(connection, transport)
        connection.peer = peer
        self.peers[id(peer)] = peer

    def on_connection_remote_open(self, event: Any) -> None:
        self._run(self._open_connection, event.connection)

    def _open_connection(self, connection: Connection) -> None:
        connection.container = CONTAINER_ID
        connection.open()

    def on_session_remote_open(self, event: Any) -> None:
        self._run(self._open_session, event.session)

    def _open_session(self, session: Session) -> None:
        session.open()

    def on_link_remote_open(self, event: Any) -> None:
        self._run(self._attach, event.link)

    def on_link_flow(self, event: Any) -> None:
        link = event.link
        if link.is_sender:
            self._run(self._flow, link)

    def on_delivery(self, event: Any) -> None:
        self._run(self._delivery, event.delivery)

    def on_link_remote_close(self, event: Any) -> None:
        self._run(self._detach, event.link)

    def on_session_remote_close(self, event: Any) -> None:
        self._run(self._close_session, event.session)

    def on_connection_remote_close(self, event: Any) -> None:
        self._run(self._close_connection, event.connection)

    def on_transport_error(self, event: Any) -> None:
        condition = event.transport.condition
        logger.debug("transport error: %s", condition)

    def on_transport_closed(self, event: Any) -> None:
        connection = event.connection
        peer = _peer_of(connection)
        if peer is None:
            return
        self.peers.pop(id(peer), None)
        for outbox in peer.outboxes:
            self._forget(outbox)
        peer.outboxes.clear()
        peer.replies.clear()

    def _close_session(self, session: Session) -> None:
        session.close()

    def _close_connection(self, connection: Connection) -> None:
        connection.close()

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
        peer = _peer_of(link.connection)
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


def _peer_of(connection: Connection | None) -> Peer | None:
    if connection is None:
        return None
    try:
        peer: Peer = connection.peer
    except AttributeError:
        return None
    return peer


def _role_of(link: Link) -> Any:
    try:
        return link.role
    except AttributeError:
        return None

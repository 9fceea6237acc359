"""What a link becomes when a client attaches it.

Service Bus clients attach four kinds of link: ``$cbs`` request/response
pairs, ``<entity>/$management`` pairs, senders to a queue and receivers from
a queue or its dead-letter sub-queue. :class:`LinkAttacher` answers each
attach (copying source and target, which the SDK requires), gives the link
its role from :mod:`~boilermaker.emulator.links`, or refuses it in the way
the SDK turns into the matching error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from proton import Connection, Link, Message, Receiver, Sender

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

__all__ = ["LinkAttacher", "Peer", "entity_path"]

logger = logging.getLogger("boilermaker.emulator")

CBS_ADDRESS = "$cbs"
MANAGEMENT_SUFFIX = "/$management"
NOT_FOUND = "amqp:not-found"
UNAUTHORIZED = "amqp:unauthorized-access"


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


class LinkAttacher:
    """Answers link attaches for a namespace with the server's credentials."""

    def __init__(
        self,
        namespace: Namespace,
        consumers: dict[Entity, list[QueueOutbox]],
        *,
        key_name: str,
        key: str,
        accept_any_token: bool,
    ) -> None:
        self.namespace = namespace
        self.consumers = consumers
        self.key_name = key_name
        self.key = key
        self.accept_any_token = accept_any_token

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

    def attach(self, link: Link, peer: Peer) -> None:
        """Open ``link`` with the role its address asks for, or refuse it."""
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

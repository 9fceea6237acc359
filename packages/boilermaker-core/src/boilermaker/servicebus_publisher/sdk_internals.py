"""Every private azure-servicebus name Boilermaker touches, in this one module.

The SDK's public API cannot do a few things the transport needs: size a
batch by what the queue accepts, pipeline settlements, see what the link
has prefetched, or open a receiver without retrying a refused credential.
The private names used for them are read here and nowhere else, each in one
place, behind small functions whose callers never see an SDK internal.

Tested against azure-servicebus 7.15.0, the workspace pin, and required as
``azure-servicebus>=7.15,<7.16`` (boilermaker-core's ``servicebus`` extra):
7.15 is the first version that waits for the service to confirm a
settlement (so a complete on a lost lock is reported, not taken for done);
7.14 settles pre-settled, without an outcome, and lacks the settlement
internals below. A new minor version is let in only once
``tests/servicebus/test_sdk_internals.py``, which fails naming the internal
that moved or changed shape, passes against it.

The internals, what each is for, and what happens without it:

Sending (``ServiceBusSender``)
  ``_max_message_size_on_link``
      The largest message the open link accepts, so a batch never exceeds
      what the queue takes (the SDK's own batch size is the tier's).
      Without it: ``max_message_size`` alone bounds batches.

Receiving (``ServiceBusReceiver``)
  ``_further_pull_receive_timeout``
      How long a receive keeps pulling after its first message (0.2 s by
      default); shortened so a receive slice does not hold settlements back.
      Without it: slices last up to 0.2 s longer.
  ``_handler._received_messages``, ``_build_received_message``
      The queue of prefetched messages, to hand them out without waiting,
      and the SDK's own way of turning one into a received message, so a
      worker takes what is buffered the moment a slot frees, without a
      receive call (the SDK's receive does the same two steps, then opens a
      tracing span and registers its auto lock renewer, neither of which
      Boilermaker uses). Without them: every receive goes through the
      receiver's driver and waits a slice when nothing is buffered.
  ``_handler._link``: ``current_link_credit``, ``flow(link_credit=)``
      The credit the link still has, and granting it again: the SDK grants
      credit only inside a receive that finds the buffer empty, so a worker
      taking from the buffer directly would wait one round trip per buffer
      load. Without them: credit is granted by the SDK's receive, as before.
  ``_running``
      False once the SDK shut the link down (lost connection), so the driver
      reopens it instead of timing out every slice. Without it: assumed open.
  ``_config.retry_total``
      Set to 0 while the receiver opens, so a refused credential or a
      missing queue fails at once (the SDK retries every error, for ~15 s);
      the caller retries transient failures itself, and every later
      operation keeps the SDK's retries. Without it: opening keeps the SDK's
      retries (slow to report a wrong key, still correct).

Reading frames (both)
  ``_handler._connection._transport``: ``read()``, ``receive_frame(timeout)``,
  with ``azure.servicebus._pyamqp._decode.decode_frame`` and ``decode_empty_frame``
      Each frame is read in the task that listens, under ``asyncio.timeout``,
      instead of ``asyncio.wait_for``, which on Python 3.11 makes a task, a
      timer and two extra event-loop turns per frame. Without them: the SDK's
      own reads.

  ``_handler.do_work_async()``
      One step of the SDK's own receive loop (grant credit if none is left, read
      and handle a frame), so the receiver's driver can wait for a message in
      steps it can end early when a settlement is queued
      (:func:`cut_reads_short` ends the read under way as its timeout would).
      Without it: the wait is the SDK's ``receive_messages``, which cannot be
      ended early.

  ``_handler._connection._transport.writer``
      The connection's stream writer: the frames of several dispositions and a
      credit grant are joined into one socket write (:class:`WriteCork`).
      Without it: a write per frame.

Pipelined settlement
  ``_await_settlement_outcome``
      True when the SDK waits for the service to confirm each settlement;
      only then are completes and abandons pipelined.
  ``_handler._link``: ``_pending_dispositions``, ``_received_delivery_tags``,
  ``_outgoing_disposition(first, last, delivery_tag, settled, state, batchable)``,
  ``_session._connection.listen(wait=)``, ``state``
      Send several dispositions, then read frames once until all their
      outcomes have arrived, instead of one round trip each.
  ``azure.servicebus._pyamqp.outcomes.Accepted``, ``.Modified``
      The disposition states of a complete and an abandon.
  ``azure.servicebus._pyamqp.receiver.check_disposition_outcome``,
  ``DEFAULT_SETTLEMENT_OUTCOME_TIMEOUT``
      The SDK's own check of an echoed outcome, and its time limit for it.
  ``azure.servicebus._pyamqp.constants.LinkState``
      Stop waiting for outcomes on a detached or failed link.
  ``azure.servicebus._pyamqp.error.AMQPException``
      What the transport raises below the public API.
  ``_settle_message_via_mgmt_link(settlement, lock_tokens)`` with
  ``azure.servicebus._common.constants.MESSAGE_MGMT_SETTLEMENT_TERM_MAP``
      Settling over the management link when no outcome came back, as the
      SDK itself does.
  ``_amqp_transport.create_servicebus_exception(logger, exc, *,
  custom_endpoint_address)`` with ``_config.custom_endpoint_address``
      The SDK's public exception for a transport-level one.
  ``ServiceBusReceivedMessage``: ``_settled``, ``_is_deferred_message``,
  ``_is_peeked_message``, ``_delivery_id``, ``_delivery_tag``,
  ``_lock_expired``
      Whether the SDK would settle the message over the link, and marking it
      settled afterwards.

  Without any of these (:data:`PIPELINING` False, or
  :meth:`DispositionLink.of` returning None): every settlement goes through
  the SDK's public calls, one after another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import time
from collections.abc import Iterator
from typing import Any, Literal

try:
    from azure.servicebus._common.constants import MESSAGE_MGMT_SETTLEMENT_TERM_MAP
    from azure.servicebus._pyamqp._decode import decode_empty_frame, decode_frame
    from azure.servicebus._pyamqp.constants import LinkState
    from azure.servicebus._pyamqp.error import AMQPException
    from azure.servicebus._pyamqp.outcomes import Accepted, Modified
    from azure.servicebus._pyamqp.receiver import (
        DEFAULT_SETTLEMENT_OUTCOME_TIMEOUT,
        check_disposition_outcome,
    )

    #: Whether the settlement internals imported (pipelined settlement is possible).
    PIPELINING = True
except ImportError:  # pragma: no cover - an SDK version without them
    PIPELINING = False

__all__ = [
    "PIPELINING",
    "SETTLEMENT_OUTCOME_TIMEOUT",
    "TRANSPORT_ERRORS",
    "DispositionLink",
    "is_running",
    "link_max_message_size",
    "prefetched_count",
    "retries_off",
    "sdk_exception",
    "settle_via_management",
    "shorten_further_pull",
]

#: What the SDK's transport raises below its public API (empty without the internals).
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (AMQPException,) if PIPELINING else ()
#: Longest wait for settlement outcomes (the SDK's own limit), in seconds.
SETTLEMENT_OUTCOME_TIMEOUT: float = (
    float(DEFAULT_SETTLEMENT_OUTCOME_TIMEOUT) if PIPELINING else 60.0
)

#: A settlement that can be pipelined.
Settlement = Literal["complete", "abandon"]
#: The outcome the service echoes for each.
_ECHOED: dict[str, str] = {"complete": "accepted", "abandon": "modified"}


# -- sending --------------------------------------------------------------------------------


def link_max_message_size(sender: Any) -> int:
    """The largest message an open sender's link accepts (bytes), or 0 when unknown."""
    try:
        return int(getattr(sender, "_max_message_size_on_link", 0) or 0)
    except (TypeError, ValueError):
        return 0


# -- receiving ------------------------------------------------------------------------------


def shorten_further_pull(receiver: Any, seconds: float) -> bool:
    """Make a receive stop pulling ``seconds`` after its first message; False if the
    SDK has no such setting."""
    if not hasattr(receiver, "_further_pull_receive_timeout"):
        return False
    receiver._further_pull_receive_timeout = seconds
    return True


def prefetched_count(receiver: Any) -> int:
    """How many prefetched messages the receiver holds, ready to hand out (0 if unknown)."""
    handler = getattr(receiver, "_handler", None)
    buffered = getattr(handler, "_received_messages", None)
    try:
        return int(buffered.qsize()) if buffered is not None else 0
    except (AttributeError, TypeError):
        return 0


def take_prefetched(receiver: Any, max_messages: int) -> list[Any]:
    """Up to ``max_messages`` prefetched messages, built as the SDK's receive builds
    them, without a receive call: no socket read, no suspension ([] when none are
    buffered or the SDK keeps them elsewhere)."""
    handler = getattr(receiver, "_handler", None)
    buffered = getattr(handler, "_received_messages", None)
    build = getattr(receiver, "_build_received_message", None)
    if buffered is None or build is None or not getattr(receiver, "_running", False):
        return []
    taken: list[Any] = []
    try:
        while len(taken) < max_messages and not buffered.empty():
            taken.append(build(buffered.get_nowait()))
            buffered.task_done()
    except (AttributeError, TypeError, queue.Empty):
        pass
    return taken


async def top_up_credit(receiver: Any, prefetch: int) -> bool:
    """Grant the link credit again once what is buffered plus what is still granted
    falls to half of ``prefetch``, so prefetched messages keep coming without waiting
    for a receive call to find the buffer empty; True if a grant went out."""
    link: Any = getattr(getattr(receiver, "_handler", None), "_link", None)
    credit = getattr(link, "current_link_credit", None)
    if link is None or not isinstance(credit, int) or prefetch < 1:
        return False
    buffered = prefetched_count(receiver)
    if credit + buffered > prefetch // 2:
        return False
    await link.flow(link_credit=prefetch + 1 - buffered)
    return True


def is_running(receiver: Any) -> bool:
    """False once the SDK has shut the receiver's link down (True if it cannot tell)."""
    return bool(getattr(receiver, "_running", True))


@contextlib.contextmanager
def retries_off(handler: Any) -> Iterator[bool]:
    """Within the block, the SDK handler (a receiver) tries each operation once.

    Yields whether that took effect. The handler's own retry count is restored
    afterwards, so only what runs inside the block (opening) goes unretried.
    """
    config = getattr(handler, "_config", None)
    saved = getattr(config, "retry_total", None)
    if not isinstance(saved, int):
        yield False
        return
    config.retry_total = 0  # type: ignore[union-attr]
    try:
        yield True
    finally:
        config.retry_total = saved  # type: ignore[union-attr]


def sdk_exception(receiver: Any, exc: BaseException, logger: logging.Logger) -> BaseException:
    """The SDK's public exception for a transport-level one (as its public calls raise);
    anything else unchanged."""
    if not PIPELINING or not isinstance(exc, AMQPException):
        return exc
    try:
        converted: BaseException = receiver._amqp_transport.create_servicebus_exception(
            logger, exc, custom_endpoint_address=receiver._config.custom_endpoint_address
        )
    except Exception:  # the conversion itself failed; keep the original
        return exc
    return converted


async def settle_via_management(receiver: Any, message: Any, kind: Settlement) -> None:
    """Complete or abandon ``message`` over the management link (by lock token), then
    mark it settled: the SDK's own fallback when a link disposition went unconfirmed."""
    await receiver._settle_message_via_mgmt_link(
        MESSAGE_MGMT_SETTLEMENT_TERM_MAP[kind], [message.lock_token]
    )
    mark_settled(message)


def mark_settled(message: Any) -> None:
    """Tell the SDK message it is settled (its public calls then refuse to settle it again)."""
    message._settled = True


class DispositionLink:
    """A receive link on which several completes and abandons go out before their
    outcomes are read back (one wait for all instead of one round trip each)."""

    #: The link attributes pipelining needs.
    NEEDED = ("_pending_dispositions", "_outgoing_disposition", "_received_delivery_tags")

    def __init__(self, receiver: Any, link: Any) -> None:
        self._receiver = receiver
        self._link = link

    @classmethod
    def of(cls, receiver: Any) -> DispositionLink | None:
        """The receiver's link, if its settlements can be pipelined; else None."""
        if not PIPELINING or not getattr(receiver, "_await_settlement_outcome", False):
            return None
        link = getattr(getattr(receiver, "_handler", None), "_link", None)
        if link is None or not all(hasattr(link, name) for name in cls.NEEDED):
            return None
        return cls(receiver, link)

    def can_settle(self, message: Any) -> bool:
        """Whether the SDK would settle ``message`` over this link without complaint."""
        try:
            return bool(
                message is not None
                and getattr(self._receiver, "_running", False)
                and not message._settled
                and not message._is_deferred_message
                and not message._is_peeked_message
                and message._delivery_id is not None
                and message._delivery_tag in self._link._received_delivery_tags
                and not message._lock_expired
            )
        except (AttributeError, TypeError):
            return False

    async def send(self, message: Any, kind: Settlement) -> int:
        """Send the disposition without waiting for its outcome; returns its delivery id.

        Raises what the link raises (see :data:`TRANSPORT_ERRORS`), with nothing
        left pending.
        """
        state = (
            Accepted()
            if kind == "complete"
            else Modified(delivery_failed=True, undeliverable_here=False, message_annotations=None)
        )
        delivery_id: int = message._delivery_id
        pending = self._link._pending_dispositions
        pending[delivery_id] = {"settled": False, "outcome": None}
        try:
            await self._link._outgoing_disposition(
                delivery_id, None, message._delivery_tag, False, state, None
            )
        except BaseException:
            pending.pop(delivery_id, None)
            raise
        return delivery_id

    async def await_outcomes(
        self,
        delivery_ids: list[int],
        errors: tuple[type[BaseException], ...],
        logger: logging.Logger,
    ) -> None:
        """Read frames until every outcome arrived, the link failed, or time ran out."""
        pending = self._link._pending_dispositions
        connection = self._link._session._connection
        deadline = time.monotonic() + SETTLEMENT_OUTCOME_TIMEOUT
        while not all(pending[i]["settled"] for i in delivery_ids if i in pending):
            if time.monotonic() >= deadline or self._link.state in (
                LinkState.DETACHED,
                LinkState.ERROR,
            ):
                return
            try:
                await connection.listen(wait=False)
            except errors as exc:
                logger.debug("waiting for settlement outcomes: %s", exc)
                return

    def confirmed(self, delivery_id: int, kind: Settlement) -> bool:
        """Whether the service confirmed the disposition (forgetting it either way).

        False when no outcome came back (settle by lock token instead); raises
        :data:`TRANSPORT_ERRORS` when the outcome is not the one requested (a
        lost lock, say).
        """
        entry = self._link._pending_dispositions.pop(delivery_id, None)
        if entry is None or not entry["settled"]:
            return False
        check_disposition_outcome(delivery_id, entry["outcome"], _ECHOED[kind])
        return True


# -- opening and closing links --------------------------------------------------------------

#: Readiness checks made back to back per check the SDK asks for. Each check reads
#: at most one frame (waiting up to the link's socket timeout for it), so this
#: bounds how long one call can take; the SDK's own deadline still applies.
READY_CHECKS = 16


def read_handshake_back_to_back(handler: Any) -> bool:
    """Make opening ``handler`` (an SDK sender or receiver) read its handshake frames
    as they arrive; False if the SDK has no such hook.

    The SDK opens a link by checking readiness, which reads one frame, then
    sleeping 50 ms before the next check: a connection, session, CBS and link
    handshake of 8-10 frames costs about half a second on any network. Here each
    handler the SDK creates for this sender or receiver (again after a reconnect)
    checks readiness up to :data:`READY_CHECKS` times per call, so the frames are
    read back to back. Nothing else about opening changes.
    """
    create = getattr(handler, "_create_handler", None)
    if create is None or getattr(create, "_reads_back_to_back", False):
        return create is not None

    def create_handler(*args: Any, **kwargs: Any) -> Any:
        created = create(*args, **kwargs)
        amqp: Any = getattr(handler, "_handler", None)
        ready = getattr(amqp, "client_ready_async", None)
        if ready is not None:

            async def ready_back_to_back() -> bool:
                read_frames_inline(amqp)
                for _ in range(READY_CHECKS):
                    if await ready():
                        return True
                return False

            amqp.client_ready_async = ready_back_to_back
        return created

    create_handler._reads_back_to_back = True  # type: ignore[attr-defined]
    handler._create_handler = create_handler
    return True


def read_frames_inline(amqp: Any) -> bool:
    """Make the connection of ``amqp`` (the SDK's AMQP client of a sender or receiver)
    read each frame in the task that asks for it; False if it has no such transport.

    The SDK reads a frame with ``asyncio.wait_for(transport.read(), timeout)``,
    which on Python 3.11 runs every read as a task of its own, with a timer, a
    waiter and two extra turns of the event loop, even when the frame is already
    in the buffer. Here the same read runs under ``asyncio.timeout`` (as
    ``wait_for`` itself does from Python 3.12): a read that times out is
    cancelled at the same point, the transport keeps what it had read, and the
    caller gets ``(None, None)`` as before. Nothing else about reading changes.
    """
    connection = getattr(amqp, "_connection", None)
    transport: Any = getattr(connection, "_transport", None)
    read = getattr(transport, "read", None)
    if read is None or not hasattr(transport, "receive_frame"):
        return False
    if getattr(transport.receive_frame, "_inline", False):
        return True

    reading: set[asyncio.Timeout] = set()

    async def receive_frame(timeout: float | None = None, **kwargs: Any) -> tuple[Any, Any]:
        try:
            async with asyncio.timeout(timeout) as waiting:
                reading.add(waiting)
                try:
                    header, channel, payload = await read(**kwargs)
                finally:
                    reading.discard(waiting)
            return channel, decode_frame(payload) if payload else decode_empty_frame(header)
        except (TimeoutError, asyncio.IncompleteReadError):
            return None, None

    def cut_short() -> None:
        now = asyncio.get_running_loop().time()
        for waiting in list(reading):
            with contextlib.suppress(RuntimeError):  # already expiring
                if not waiting.expired():
                    waiting.reschedule(now)

    receive_frame._inline = True  # type: ignore[attr-defined]
    receive_frame._cut_short = cut_short  # type: ignore[attr-defined]
    transport.receive_frame = receive_frame
    return True


def cut_reads_short(handler: Any) -> bool:
    """End the frame reads now waiting on the connection of ``handler`` (an SDK sender
    or receiver) as if their time were up; False if its frames are not read inline.

    A read so ended is the SDK's own read timing out: it keeps what it had read of
    a frame, and its caller gets no frame, as after any quiet socket timeout.
    """
    connection = getattr(getattr(handler, "_handler", None), "_connection", None)
    receive_frame = getattr(getattr(connection, "_transport", None), "receive_frame", None)
    cut_short = getattr(receive_frame, "_cut_short", None)
    if cut_short is None:
        return False
    cut_short()
    return True


async def pump_once(handler: Any) -> bool:
    """One turn of the SDK receiver ``handler``'s AMQP client: read and handle at most
    one frame, waiting up to its socket timeout (what each step of the SDK's receive
    does); False once the client has shut down or there is no such client."""
    amqp: Any = getattr(handler, "_handler", None)
    work = getattr(amqp, "do_work_async", None)
    if work is None:
        return False
    return bool(await work())


class WriteCork:
    """Frames the SDK writes within the block leave in one socket write, at its end.

    ``with WriteCork(receiver) as cork:`` around calls that only send (dispositions,
    credit): each would be a write, and a system call, of its own. Nothing may wait
    for the peer inside the block, which would wait for frames not yet sent: call
    :meth:`flush` first. The SDK still drains after each of its writes, so a lost
    connection is reported where it was before. Without a stream transport (web
    sockets) the block changes nothing.
    """

    def __init__(self, handler: Any) -> None:
        connection = getattr(getattr(handler, "_handler", None), "_connection", None)
        writer = getattr(getattr(connection, "_transport", None), "writer", None)
        self._writer: Any = writer if callable(getattr(writer, "write", None)) else None
        self._chunks: list[bytes] = []
        self._write: Any = None

    def __enter__(self) -> WriteCork:
        if self._writer is not None and "write" not in vars(self._writer):
            self._write = self._writer.write
            self._writer.write = self._chunks.append
        return self

    def flush(self) -> None:
        """Write what was collected so far."""
        if self._chunks:
            data = b"".join(self._chunks)
            self._chunks.clear()
            self._write(data)

    def __exit__(self, *exc_info: object) -> None:
        if self._write is not None:
            del self._writer.write
            self.flush()
            self._write = None


async def stop_keep_alive(handler: Any) -> None:
    """Stop the keep-alive task of ``handler`` (an SDK sender or receiver) before it closes.

    The task wakes once a second, and the SDK's close waits for it to wake: every
    close costs up to a second (half on average) for nothing. The task only
    pings an idle connection, which is about to close anyway.
    """
    amqp: Any = getattr(handler, "_handler", None)
    task = getattr(amqp, "_keep_alive_thread", None)
    if not isinstance(task, asyncio.Future) or task.done():
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    amqp._keep_alive_thread = None

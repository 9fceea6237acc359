"""A peek-lock receiver whose SDK link is driven by one coroutine.

Concurrent operations on one azure-servicebus receiver wait on each other's
socket reads and serialise badly (20 concurrent completes ran ~20x slower
than the same completes one after another). The worker engine settles from
many coroutines at once, so every operation here is queued and one driver
coroutine performs them in order on the link. Receives are done in short
slices, and an operation queued while the driver waits on an empty link ends
the wait (the frame read under way ends as its timeout would), so
settlements queued meanwhile go out at once; messages already
prefetched are handed out without waiting at all, and a worker takes them
straight from the buffer (:meth:`ServiceBusQueueReceiver.take_prefetched`),
without queueing behind the driver; the driver then grants the link credit for
what was taken, so the buffer refills while the tasks run.

Completes and abandons are pipelined: the driver sends each one's
disposition as it comes to it, runs the turn's other operations (a receive
reads the outcomes as they arrive), then waits once for all the outcomes
still missing, instead of one round trip per message. A disposition goes out
before any receive queued after it, so the service applies an abandon before
it hands out more messages. Each outcome is still checked on its own (a lost
lock fails that message only), and one the service does not confirm is
settled again through the management link, as the SDK itself does. The SDK
internals this takes are all in :mod:`boilermaker.servicebus_publisher.sdk_internals`
(without them, settlements go one by one through the public API).

Opening tries once per attempt: a refused credential or a missing queue fails
at once, other failures are tried again (:data:`OPEN_ATTEMPTS`), and every
operation after that keeps the SDK's own retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

from azure.servicebus import ServiceBusReceiveMode, ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient, ServiceBusReceiver

from boilermaker.broker import (
    BrokerError,
    ReceivedMessage,
    ReceiveMode,
    SubQueue,
)
from boilermaker.service_bus.connection import ServiceBusTarget
from boilermaker.service_bus.errors import SDK_ERRORS, translate
from boilermaker.service_bus.messages import from_sdk
from boilermaker.servicebus_publisher import sdk_internals
from boilermaker.servicebus_publisher.sdk_internals import TRANSPORT_ERRORS, DispositionLink

logger = logging.getLogger("boilermaker.service_bus")

#: Longest single wait on an empty link before queued settlements get a turn.
RECEIVE_SLICE = 0.05
#: Longest single socket read while pumping the link. The SDK's default (0.2 s)
#: would stretch every receive slice to 0.2 s and hold queued settlements back.
SOCKET_TIMEOUT = 0.02
#: How long the SDK keeps pulling after a first message (its default is 0.2 s).
FURTHER_PULL = 0.005
#: Operations the driver pipelines when several are queued together.
PIPELINED = frozenset({"complete", "abandon"})
#: Tries at opening a link that fails for a reason that may pass (the SDK's default
#: is 1 + 3 retries); a refused credential or a missing queue is never tried again.
OPEN_ATTEMPTS = 4
#: Pause before the n-th retry of an open: OPEN_BACKOFF * 2 ** (n - 1) seconds.
OPEN_BACKOFF = 0.8
#: What an SDK call below the public API can raise.
_SETTLE_ERRORS: tuple[type[BaseException], ...] = (*TRANSPORT_ERRORS, *SDK_ERRORS)


@dataclass(slots=True)
class _Op:
    kind: str
    future: asyncio.Future[Any]
    message: ReceivedMessage | None = None
    args: tuple[Any, ...] = ()
    deadline: float = 0.0
    max_messages: int = 0


@dataclass(slots=True)
class _Sent:
    """A complete or abandon whose disposition went out; its outcome is not read yet."""

    op: _Op
    message: Any
    delivery_id: int
    link: DispositionLink


@dataclass(slots=True)
class _Counters:
    receives: int = 0
    settlements: int = 0
    renewals: int = 0
    errors: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


class ServiceBusQueueReceiver:
    """:class:`boilermaker.broker.Receiver` on an Azure Service Bus queue."""

    def __init__(
        self,
        target: ServiceBusTarget,
        queue_name: str,
        *,
        prefetch: int,
        sub_queue: SubQueue,
        receive_mode: ReceiveMode,
    ) -> None:
        self._target = target
        self.queue_name = queue_name
        self.prefetch = prefetch
        self.sub_queue = sub_queue
        self.receive_mode = receive_mode
        self._client: ServiceBusClient | None = None
        self._credential: Any = None
        self._receiver: ServiceBusReceiver | None = None
        self._ops: asyncio.Queue[_Op | None] = asyncio.Queue()
        self._driver: asyncio.Task[None] | None = None
        self._top_up_queued = False
        #: True while the driver waits for a message in steps it can end early.
        self._waiting = False
        self.counters = _Counters()

    # -- lifecycle ----------------------------------------------------------------------

    async def open(self) -> Self:
        """Open the SDK client and receiver and start the driver."""
        client, credential = self._target.client()
        self._client, self._credential = client, credential
        mode = (
            ServiceBusReceiveMode.RECEIVE_AND_DELETE
            if self.receive_mode is ReceiveMode.ReceiveAndDelete
            else ServiceBusReceiveMode.PEEK_LOCK
        )
        self._receiver = client.get_queue_receiver(
            queue_name=self.queue_name,
            receive_mode=mode,
            prefetch_count=self.prefetch,
            sub_queue=ServiceBusSubQueue.DEAD_LETTER
            if self.sub_queue is SubQueue.DeadLetter
            else None,
            socket_timeout=SOCKET_TIMEOUT,
        )
        sdk_internals.shorten_further_pull(self._receiver, FURTHER_PULL)
        sdk_internals.read_handshake_back_to_back(self._receiver)
        try:
            # Attach now: receive slices are too short to cover opening the link.
            await self._attach()
        except BaseException:
            await self.close()
            raise
        self._driver = asyncio.create_task(
            self._drive(), name=f"servicebus-receiver-{self.queue_name}"
        )
        return self

    async def _attach(self) -> None:
        """Open the SDK link, or raise the core error saying why it cannot be opened.

        The SDK retries every failure, a refused credential too (about 15 s to
        report a wrong key), so each attempt here runs with its retries off and
        only failures that may pass are tried again.
        """
        receiver = self._receiver
        assert receiver is not None
        action = f"opening a receiver on {self.queue_name}"
        with sdk_internals.retries_off(receiver) as ours:
            attempts = OPEN_ATTEMPTS if ours else 1  # else the SDK retries by itself
            for attempt in range(1, attempts + 1):
                try:
                    await receiver.__aenter__()
                    return
                except SDK_ERRORS as exc:
                    error = translate(exc, action)
                    if not error.transient or attempt == attempts:
                        raise error from exc
                    pause = OPEN_BACKOFF * 2 ** (attempt - 1)
                    logger.warning("%s (attempt %d); trying again in %.1fs", error, attempt, pause)
                    await asyncio.sleep(pause)

    async def close(self) -> None:
        """Finish queued operations, then close the link and the client."""
        if self._driver is not None:
            self._queue(None)
            with contextlib.suppress(asyncio.CancelledError):
                await self._driver
            self._driver = None
        try:
            if self._receiver is not None:
                await sdk_internals.stop_keep_alive(self._receiver)
                await self._receiver.close()
        except SDK_ERRORS as exc:
            logger.debug("closing receiver: %s", exc)
        finally:
            self._receiver = None
            if self._client is not None:
                with contextlib.suppress(*SDK_ERRORS):
                    await self._client.close()
                self._client = None
            if self._credential is not None:
                with contextlib.suppress(*SDK_ERRORS):
                    await self._credential.close()
                self._credential = None

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- Receiver protocol --------------------------------------------------------------

    async def receive(self, max_messages: int, max_wait: float) -> list[ReceivedMessage]:
        """Up to ``max_messages`` messages, waiting at most ``max_wait`` s for the first."""
        if max_messages < 1:
            return []
        op = self._op("receive")
        op.max_messages = max_messages
        op.deadline = time.monotonic() + max(0.0, max_wait)
        return await self._submit(op)

    def take_prefetched(self, max_messages: int) -> list[ReceivedMessage]:
        """Up to ``max_messages`` messages the link has already prefetched, at once.

        Nothing goes over the socket, so this does not wait for the driver;
        [] when nothing is buffered, the link is down (the driver reopens it on
        the next :meth:`receive`) or the receiver is not open.
        """
        if max_messages < 1 or self._receiver is None or self._driver is None:
            return []
        taken = sdk_internals.take_prefetched(self._receiver, max_messages)
        if taken:
            self._ask_credit()
        return [from_sdk(m) for m in taken]

    def _ask_credit(self) -> None:
        """Messages were taken from the buffer: the driver grants credit for them ahead."""
        if self.prefetch and not self._top_up_queued:
            self._top_up_queued = True
            self._queue(self._op("top_up"))

    async def complete(self, message: ReceivedMessage) -> None:
        """Complete (remove) the message."""
        await self._submit(self._op("complete", message))

    async def abandon(self, message: ReceivedMessage) -> None:
        """Abandon the message: it is redelivered at once."""
        await self._submit(self._op("abandon", message))

    async def dead_letter(self, message: ReceivedMessage, reason: str, description: str) -> None:
        """Dead-letter the message with a reason and description."""
        await self._submit(self._op("dead_letter", message, reason, description))

    async def renew_lock(self, message: ReceivedMessage) -> datetime:
        """Renew the message's lock; returns the new expiry."""
        until = await self._submit(self._op("renew", message))
        message.locked_until = until
        return until

    async def peek(
        self, max_messages: int, from_sequence_number: int | None = None
    ) -> list[ReceivedMessage]:
        """Messages in sequence order, without locking them."""
        return await self._submit(self._op("peek", None, max_messages, from_sequence_number))

    # -- the driver -----------------------------------------------------------------------

    def _op(self, kind: str, message: ReceivedMessage | None = None, *args: Any) -> _Op:
        future = asyncio.get_running_loop().create_future()
        return _Op(kind, future, message, args)

    async def _submit(self, op: _Op) -> Any:
        if self._driver is None or self._driver.done():
            raise BrokerError(f"receiver on {self.queue_name} is not open")
        self._queue(op)
        return await op.future

    def _queue(self, op: _Op | None) -> None:
        """Queue an operation for the driver; a wait for messages ends to let it go."""
        self._ops.put_nowait(op)
        if self._waiting and self._receiver is not None:
            sdk_internals.cut_reads_short(self._receiver)

    async def _drive(self) -> None:
        while True:
            turn = [await self._ops.get()]
            while not self._ops.empty():
                turn.append(self._ops.get_nowait())
            # Completes and abandons go out as they come; their outcomes are read
            # once, after the turn's other operations (a receive reads them too).
            # Credit grants only send, so they go out with the first settlements.
            top_ups = [op for op in turn if op is not None and op.kind == "top_up"]
            unconfirmed: list[_Sent] = []
            batch: list[_Op] = []
            closing = False
            for index, op in enumerate(turn):
                if op is None:
                    for late in turn[index + 1 :]:
                        if late is not None and not late.future.done():
                            late.future.set_exception(BrokerError("receiver closed"))
                    closing = True
                    break
                if op.kind == "top_up":
                    continue
                if op.kind in PIPELINED:
                    batch.append(op)
                    continue
                if batch or top_ups:
                    unconfirmed += await self._send_together(batch, top_ups)
                    batch, top_ups = [], []
                if (
                    unconfirmed
                    and op.kind == "receive"
                    and not sdk_internals.prefetched_count(self._receiver)
                ):
                    # The receive would wait: read the outcomes first, so the
                    # settlements are not held until its wait ends.
                    await self._confirm_settlements(unconfirmed)
                    unconfirmed = []
                await self._run(op)
            if batch or top_ups:
                unconfirmed += await self._send_together(batch, top_ups)
            if unconfirmed:
                await self._confirm_settlements(unconfirmed)
            if closing:
                return

    async def _run(self, op: _Op) -> None:
        """Perform one operation, resolving its future with the result or the error."""
        if op.future.done():
            return
        try:
            if op.kind == "top_up":
                self._top_up_queued = False
                if sdk_internals.is_running(self._receiver):
                    try:
                        await sdk_internals.top_up_credit(self._receiver, self.prefetch)
                    except _SETTLE_ERRORS as exc:
                        # A lost connection: the next receive reopens the link,
                        # which is granted its credit afresh.
                        logger.debug("granting credit on %s: %s", self.queue_name, exc)
                op.future.set_result(None)
            elif op.kind == "receive":
                await self._receive_slice(op)
            else:
                result = await self._perform(op)
                if not op.future.done():
                    op.future.set_result(result)
        except SDK_ERRORS as exc:
            self._fail(op, exc)
        except BrokerError as exc:  # already said in core's terms (reopening the link)
            self.counters.errors += 1
            if not op.future.done():
                op.future.set_exception(exc)
        except Exception as exc:  # keep the driver alive for everyone else
            self.counters.errors += 1
            logger.exception("receiver driver: %s failed", op.kind)
            if not op.future.done():
                op.future.set_exception(exc)

    def _fail(self, op: _Op, exc: BaseException) -> None:
        self.counters.errors += 1
        if not op.future.done():
            op.future.set_exception(translate(exc, f"{op.kind} on {self.queue_name}"))

    # -- pipelined settlement -------------------------------------------------------------

    async def _send_together(self, settlements: list[_Op], top_ups: list[_Op]) -> list[_Sent]:
        """Settlements' dispositions and credit grants, in one socket write."""
        with sdk_internals.WriteCork(self._receiver) as cork:
            sent = await self._send_settlements(settlements, cork)
            for op in top_ups:
                await self._run(op)
        return sent

    async def _send_settlements(self, ops: list[_Op], cork: sdk_internals.WriteCork) -> list[_Sent]:
        """Send the completes' and abandons' dispositions without waiting for their
        outcomes; those the link cannot pipeline are settled one by one here."""
        ops = [op for op in ops if not op.future.done()]
        link = DispositionLink.of(self._receiver)
        if link is None:
            cork.flush()
            for op in ops:
                await self._run(op)
            return []
        sent: list[_Sent] = []
        for op in ops:
            message: Any = op.message.handle if op.message is not None else None
            if not link.can_settle(message):
                cork.flush()  # the SDK's own path waits for the service
                await self._run(op)  # and raises the right error
                continue
            try:
                delivery_id = await link.send(message, self._settlement(op))
            except _SETTLE_ERRORS as exc:
                self._fail(op, self._sdk_error(exc))
                continue
            sent.append(_Sent(op, message, delivery_id, link))
        return sent

    async def _confirm_settlements(self, sent: list[_Sent]) -> None:
        """Read the outcomes of sent dispositions (one wait for all), then check each
        on its own: a refused one fails its message only, an unconfirmed one is
        settled again by lock token."""
        by_link: dict[int, tuple[DispositionLink, list[int]]] = {}
        for item in sent:
            by_link.setdefault(id(item.link), (item.link, []))[1].append(item.delivery_id)
        for link, delivery_ids in by_link.values():
            await link.await_outcomes(delivery_ids, _SETTLE_ERRORS, logger)
        for item in sent:
            op = item.op
            try:
                confirmed = item.link.confirmed(item.delivery_id, self._settlement(op))
            except _SETTLE_ERRORS as exc:
                self._fail(op, self._sdk_error(exc))
                continue
            if not confirmed:
                await self._settle_by_lock_token(op, item.message)
                continue
            sdk_internals.mark_settled(item.message)
            self.counters.settlements += 1
            if not op.future.done():
                op.future.set_result(None)

    @staticmethod
    def _settlement(op: _Op) -> sdk_internals.Settlement:
        return "complete" if op.kind == "complete" else "abandon"

    async def _settle_by_lock_token(self, op: _Op, message: Any) -> None:
        """Settle over the management link: the SDK's fallback for an unconfirmed outcome."""
        try:
            await sdk_internals.settle_via_management(self._receiver, message, self._settlement(op))
        except _SETTLE_ERRORS as exc:
            self._fail(op, self._sdk_error(exc))
            return
        self.counters.settlements += 1
        if not op.future.done():
            op.future.set_result(None)

    def _sdk_error(self, exc: BaseException) -> BaseException:
        """The SDK's own exception for a transport-level one (as its public calls raise)."""
        return sdk_internals.sdk_exception(self._receiver, exc, logger)

    async def _receive_slice(self, op: _Op) -> None:
        assert self._receiver is not None
        if not sdk_internals.is_running(self._receiver):
            # The connection was lost and the SDK shut the link down. A receive
            # slice is too short to reopen it in (the SDK would time out opening,
            # every slice, forever), so reopen it here, trying again what may pass.
            logger.warning("Reopening the receiver on %s after losing the link", self.queue_name)
            await self._attach()
        remaining = op.deadline - time.monotonic()
        # What arrived since the caller looked is handed out without a receive call.
        got = sdk_internals.take_prefetched(self._receiver, op.max_messages)
        if got:
            self._ask_credit()
        else:
            # With prefetch the link already has credit: wait until a first
            # message lands and hand out what is buffered then. The SDK's
            # receive, asked for more, would pump for a further socket timeout
            # in case others follow, delaying every hop of a chain by that
            # much; what follows lands in the buffer and is taken at once.
            wait = max(0.001, min(RECEIVE_SLICE, remaining))
            if self.prefetch:
                got = await self._await_prefetched(op.max_messages, wait)
            else:
                got = await self._receiver.receive_messages(
                    max_message_count=op.max_messages, max_wait_time=wait
                )
            self.counters.receives += 1
        if op.future.done():
            # The caller gave up (worker stopping): hand these straight back.
            for message in got:
                if self.receive_mode is ReceiveMode.PeekLock:
                    with contextlib.suppress(*SDK_ERRORS):
                        await self._receiver.abandon_message(message)
            return
        if got or time.monotonic() >= op.deadline:
            op.future.set_result([from_sdk(m) for m in got])
            return
        # Nothing yet: let queued settlements go first, then keep waiting.
        self._ops.put_nowait(op)

    async def _await_prefetched(self, max_messages: int, wait: float) -> list[Any]:
        """Read frames until a message is prefetched, an operation is queued (which
        ends the read under way) or ``wait`` seconds passed; the SDK messages.

        Each step is one step of the SDK's own receive loop. Any error goes to
        the SDK's ``receive_messages``, which reports it and reconnects as usual.
        """
        receiver = self._receiver
        assert receiver is not None
        deadline = time.monotonic() + wait
        self._waiting = True
        try:
            while self._ops.empty():
                if time.monotonic() >= deadline:
                    return []
                if not await sdk_internals.pump_once(receiver):
                    break  # no such step, or the SDK client shut down
                got = sdk_internals.take_prefetched(receiver, max_messages)
                if got:
                    self._ask_credit()
                    return got
            else:
                return []  # an operation was queued: it goes first
        except TRANSPORT_ERRORS as exc:
            logger.debug("waiting for messages on %s: %s", self.queue_name, exc)
        finally:
            self._waiting = False
        # The SDK's own receive: after an error, or without the step internals.
        remaining = max(0.001, deadline - time.monotonic())
        return await receiver.receive_messages(max_message_count=1, max_wait_time=remaining)

    async def _perform(self, op: _Op) -> Any:
        receiver = self._receiver
        assert receiver is not None
        if op.kind == "peek":
            max_messages, from_sequence = op.args
            peeked = await receiver.peek_messages(
                max_message_count=max_messages, sequence_number=from_sequence or 1
            )
            return [from_sdk(m) for m in peeked]
        assert op.message is not None
        sdk_message = op.message.handle
        if sdk_message is None:
            raise BrokerError("message was not received by this receiver")
        action: Callable[..., Awaitable[Any]]
        if op.kind == "complete":
            action = receiver.complete_message
        elif op.kind == "abandon":
            action = receiver.abandon_message
        elif op.kind == "dead_letter":
            reason, description = op.args
            self.counters.settlements += 1
            return await receiver.dead_letter_message(
                sdk_message, reason=reason, error_description=description
            )
        elif op.kind == "renew":
            self.counters.renewals += 1
            until = await receiver.renew_message_lock(sdk_message)
            return until if until.tzinfo else until.replace(tzinfo=UTC)
        else:
            raise BrokerError(f"unknown receiver operation {op.kind}")
        self.counters.settlements += 1
        return await action(sdk_message)

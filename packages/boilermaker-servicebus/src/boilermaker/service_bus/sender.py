"""Publishing through a pooled SDK sender, batching whatever is waiting.

Connections come from ``aio-azure-clients-toolbox``'s connection pool, with
our own connector: its readiness check opens the link and sends nothing (the
toolbox's own check publishes a "ready" message into the work queue).

Concurrent publishers do not each take a turn on the link: their messages
join a queue that one coroutine sends, packing everything waiting into
size-bounded batches (one AMQP transfer per batch). Immediate messages are
plain sends; only messages that must report a sequence number (scheduled
ones) use the management link's ``schedule-message``. The driver keeps its
pooled connection while messages keep coming, so the pool's per-checkout
cost is paid once per burst, not once per message.

A caller that finds that kept link idle (nothing queued, nothing being sent)
sends on it itself instead of handing its messages to the driver: one
publish after another (``await apply_async`` in a loop) then costs a send,
not a send plus two task switches. The link still carries one send at a
time: the driver and such callers take turns under one lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, cast

from azure.servicebus.aio import ServiceBusClient, ServiceBusSender
from azure.servicebus.exceptions import MessageSizeExceededError

from boilermaker.broker import BrokerError, OutgoingMessage
from boilermaker.service_bus.connection import ServiceBusTarget
from boilermaker.service_bus.errors import SDK_ERRORS, as_broker_error, translate
from boilermaker.service_bus.messages import to_sdk
from boilermaker.servicebus_publisher import sdk_internals
from boilermaker.servicebus_publisher.messages import batch_size_limit, group_by_schedule_time
from boilermaker.servicebus_publisher.publisher import SEND_TIMEOUT
from boilermaker.servicebus_publisher.publisher import bounded as _bounded

logger = logging.getLogger("boilermaker.service_bus")

#: Seconds the send driver keeps its pooled connection after the last message.
LINGER = 1.0


class _PooledSender:
    """A sender link plus the client (and credential) that own it."""

    def __init__(self, client: ServiceBusClient, credential: Any, sender: ServiceBusSender) -> None:
        self.client = client
        self.credential = credential
        self.sender = sender

    async def close(self) -> None:
        await sdk_internals.stop_keep_alive(self.sender)
        for closer in (self.sender.close, self.client.close):
            with contextlib.suppress(*SDK_ERRORS):
                await closer()
        if self.credential is not None:
            with contextlib.suppress(*SDK_ERRORS):
                await self.credential.close()


class SenderConnector:
    """Creates sender links for the toolbox pool; ready = link attached, nothing sent.

    The pool calls only ``create`` and ``ready``, so this need not subclass the
    toolbox's connector class; not importing it keeps ``import
    boilermaker.service_bus`` from loading every toolbox client (seconds of
    start-up for workers and the CLI) until something is first published.
    """

    def __init__(self, target: ServiceBusTarget, queue_name: str) -> None:
        self.target = target
        self.queue_name = queue_name

    async def create(self) -> _PooledSender:
        # No SDK retries: core retries transient errors per publish_attempts, and
        # a wrong key or size error must fail at once.
        client, credential = self.target.client(retry_total=0)
        sender = client.get_queue_sender(queue_name=self.queue_name)
        sdk_internals.read_handshake_back_to_back(sender)
        return _PooledSender(client, credential, sender)

    async def ready(self, connection: _PooledSender) -> bool:
        pooled = connection
        try:
            await pooled.sender.__aenter__()
        except SDK_ERRORS as exc:
            # Raised rather than returning False, so the caller sees why.
            raise translate(exc, f"opening a sender on {self.queue_name}") from exc
        return True


@dataclass(slots=True)
class _Request:
    messages: Sequence[OutgoingMessage]
    future: asyncio.Future[list[int | None]]


class BatchingSender:
    """Sends messages for many concurrent callers through one pooled link at a time."""

    def __init__(
        self,
        target: ServiceBusTarget,
        queue_name: str,
        pool_size: int = 2,
        max_batch_size: int = 256 * 1024,
    ) -> None:
        self.queue_name = queue_name
        self.max_batch_size = max_batch_size
        self._connector = SenderConnector(target, queue_name)
        self._pool_size = pool_size
        self._pool: Any = None  # aio_azure_clients_toolbox ConnectionPool, made on first send
        self._queue: asyncio.Queue[_Request] = asyncio.Queue()
        self._driver: asyncio.Task[None] | None = None
        #: The connection the driver keeps between bursts (None while it has none).
        self._held: _PooledSender | None = None
        #: Held by whoever is sending on ``_held``: the driver or a direct caller.
        self._link_lock = asyncio.Lock()
        #: A kept connection a direct send found broken (the driver expires it).
        self._broken: _PooledSender | None = None
        self._last_direct = 0.0
        self.transfers = 0
        self.schedule_calls = 0
        self.direct_sends = 0

    def _connection_pool(self) -> Any:
        if self._pool is None:
            from aio_azure_clients_toolbox import connection_pooling

            self._pool = connection_pooling.ConnectionPool(
                self._connector, client_limit=1, max_size=self._pool_size, max_idle_seconds=200
            )
        return self._pool

    async def send(self, messages: Sequence[OutgoingMessage]) -> list[int | None]:
        """Send (or schedule) messages; sequence numbers for scheduled ones."""
        if not messages:
            return []
        held = self._held
        if held is not None and self._queue.empty() and not self._link_lock.locked():
            return await self._send_direct(held, messages)
        return await self._enqueue(messages)

    async def _send_direct(
        self, pooled: _PooledSender, messages: Sequence[OutgoingMessage]
    ) -> list[int | None]:
        """Send on the driver's idle kept link (see the module docstring)."""
        future: asyncio.Future[list[int | None]] = asyncio.get_running_loop().create_future()
        request = _Request(messages, future)
        async with self._link_lock:
            still_held = self._held is pooled  # else the driver let the connection go meanwhile
            if still_held:
                await self._send_on(pooled, request)
        if not still_held:
            return await self._enqueue(messages)
        return await future

    async def _send_on(self, pooled: _PooledSender, request: _Request) -> None:
        """A direct send on the kept link (call with the link lock held)."""
        broken = True  # unless the send returns: a cancelled send may leave the link odd
        try:
            broken = await self._send_requests(pooled, [request])
        except Exception as exc:  # a failure nobody foresaw, said in core's terms
            raise as_broker_error(exc, f"sending to {self.queue_name}") from exc
        finally:
            self._last_direct = asyncio.get_running_loop().time()
            self.direct_sends += 1
            if broken:
                self._held = None
                self._broken = pooled

    async def _enqueue(self, messages: Sequence[OutgoingMessage]) -> list[int | None]:
        if self._driver is None or self._driver.done():
            self._driver = asyncio.create_task(
                self._drive(), name=f"servicebus-sender-{self.queue_name}"
            )
        future: asyncio.Future[list[int | None]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Request(messages, future))
        return await future

    async def cancel_scheduled(self, sequence_numbers: Sequence[int]) -> None:
        """Cancel scheduled messages by sequence number."""
        async with self._connection() as pooled:
            try:
                await pooled.sender.cancel_scheduled_messages(
                    list(sequence_numbers), timeout=SEND_TIMEOUT
                )
            except SDK_ERRORS as exc:
                raise translate(exc, f"cancelling scheduled messages on {self.queue_name}") from exc

    async def close(self) -> None:
        """Stop the driver (after what is queued) and close pooled connections."""
        if self._driver is not None:
            self._driver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._driver
            self._driver = None
        while not self._queue.empty():
            request = self._queue.get_nowait()
            if not request.future.done():
                request.future.set_exception(BrokerError("sender closed before sending"))
        if self._pool is not None:
            await self._pool.closeall()

    def _connection(self) -> AbstractAsyncContextManager[_PooledSender]:
        return cast(
            AbstractAsyncContextManager[_PooledSender],
            self._connection_pool().get(timeout=30, acquire_timeout=SEND_TIMEOUT),
        )

    async def _drive(self) -> None:
        while True:
            pending = [await self._queue.get()]
            while pending:
                try:
                    async with self._connection() as pooled:
                        pending = await self._send_burst(pooled, pending)
                except asyncio.CancelledError:
                    self._fail(pending, BrokerError("sender closed"))
                    raise
                except Exception as exc:
                    # Pool errors arrive wrapped in exception groups; whatever it is,
                    # fail these requests and keep driving (a dead driver hangs every send).
                    self._fail(pending, as_broker_error(exc, f"connecting to {self.queue_name}"))
                    pending = []
                finally:
                    self._held = None

    async def _send_burst(self, pooled: _PooledSender, first: list[_Request]) -> list[_Request]:
        """Send what is queued on ``pooled`` until the queue stays empty for LINGER s.

        Returns requests still to send when the connection turned out broken (a
        direct send found it so); they go out on a fresh one.
        """
        requests = first
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue.empty():
                requests.append(self._queue.get_nowait())
            if await self._expire_if_broken(pooled):
                return [r for r in requests if not r.future.done()]
            live = [r for r in requests if not r.future.done()]
            if live:
                try:
                    async with self._link_lock:
                        broken = await self._send_requests(pooled, live)
                except BaseException as exc:
                    # Closing (cancelled) or a failure nobody foresaw: the pool's
                    # context manager may swallow it, so fail these callers here.
                    closing = isinstance(exc, asyncio.CancelledError)
                    self._fail(
                        live,
                        BrokerError("sender closed while sending")
                        if closing
                        else as_broker_error(exc, f"sending to {self.queue_name}"),
                    )
                    raise
                if broken:
                    await self._connection_pool().expire_conn(pooled)
                    return []
            requests = []
            self._held = pooled  # callers may now send on it directly
            try:
                while not requests:
                    try:
                        async with asyncio.timeout(LINGER):
                            requests = [await self._queue.get()]
                    except TimeoutError:
                        if self._broken is pooled or loop.time() - self._last_direct >= LINGER:
                            break  # idle for LINGER s, direct sends included
            finally:
                self._held = None
            if not requests:
                async with self._link_lock:  # a direct send in progress finishes first
                    pass
                await self._expire_if_broken(pooled)
                return []

    async def _expire_if_broken(self, pooled: _PooledSender) -> bool:
        """Expire ``pooled`` if a direct send found it broken; whether it was."""
        if self._broken is not pooled:
            return False
        self._broken = None
        await self._connection_pool().expire_conn(pooled)
        return True

    async def _send_requests(self, pooled: _PooledSender, requests: list[_Request]) -> bool:
        """Send every request's messages; returns True if the link looks broken."""
        results: dict[int, list[int | None]] = {id(r): [None] * len(r.messages) for r in requests}
        failed = await self._send_immediate(pooled.sender, requests)
        broken = any(error.transient for error in failed.values())
        for request in requests:
            if id(request) in failed:
                continue
            scheduled = [
                (i, m)
                for i, m in enumerate(request.messages)
                if m.scheduled_enqueue_time is not None
            ]
            for when, group in group_by_schedule_time(scheduled):
                try:
                    numbers = await _bounded(
                        pooled.sender.schedule_messages(
                            [to_sdk(m) for _, m in group], when, timeout=SEND_TIMEOUT
                        )
                    )
                    self.schedule_calls += 1
                except SDK_ERRORS as exc:
                    error = translate(exc, f"scheduling on {self.queue_name}")
                    broken = broken or error.transient
                    failed[id(request)] = error
                    break
                for (index, _), number in zip(group, numbers, strict=True):
                    results[id(request)][index] = int(number)
        for request in requests:
            if request.future.done():
                continue
            if id(request) in failed:
                request.future.set_exception(failed[id(request)])
            else:
                request.future.set_result(results[id(request)])
        return broken

    async def _send_immediate(
        self, sender: ServiceBusSender, requests: list[_Request]
    ) -> dict[int, BrokerError]:
        """Plain-send every immediate message in as few batches as fit.

        A failed batch fails the requests with a message in it and every
        request not sent yet; requests wholly in earlier batches succeeded.
        The next batch is built while the previous one is on the wire (the
        service works on it meanwhile); the link still carries one send at a
        time, and a batch is sent only after the one before it was accepted.
        """
        pending = [
            (request, message)
            for request in requests
            for message in request.messages
            if message.scheduled_enqueue_time is None
        ]
        if not pending:
            return {}
        failed: dict[int, BrokerError] = {}
        sent_upto = 0  # pending[:sent_upto] went out in batches that were accepted
        in_flight: asyncio.Future[None] | None = None  # the previous batch, being sent
        flight_upto = 0  # pending[:flight_upto] are accepted or in flight
        try:
            if len(pending) == 1:
                await _bounded(sender.send_messages(to_sdk(pending[0][1]), timeout=SEND_TIMEOUT))
                self.transfers += 1
                return failed
            batch = await sender.create_message_batch(self._batch_limit(sender))
            for index, (_, message) in enumerate(pending):
                sdk_message = to_sdk(message)
                try:
                    batch.add_message(sdk_message)
                except MessageSizeExceededError:
                    if len(batch) == 0:
                        raise
                    if in_flight is not None:
                        await in_flight
                        in_flight = None
                        self.transfers += 1
                        sent_upto = flight_upto
                    in_flight = asyncio.ensure_future(
                        _bounded(sender.send_messages(batch, timeout=SEND_TIMEOUT))
                    )
                    flight_upto = index
                    await asyncio.sleep(0)  # let it put the transfer on the wire
                    batch = await sender.create_message_batch(self._batch_limit(sender))
                    batch.add_message(sdk_message)
            if in_flight is not None:
                await in_flight
                in_flight = None
                self.transfers += 1
                sent_upto = flight_upto
            if len(batch):
                await _bounded(sender.send_messages(batch, timeout=SEND_TIMEOUT))
                self.transfers += 1
            sent_upto = len(pending)
        except SDK_ERRORS as exc:
            if in_flight is not None:
                # Building the next batch failed: learn whether the one on the
                # wire landed before saying which requests did not.
                with contextlib.suppress(*SDK_ERRORS):
                    await in_flight
                    self.transfers += 1
                    sent_upto = flight_upto
                in_flight = None
            error = translate(exc, f"sending to {self.queue_name}")
            for request, _ in pending[sent_upto:]:
                failed[id(request)] = error
        finally:
            if in_flight is not None:  # cancelled (the sender is closing)
                in_flight.cancel()
                with contextlib.suppress(asyncio.CancelledError, *SDK_ERRORS):
                    await in_flight
        return failed

    def _batch_limit(self, sender: ServiceBusSender) -> int:
        """Batch size to ask for: the link's maximum less a safety margin for framing."""
        return batch_size_limit(sender, self.max_batch_size)

    @staticmethod
    def _fail(requests: list[_Request], error: BrokerError) -> None:
        for request in requests:
            if not request.future.done():
                request.future.set_exception(error)

"""The worker loop: receive, run up to N tasks at once, keep locks alive, stop cleanly.

    while running:
        wait for a free slot
        take up to (free slots) prefetched messages, or receive them
        start a task per message                 # TaskRunner.handle settles it

A task holds its slot until only settling its message is left (it has run and
its follow-ups are written), so the next task starts while the broker confirms
the settlement; at ``concurrency=1`` functions still run one at a time, in
order. A receiver that buffers prefetched messages (:class:`PrefetchBuffer`)
hands them over without a round trip.

On SIGINT/SIGTERM (or :meth:`Worker.stop`) the loop stops receiving, gives
in-flight tasks ``shutdown_grace`` seconds, then cancels what is left and
abandons those messages so they are redelivered at once. A second signal
skips the grace period, and so does cancelling the task that runs
:meth:`Worker.run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from boilermaker.broker import (
    Broker,
    BrokerError,
    ControlMessages,
    IdleAware,
    PrefetchBuffer,
    ReceivedMessage,
    Receiver,
)
from boilermaker.graph_dispatch import GraphRuntime
from boilermaker.publishing import Publisher
from boilermaker.registry import Registry
from boilermaker.results_store import ResultsStore
from boilermaker.tracing import Tracing
from boilermaker.worker.lock_renewer import LockRenewer
from boilermaker.worker.middleware import Middleware, MiddlewareStack
from boilermaker.worker.middleware.chains import ChainsMiddleware
from boilermaker.worker.middleware.graphs import GraphsMiddleware, NoGraphsMiddleware
from boilermaker.worker.middleware.results import ResultsMiddleware
from boilermaker.worker.middleware.stats import StatsMiddleware
from boilermaker.worker.middleware.tracing import TracingMiddleware
from boilermaker.worker.settings import WorkerSettings, WorkerStats
from boilermaker.worker.task_run import TaskRunner
from boilermaker.worker.timers import precise_timers

if TYPE_CHECKING:
    from collections.abc import Sequence

logger = logging.getLogger("boilermaker.app")

#: Pause after a failed receive before trying again (grows to RECEIVE_BACKOFF_MAX).
RECEIVE_BACKOFF = 0.5
RECEIVE_BACKOFF_MAX = 10.0


class Worker:
    """Runs registered task functions from a broker's messages (see module docstring).

    Its collaborators are given, not looked up: the ``broker`` it receives from,
    the ``registry`` of functions, the application ``state`` passed to them,
    the ``publisher`` for follow-up messages (default: one on ``broker``), a
    ``results_store`` for results and graphs (or the ``graphs`` runtime over
    one), ``tracing``, extra ``middleware`` (after the worker's own: stats,
    tracing, results, graphs, chains) and ``settings``. ``app.worker()`` wires
    them from an application; anything that cannot work is refused here.
    """

    def __init__(
        self,
        broker: Broker,
        registry: Registry,
        *,
        state: Any = None,
        settings: WorkerSettings | None = None,
        publisher: Publisher | None = None,
        results_store: ResultsStore | None = None,
        graphs: GraphRuntime | None = None,
        tracing: Tracing | None = None,
        middleware: Sequence[Middleware] = (),
    ) -> None:
        if not isinstance(broker, Broker):
            raise TypeError(
                f"a worker needs a broker (boilermaker.broker.Broker), not {type(broker).__name__}"
            )
        if not isinstance(registry, Registry):
            raise TypeError(f"registry must be a Registry, not {type(registry).__name__}")
        tracing = tracing if tracing is not None else Tracing(False)
        if publisher is None:
            publisher = Publisher(broker, tracing, broker.queue_name)
        elif publisher.broker is not broker:
            raise ValueError(
                "the publisher sends to another broker than the worker receives from; "
                "follow-up messages (retries, chains, graph nodes) would go elsewhere"
            )
        if graphs is None and results_store is not None:
            graphs = GraphRuntime(results_store, publisher)
        store = results_store if results_store is not None else graphs.store if graphs else None
        self.broker = broker
        self.registry = registry
        self.state = state
        self.publisher = publisher
        self.settings = settings or WorkerSettings()
        self.stats = WorkerStats()
        own: list[Middleware] = [StatsMiddleware(self.stats), TracingMiddleware(tracing)]
        if store is not None:
            own.append(ResultsMiddleware(store))
        own.append(GraphsMiddleware(graphs) if graphs is not None else NoGraphsMiddleware())
        own.append(ChainsMiddleware(publisher))
        self.middleware = MiddlewareStack([*own, *middleware])
        self._is_idle = broker.is_idle if isinstance(broker, IdleAware) else None
        self._is_control = (
            broker.is_control_message if isinstance(broker, ControlMessages) else None
        )
        self._in_flight: dict[asyncio.Task[None], ReceivedMessage] = {}
        # The tasks holding a slot: in flight and not yet settling. A task gives
        # its slot back once its outcome is decided and its follow-ups are done,
        # so the next message starts while this one's settlement is on the wire.
        self._holding: set[asyncio.Task[None]] = set()
        self._slot_freed = asyncio.Event()
        # While receiving from a buffer: how a freed slot takes the next message.
        self._refill: tuple[Callable[[int], list[ReceivedMessage]], TaskRunner] | None = None
        self._stopping = asyncio.Event()
        self._force = False
        self._signals = 0
        self._last_empty_receive = 0.0

    @property
    def in_flight(self) -> int:
        """Messages being handled right now: tasks running, and settlements not yet confirmed."""
        return len(self._in_flight)

    def stop(self) -> None:
        """Stop receiving and shut down gracefully (a second call skips the grace period)."""
        if self._stopping.is_set():
            self._force = True
        self._stopping.set()
        self._slot_freed.set()

    async def run(self) -> None:
        """Run until stopped."""
        loop = asyncio.get_running_loop()
        installed = self._install_signals(loop)
        try:
            with precise_timers(loop, self.settings.precise_timers):
                async with self.broker.receiver(
                    prefetch=self.settings.effective_prefetch
                ) as receiver:
                    renewer = LockRenewer(receiver, self.settings, self.stats)
                    runner = TaskRunner(
                        receiver=receiver,
                        renewer=renewer,
                        registry=self.registry,
                        publisher=self.publisher,
                        middleware=self.middleware,
                        settings=self.settings,
                        stats=self.stats,
                        state=self.state,
                        is_control=self._is_control,
                    )
                    renewer.start()
                    await self._notify_middleware("on_worker_start")
                    try:
                        await self._receive_loop(receiver, runner)
                    except asyncio.CancelledError:
                        # Cancelling run() means stop now: no grace period; what is
                        # still running is cancelled and its messages abandoned.
                        self._force = True
                        self._stopping.set()
                        raise
                    finally:
                        await self._drain_in_flight()
                        await renewer.stop()
                        await self._notify_middleware("on_worker_stop")
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
        logger.info("Worker stopped: %s", self.stats.as_dict())

    async def run_until_idle(self, timeout: float = 30.0, idle_for: float = 0.05) -> None:
        """Run until nothing is in flight, nothing is waiting, then stop.

        On brokers that can tell (the in-memory one), scheduled messages (retries)
        count as waiting. Raises TimeoutError after ``timeout`` seconds.
        """
        self.settings = self.settings.replace(receive_wait=min(self.settings.receive_wait, 0.05))
        runner = asyncio.create_task(self.run())
        deadline = time.monotonic() + timeout
        is_idle = self._is_idle
        try:
            while True:
                await asyncio.sleep(min(idle_for, 0.02))
                if runner.done():
                    await runner
                    return
                quiet = (
                    self.in_flight == 0
                    and self._last_empty_receive > 0
                    and time.monotonic() - self._last_empty_receive < idle_for * 4
                )
                if quiet and (is_idle is None or is_idle()):
                    await asyncio.sleep(idle_for)
                    if self.in_flight == 0 and (is_idle is None or is_idle()):
                        return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"queue not drained within {timeout}s ({self.stats})")
        finally:
            self.stop()
            await runner

    # -- internals ------------------------------------------------------------------

    async def _notify_middleware(self, hook: str) -> None:
        for item in self.middleware.middleware:
            try:
                await getattr(item, hook)(self)
            except Exception:
                logger.exception("%s.%s failed", type(item).__name__, hook)

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> list[signal.Signals]:
        if not self.settings.install_signal_handlers:
            return []
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self._on_signal, sig)
            except (NotImplementedError, RuntimeError, ValueError):
                continue
            installed.append(sig)
        return installed

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        if self._signals == 1:
            logger.warning(
                "Received %s: stopping; in-flight tasks get %.0fs",
                sig.name,
                self.settings.shutdown_grace,
            )
        else:
            logger.warning("Received %s again: stopping now", sig.name)
        self.stop()

    async def _receive_loop(self, receiver: Receiver, runner: TaskRunner) -> None:
        # One waiter for the whole run, raced against each receive.
        stopping = asyncio.ensure_future(self._stopping.wait())
        if isinstance(receiver, PrefetchBuffer):
            # While receiving, a freed slot takes the next buffered message itself.
            self._refill = (receiver.take_prefetched, runner)
        try:
            await self._receive_until_stopped(receiver, runner, stopping)
        finally:
            self._refill = None
            stopping.cancel()

    async def _receive_until_stopped(
        self, receiver: Receiver, runner: TaskRunner, stopping: asyncio.Future[Any]
    ) -> None:
        concurrency = self.settings.concurrency
        take = receiver.take_prefetched if isinstance(receiver, PrefetchBuffer) else None
        backoff = RECEIVE_BACKOFF
        while not self._stopping.is_set():
            free = concurrency - len(self._holding)
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            messages = take(free) if take is not None else []
            if messages:
                self._start(runner, messages)
                continue
            try:
                messages = await self._receive(receiver, free, stopping)
            except BrokerError as exc:
                if not exc.transient:
                    # A deleted queue or revoked credentials will not heal by waiting.
                    logger.critical("Receiving failed for good (%s); the worker stops", exc)
                    raise
                logger.error("Receiving failed (%s); retrying in %.1fs", exc, backoff)
                await self._sleep_unless_stopping(backoff)
                backoff = min(backoff * 2, RECEIVE_BACKOFF_MAX)
                continue
            backoff = RECEIVE_BACKOFF
            if not messages:
                self._last_empty_receive = time.monotonic()
                continue
            self._start(runner, messages)

    def _start(self, runner: TaskRunner, messages: list[ReceivedMessage]) -> int:
        """A task per message, each holding a slot until it settles; how many started."""
        if not messages:
            return 0
        now = datetime.now(UTC)
        started = 0
        for message in messages:
            if message.locked_until is not None and message.locked_until <= now:
                self._skip_lapsed(message, now)
                continue
            task = asyncio.create_task(runner.handle(message, self._release))
            self._in_flight[task] = message
            self._holding.add(task)
            task.add_done_callback(self._task_done)
            started += 1
        if len(self._holding) > self.stats.max_in_flight:
            self.stats.max_in_flight = len(self._holding)
        return started

    def _release(self) -> None:
        """Called by the handling task when only settling its message is left.

        A message already in the receiver's buffer takes the slot at once, without
        waiting a turn of the event loop for the receive loop to wake.
        """
        task = asyncio.current_task()
        if task in self._holding:
            self._holding.discard(task)
            refill = self._refill
            if refill is not None and not self._stopping.is_set():
                take, runner = refill
                if self._start(runner, take(1)):
                    return
            self._slot_freed.set()

    def _skip_lapsed(self, message: ReceivedMessage, now: datetime) -> None:
        # A prefetched message can wait in the client's buffer past its lock (the
        # worker was busy). The broker has already made it available again, so
        # running this copy would run the task twice; it is left unsettled.
        self.stats.locks_lost += 1
        assert message.locked_until is not None
        logger.warning(
            "Message %s: its lock lapsed %.1fs before it was taken from the buffer; "
            "skipped, the broker redelivers it",
            message.message_id,
            (now - message.locked_until).total_seconds(),
        )

    async def _receive(
        self, receiver: Receiver, free: int, stopping: asyncio.Future[Any]
    ) -> list[ReceivedMessage]:
        wait = self.settings.receive_wait
        receiving = asyncio.ensure_future(receiver.receive(free, wait))
        try:
            done, _ = await asyncio.wait({receiving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # Left running, the receive would lock messages nobody handles.
            await self._cancel_receive(receiver, receiving)
            raise
        if receiving in done:
            return receiving.result()
        await self._cancel_receive(receiver, receiving)
        return []

    async def _cancel_receive(
        self, receiver: Receiver, receiving: asyncio.Future[list[ReceivedMessage]]
    ) -> None:
        receiving.cancel()
        with contextlib.suppress(asyncio.CancelledError, BrokerError):
            got = await receiving
            # Received just as we stopped: hand them straight back.
            for message in got or []:
                with contextlib.suppress(BrokerError):
                    await receiver.abandon(message)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.pop(task, None)
        self._holding.discard(task)
        self._slot_freed.set()
        if not task.cancelled() and task.exception() is not None:
            logger.error("Task handler crashed", exc_info=task.exception())

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _drain_in_flight(self) -> None:
        if not self._in_flight:
            return
        grace = 0.0 if self._force else self.settings.shutdown_grace
        pending = set(self._in_flight)
        logger.info("Waiting up to %.1fs for %d in-flight task(s)", grace, len(pending))
        deadline = time.monotonic() + grace
        while pending and not self._force:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            _done, pending = await asyncio.wait(pending, timeout=min(left, 0.1))
        pending = {t for t in pending if not t.done()}
        if pending:
            # A task cancelled before its first step never reaches the handler
            # that abandons its message; let every one start first.
            await asyncio.sleep(0)
            logger.warning(
                "Cancelling %d task(s) still running; their messages are abandoned", len(pending)
            )
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

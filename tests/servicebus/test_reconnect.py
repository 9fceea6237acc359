"""Connection loss and shutdown with a real worker: nothing lost, settled work not run again."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from boilermaker import Boilermaker
from boilermaker.broker import ReceivedMessage
from boilermaker.emulator import QueueCounts, ServiceBusEmulator
from boilermaker.service_bus import AzureServiceBus, ServiceBusQueueReceiver
from boilermaker.worker import Worker
from tests.servicebus.conftest import sdk_leaks_dead_sockets, until


@dataclass
class Ledger:
    """What ran when, and which messages the broker confirmed as completed."""

    runs: list[tuple[int, float]] = field(default_factory=list)
    completed: dict[str, float] = field(default_factory=dict)

    def run_counts(self) -> Counter[int]:
        return Counter(n for n, _ in self.runs)


class LedgerBroker(AzureServiceBus):
    """Records every completion the broker confirmed, with its time."""

    ledger: Ledger

    def receiver(self, **kwargs: Any) -> ServiceBusQueueReceiver:
        made = super().receiver(**kwargs)
        complete = made.complete

        async def recording_complete(message: ReceivedMessage) -> None:
            await complete(message)
            self.ledger.completed.setdefault(message.message_id, time.monotonic())

        made.complete = recording_complete  # type: ignore[method-assign]
        return made


def ledger_broker(emulator: ServiceBusEmulator, queue: str, ledger: Ledger) -> LedgerBroker:
    broker = LedgerBroker.from_connection_string(emulator.connection_string, queue)
    assert isinstance(broker, LedgerBroker)
    broker.ledger = ledger
    return broker


@sdk_leaks_dead_sockets
async def test_worker_survives_connection_loss_without_losing_or_rerunning_settled_work(
    new_queue: Callable[..., str], servicebus_emulator: ServiceBusEmulator
) -> None:
    queue = new_queue(lock_duration=1.5, max_delivery_count=10)
    ledger = Ledger()
    broker = ledger_broker(servicebus_emulator, queue, ledger)
    publisher_broker = AzureServiceBus.from_connection_string(
        servicebus_emulator.connection_string, queue
    )

    async def work(state: object, n: int) -> None:
        ledger.runs.append((n, time.monotonic()))
        await asyncio.sleep(0.1)

    app = Boilermaker({}, service_bus_client=broker)
    app.register_async(work)
    publisher = Boilermaker({}, service_bus_client=publisher_broker)
    publisher.register_async(work)
    ids: dict[str, int] = {}

    async def publish(numbers: range) -> None:
        tasks = await publisher.apply_many(work, [(n,) for n in numbers], publish_attempts=6)
        ids.update({str(t.task_id): n for n in numbers for t in tasks if t.args == [n]})

    await publish(range(0, 40))
    worker = app.worker(concurrency=8, install_signal_handlers=False, shutdown_grace=5)
    running = asyncio.create_task(worker.run())
    # Per drop: when, the ids completed before it, tasks running, messages locked.
    drops: list[tuple[float, set[str], int, int]] = []

    def drop() -> None:
        settled, running_tasks = set(ledger.completed), worker.in_flight
        locked = servicebus_emulator.counts(queue).locked
        dropped_at = time.monotonic()
        assert servicebus_emulator.drop_connections() >= 2
        # Messages delivered to the worker and not settled: running, awaiting
        # settlement, or prefetched (any of them may be run again).
        locked = max(locked, servicebus_emulator.counts(queue).locked)
        drops.append((dropped_at, settled, running_tasks, locked))

    try:
        # Drop every connection mid-stream.
        await until(lambda: len(ledger.completed) >= 12, 20, "12 completions")
        drop()

        await publish(range(40, 60))
        await until(lambda: len(ledger.completed) >= 40, 30, "40 completions")

        # Drop again, and refuse to let anyone back in for two seconds.
        servicebus_emulator.refuse_connections(2)
        drop()
        await publish(range(60, 80))

        await until(lambda: set(ledger.completed) >= set(ids), 40, "every task completed")
    finally:
        worker.stop()
        await running
        await broker.close()
        await publisher_broker.close()

    assert len(ids) == 80
    counts = ledger.run_counts()
    assert set(counts) == set(range(80)), "some tasks never ran"
    for dropped_at, settled, _, _ in drops:
        for message_id in settled:
            n = ids[message_id]
            again = [t for m, t in ledger.runs if m == n and t > dropped_at]
            assert not again, f"task {n} was settled before a drop and ran again"
    extra = sum(c - 1 for c in counts.values())
    running_at_drops = sum(r for _, _, r, _ in drops)
    locked_at_drops = sum(locked for _, _, _, locked in drops)
    print(
        f"\nreconnect: {extra} extra run(s) of 80 tasks; at the {len(drops)} drops "
        f"{running_at_drops} task(s) were running and {locked_at_drops} message(s) were "
        "delivered and unsettled (running, settling or prefetched)"
    )
    assert extra <= locked_at_drops
    assert worker.stats.dead_lettered == 0
    assert servicebus_emulator.counts(queue) == QueueCounts(0, 0, 0, 0, 0)


async def test_stop_abandons_in_flight_tasks_and_a_second_worker_finishes_them(
    new_queue: Callable[..., str],
    make_broker: Callable[..., AzureServiceBus],
    servicebus_emulator: ServiceBusEmulator,
) -> None:
    # A long lock: only the abandon on shutdown can make these available again quickly.
    queue = new_queue(lock_duration=60, max_delivery_count=5)
    block = asyncio.Event()
    runs: list[tuple[int, int]] = []

    async def job(state: object, n: int) -> None:
        runs.append((n, len(runs)))
        if not block.is_set():
            await asyncio.sleep(60)

    def app_on(broker: AzureServiceBus) -> Boilermaker:
        app = Boilermaker({}, service_bus_client=broker)
        app.register_async(job)
        return app

    first = app_on(make_broker(queue))
    await first.apply_many(job, [(n,) for n in range(4)])
    worker = first.worker(concurrency=4, install_signal_handlers=False, shutdown_grace=0.2)
    running = asyncio.create_task(worker.run())
    await until(lambda: len(runs) == 4, 15, "four tasks running")
    worker.stop()
    await asyncio.wait_for(running, 15)
    assert worker.stats.abandoned == 4
    assert worker.stats.succeeded == 0
    assert servicebus_emulator.counts(queue) == QueueCounts(4, 0, 0, 0, 0)

    block.set()
    second = app_on(make_broker(queue))
    finisher: Worker = await second.run_until_idle(timeout=15, concurrency=4)
    assert finisher.stats.succeeded == 4
    assert sorted(n for n, _ in runs) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert servicebus_emulator.counts(queue) == QueueCounts(0, 0, 0, 0, 0)

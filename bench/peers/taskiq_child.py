"""taskiq-service-bus on the emulator, run by its own interpreter for bench/peers_bench.py.

    .bench/peers/taskiq/bin/python bench/peers/taskiq_child.py work|publish \\
        --conn CONNECTION_STRING --queue QUEUE --n N

Uses only taskiq's and taskiq-service-bus's public API (and, to pre-send the
messages the worker consumes, the azure-servicebus SDK they depend on); it
never imports boilermaker. It prints one JSON line: ``seconds``, ``cpu``
(this process's CPU seconds over the same window) and counts, or ``error``.

``work``: N messages in taskiq's own format (``broker.formatter`` of a
``TaskiqMessage``, with the application properties ``kick`` would set) are
pre-sent in batches, untimed; then the worker consumes them with a no-op task.
The worker is taskiq's in-process receiver, ``taskiq.api.run_receiver_task``,
at its defaults, which are the ``taskiq worker`` command's defaults for one
process: ``max_async_tasks=100``, ``max_prefetch=0``, acknowledgement
``when_saved`` (after the result is stored; the broker's ack is
``complete_message``). ``taskiq worker`` itself would start 2 such processes.
The broker's receiver is the SDK's with ``prefetch_count`` 0 and an
``AutoLockRenewer``, iterated one message at a time. The window runs from the
first task handled to the last; afterwards the script waits (peeking) until
the queue is empty, so that the last completes land before it shuts down.

``publish``: ``await task.kiq(i)`` N times one after another; the window runs
from creating the broker (``ServiceBusBroker(...)`` then ``startup()``) to the
last ``kiq`` returned. ``kick`` opens a new ``ServiceBusClient`` and sender for
every message, so every publish pays a connection open.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
import traceback
import uuid
from typing import Any

from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient
from child_common import ErrorLog, Window, describe, wait_until_empty
from taskiq import TaskiqMessage
from taskiq.api import run_receiver_task
from taskiq_service_bus import ServiceBusBroker

#: taskiq's own defaults for one worker process (``taskiq worker --help``).
SETTINGS = {
    "processes": 1,
    "max_async_tasks": 100,
    "max_prefetch": 0,
    "sdk_prefetch": 0,
    "ack": "when_saved",
}
TASK_NAME = "bench:noop"


async def presend(conn: str, queue: str, n: int) -> None:
    """Send ``n`` no-op task messages as ``ServiceBusBroker.kick`` would, but batched."""
    formatter = ServiceBusBroker(conn, queue).formatter
    async with (
        ServiceBusClient.from_connection_string(conn) as client,
        client.get_queue_sender(queue) as sender,
    ):
        batch = await sender.create_message_batch()
        for i in range(n):
            task_id = uuid.uuid4().hex
            dumped = formatter.dumps(
                TaskiqMessage(task_id=task_id, task_name=TASK_NAME, labels={}, args=[i], kwargs={})
            )
            message = ServiceBusMessage(
                dumped.message,
                application_properties={"__task_id": task_id, "__task_name": TASK_NAME},
            )
            try:
                batch.add_message(message)
            except ValueError:
                await sender.send_messages(batch)
                batch = await sender.create_message_batch()
                batch.add_message(message)
        if len(batch):
            await sender.send_messages(batch)


async def work(args: argparse.Namespace, errors: ErrorLog) -> dict[str, Any]:
    """Pre-send, then consume ``args.n`` messages with taskiq's worker at its defaults."""
    await presend(args.conn, args.queue, args.n)
    window = Window(args.n)
    broker = ServiceBusBroker(args.conn, args.queue)

    @broker.task(task_name=TASK_NAME)
    async def noop(i: int) -> None:
        window.hit()

    broker.is_worker_process = True
    await broker.startup()
    worker = asyncio.create_task(run_receiver_task(broker))
    stalled = None
    try:
        await asyncio.wait_for(window.all_handled.wait(), args.timeout)
    except TimeoutError:
        stalled = f"only {window.handled} of {args.n} tasks handled in {args.timeout:.0f} s"
    settle_wait = await wait_until_empty(args.conn, args.queue, 10 if stalled is None else 0)
    worker.cancel()
    try:
        await asyncio.wait_for(worker, 10)
    except (asyncio.CancelledError, TimeoutError):
        pass
    await broker.shutdown()
    out: dict[str, Any] = {
        "seconds": window.last - window.first,
        "cpu": window.cpu1 - window.cpu0,
        "handled": window.handled,
        "settle_wait": settle_wait,
        "settings": SETTINGS,
    }
    if stalled is not None:
        out["error"] = "; ".join([stalled, *errors.seen])
    return out


async def publish(args: argparse.Namespace, errors: ErrorLog) -> dict[str, Any]:
    """``await task.kiq(i)`` ``args.n`` times, timed from creating the broker."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    broker = ServiceBusBroker(args.conn, args.queue)

    @broker.task(task_name=TASK_NAME)
    async def noop(i: int) -> None:
        pass

    await broker.startup()
    first = 0.0
    for i in range(args.n):
        await noop.kiq(i)
        if i == 0:
            first = time.perf_counter()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    await broker.shutdown()
    return {
        "seconds": seconds,
        "cpu": cpu,
        "published": args.n,
        "first_publish_seconds": first - t0,
        "seconds_after_first": t0 + seconds - first,
        "settings": {"client": "new client + sender per kiq"},
    }


def main() -> None:
    """Parse the arguments, run the mode and print its JSON line (``error`` on failure)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("mode", choices=["work", "publish"])
    parser.add_argument("--conn", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for tasks")
    args = parser.parse_args()
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    run = {"work": work, "publish": publish}[args.mode]
    try:
        result = asyncio.run(run(args, errors))
    except Exception as exc:
        traceback.print_exc()
        result = {"error": describe(exc)}
    result.update(peer="taskiq", mode=args.mode, n=args.n)
    print(json.dumps(result), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()

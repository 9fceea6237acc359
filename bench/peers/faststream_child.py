"""faststream-azure-servicebus on the emulator, run by its own interpreter for bench/peers_bench.py.

    .bench/peers/faststream/bin/python bench/peers/faststream_child.py work|publish \\
        --conn CONNECTION_STRING --queue QUEUE --n N

Uses only FastStream's and faststream-azure-servicebus's public API (and the
azure-servicebus SDK they depend on, to wait for the queue to empty); it never
imports boilermaker. It prints one JSON line: ``seconds``, ``cpu`` (this
process's CPU seconds over the same window) and counts, or ``error``.

``work``: N integers are pre-sent with the broker's ``publish_batch`` (untimed);
then a ``@broker.subscriber(queue)`` with a no-op handler consumes them at the
subscriber's defaults: ``prefetch_count=1`` (which is also how many messages
one ``receive_messages`` call asks for), ``max_workers=1`` (one handler at a
time), ``max_wait_time=5``, lock renewal for up to 300 s, ``AckPolicy.
REJECT_ON_ERROR`` (complete after the handler returns, dead-letter if it
raises). The broker's default logging is left as shipped (an INFO line per
message received and processed, to stdout); ``--quiet`` passes ``logger=None``.
The window runs from the first message handled to the last; afterwards the
script waits (peeking) until the queue is empty, so that the last completes
land before the broker stops.

``publish``: ``await broker.publish(i, queue=queue)`` N times one after
another; the window runs from creating the broker (``ServiceBusBroker(...)``
then ``start()``) to the last publish returned. The broker keeps one client
and one cached sender per queue.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
import traceback
from typing import Any

from child_common import ErrorLog, Window, describe, wait_until_empty
from faststream_azure_servicebus import ServiceBusBroker

#: The subscriber's defaults (``ServiceBusBroker.subscriber``'s signature).
SETTINGS = {
    "max_workers": 1,
    "prefetch_count": 1,
    "max_wait_time": 5.0,
    "max_lock_renewal_duration": 300.0,
    "ack_policy": "REJECT_ON_ERROR",
}


def broker_for(conn: str, quiet: bool) -> ServiceBusBroker:
    """A broker on the emulator's connection string; ``logger=None`` when quiet."""
    if quiet:
        return ServiceBusBroker(conn, logger=None)
    return ServiceBusBroker(conn)


async def presend(conn: str, queue: str, n: int) -> None:
    """Send the integers ``0..n-1`` with the broker's own batch publish."""
    broker = ServiceBusBroker(conn, logger=None)
    await broker.start()
    try:
        for start in range(0, n, 1000):
            await broker.publish_batch(*range(start, min(n, start + 1000)), queue=queue)
    finally:
        await broker.stop()


async def work(args: argparse.Namespace, errors: ErrorLog) -> dict[str, Any]:
    """Pre-send, then consume ``args.n`` messages with a default subscriber."""
    await presend(args.conn, args.queue, args.n)
    window = Window(args.n)
    broker = broker_for(args.conn, args.quiet)

    @broker.subscriber(args.queue)
    async def noop(body: int) -> None:
        window.hit()

    await broker.start()
    stalled = None
    try:
        await asyncio.wait_for(window.all_handled.wait(), args.timeout)
    except TimeoutError:
        stalled = f"only {window.handled} of {args.n} messages handled in {args.timeout:.0f} s"
    settle_wait = await wait_until_empty(args.conn, args.queue, 10 if stalled is None else 0)
    await broker.stop()
    out: dict[str, Any] = {
        "seconds": window.last - window.first,
        "cpu": window.cpu1 - window.cpu0,
        "handled": window.handled,
        "settle_wait": settle_wait,
        "settings": {**SETTINGS, "logging": "off" if args.quiet else "INFO per message"},
    }
    if stalled is not None:
        out["error"] = "; ".join([stalled, *errors.seen])
    return out


async def publish(args: argparse.Namespace, errors: ErrorLog) -> dict[str, Any]:
    """``await broker.publish(i, queue=...)`` ``args.n`` times, timed from creating the broker."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    broker = broker_for(args.conn, args.quiet)
    await broker.start()
    first = 0.0
    for i in range(args.n):
        await broker.publish(i, queue=args.queue)
        if i == 0:
            first = time.perf_counter()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    await broker.stop()
    return {
        "seconds": seconds,
        "cpu": cpu,
        "published": args.n,
        "first_publish_seconds": first - t0,
        "seconds_after_first": t0 + seconds - first,
        "settings": {"client": "one client, cached sender per queue"},
    }


def main() -> None:
    """Parse the arguments, run the mode and print its JSON line (``error`` on failure)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("mode", choices=["work", "publish"])
    parser.add_argument("--conn", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for messages")
    parser.add_argument("--quiet", action="store_true", help="the broker with logger=None")
    args = parser.parse_args()
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    run = {"work": work, "publish": publish}[args.mode]
    try:
        result = asyncio.run(run(args, errors))
    except Exception as exc:
        traceback.print_exc()
        result = {"error": describe(exc)}
    result.update(peer="faststream", mode=args.mode, n=args.n)
    print(json.dumps(result), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    raise SystemExit(main())

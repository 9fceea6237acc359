"""The soak's worker process: ``python -m bench.soak_worker`` runs ``app.run()`` until SIGTERM.

Its app is built from the environment:

- ``SOAK_SB_CONNECTION_STRING``, ``SOAK_QUEUE``: the Service Bus queue;
- ``SOAK_BLOB_CONNECTION_STRING``, ``SOAK_CONTAINER``: the results store
  (only for graphs; without them the worker has no store);
- ``SOAK_EVENTS``: this process's event file (see :class:`EventLog`);
- ``SOAK_CONCURRENCY``: tasks in flight (default 16).

Every run of a task function is written to the event file as it happens, one
line per event, each line one ``write(2)`` on a file opened ``O_APPEND``: the
kernel has the line as soon as the call returns, so it survives SIGKILL.

- ``W -``: the worker is about to receive its first message;
- ``D key|sequence number|delivery count|lock seconds left``: the delivery
  that is about to run the function (written once the worker's own hooks,
  the graph claim among them, have let it run); the lock's time left is
  taken when the worker took the message from its receiver, so a negative
  value means the lock had lapsed before the worker even looked at it;
- ``S key``: the function started;
- ``R key``: the function finished (returned, or raised by design);
- ``C key``: its message was settled (completed or dead-lettered) after the
  run; written by a middleware's ``after_settle``, so a run with ``S`` and no
  ``C`` was in flight when its process died or its settlement failed.

``key`` is the task's first argument: the task number for ``soak_task``, the
node name for ``graph_node``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any

from boilermaker import Boilermaker, RetryPolicy
from boilermaker.worker import MessageContext, Middleware, Outcome, Worker

STARTED, RETURNED, SETTLED, READY, DELIVERY = "S", "R", "C", "W", "D"


class EventLog:
    """Append-only event lines for one process; each line is a single ``write(2)``."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if path else None

    def write(self, kind: str, key: object) -> None:
        if self._fd is not None:
            os.write(self._fd, f"{kind} {key}\n".encode())

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


async def soak_task(state: EventLog, n: int, sleep: float = 0.0) -> None:
    """One soak task: records that it started, sleeps, records that it returned."""
    state.write(STARTED, n)
    await asyncio.sleep(sleep)
    state.write(RETURNED, n)


async def graph_node(state: EventLog, name: str, sleep: float = 0.0, fail: bool = False) -> str:
    """One graph node: records its run, sleeps, then succeeds or fails (no retries)."""
    state.write(STARTED, name)
    if sleep:
        await asyncio.sleep(sleep)
    if fail:
        state.write(RETURNED, name)
        raise ValueError(f"{name} fails by design")
    state.write(RETURNED, name)
    return name


class SettleLog(Middleware):
    """Writes ``W -`` when the worker starts, ``D ...`` for the delivery about to run,
    and ``C key`` once a message whose task ran has been settled."""

    def __init__(self, log: EventLog) -> None:
        self.log = log

    async def on_worker_start(self, worker: Worker) -> None:
        self.log.write(READY, "-")

    async def on_receive(self, ctx: MessageContext) -> None:
        until = ctx.message.locked_until
        if until is not None:
            ctx.notes["soak_lock_left"] = (until - datetime.now(UTC)).total_seconds()

    async def before_task(self, ctx: MessageContext) -> Outcome | None:
        if ctx.task is not None and ctx.task.args:
            m = ctx.message
            left = ctx.notes.get("soak_lock_left")
            where = f"{ctx.task.args[0]}|{m.sequence_number}|{m.delivery_count}|"
            self.log.write(DELIVERY, where + ("" if left is None else f"{left:.2f}"))
        return None

    async def after_settle(self, ctx: MessageContext) -> None:
        if ctx.ran and ctx.settled and ctx.task is not None and ctx.task.args:
            self.log.write(SETTLED, ctx.task.args[0])


def build_app(broker: Any, store: Any = None, log: EventLog | None = None) -> Boilermaker:
    """The soak's app: ``soak_task`` and ``graph_node`` registered, ``SettleLog`` added."""
    log = log if log is not None else EventLog(None)
    app = Boilermaker(log, broker, results_storage=store, middleware=[SettleLog(log)])
    app.register_async(soak_task, policy=RetryPolicy(max_tries=5, delay=1))
    app.register_async(graph_node, policy=RetryPolicy.no_retry())
    return app


async def main() -> None:
    from boilermaker.service_bus import AzureServiceBus

    env = os.environ
    broker = AzureServiceBus.from_connection_string(
        env["SOAK_SB_CONNECTION_STRING"], env["SOAK_QUEUE"]
    )
    store = None
    if env.get("SOAK_BLOB_CONNECTION_STRING"):
        from boilermaker.storage import BlobClientStorage

        store = BlobClientStorage.from_connection_string(
            env["SOAK_BLOB_CONNECTION_STRING"], env["SOAK_CONTAINER"]
        )
    log = EventLog(env.get("SOAK_EVENTS"))
    app = build_app(broker, store, log)
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("boilermaker").setLevel(logging.WARNING)
    try:
        await app.run(concurrency=int(env.get("SOAK_CONCURRENCY", "16")), shutdown_grace=5.0)
    finally:
        await app.close()
        log.close()


if __name__ == "__main__":
    asyncio.run(main())

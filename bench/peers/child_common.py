"""What the peer child scripts share (standard library and azure-servicebus only).

Each child runs in its peer's own interpreter with its directory first on
``sys.path``, so ``import child_common`` finds this file; it never imports
boilermaker.
"""

from __future__ import annotations

import asyncio
import logging
import time

from azure.servicebus.aio import ServiceBusClient


class ErrorLog(logging.Handler):
    """Keeps the first few warnings and errors logged, to explain a run that stalls."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.seen) < 5:
            text = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                text += f" [{type(exc).__name__}: {exc}]"
            self.seen.append(f"{record.name}: {text}"[:400])


class Window:
    """When the first and the last of ``n`` tasks (messages) were handled, and the CPU between."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.handled = 0
        self.first = self.last = 0.0
        self.cpu0 = self.cpu1 = 0.0
        self.all_handled = asyncio.Event()

    def hit(self) -> None:
        now = time.perf_counter()
        if self.handled == 0:
            self.first, self.cpu0 = now, time.process_time()
        self.handled += 1
        self.last = now
        if self.handled == self.n:
            self.cpu1 = time.process_time()
            self.all_handled.set()


async def wait_until_empty(conn: str, queue: str, timeout: float) -> float:
    """Peek until no message (active or locked) is left; seconds waited."""
    started = time.perf_counter()
    async with (
        ServiceBusClient.from_connection_string(conn) as client,
        client.get_queue_receiver(queue) as receiver,
    ):
        while time.perf_counter() - started < timeout:
            if not await receiver.peek_messages(max_message_count=1):
                break
            await asyncio.sleep(0.05)
    return time.perf_counter() - started


def describe(exc: BaseException) -> str:
    """The exception and what caused it (``raise ... from``), on one line."""
    parts = []
    seen: BaseException | None = exc
    while seen is not None and len(parts) < 4:
        parts.append(f"{type(seen).__name__}: {seen}")
        seen = seen.__cause__ or seen.__context__
    return " <- ".join(parts)[:800]

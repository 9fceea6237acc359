"""Keeps the locks of in-flight messages alive while their tasks run.

One coroutine per worker looks at every tracked message and renews each lock
when less than half of its duration is left, until the task ends or the
message has been held for ``max_lock_renewal`` seconds. A warning is logged
when a task nears that limit; a lock that cannot be renewed is logged with
the task id and marked lost, so settlement knows not to expect success.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from boilermaker.broker import BrokerError, MessageLockLost, ReceivedMessage, Receiver
from boilermaker.worker.settings import WorkerSettings, WorkerStats

logger = logging.getLogger("boilermaker.app")

MIN_TICK = 0.05
MAX_TICK = 5.0


@dataclass(slots=True)
class _Held:
    message: ReceivedMessage
    label: str
    since: float
    duration: float
    expires: float
    limit: float
    warned: bool = False
    lost: bool = False
    gave_up: bool = False


class LockRenewer:
    """Renews peek-lock locks of messages whose tasks are still running."""

    def __init__(self, receiver: Receiver, settings: WorkerSettings, stats: WorkerStats) -> None:
        self._receiver = receiver
        self._settings = settings
        self._stats = stats
        self._held: dict[int, _Held] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._next_round = 0.0  # monotonic time of the renewer's next round

    def start(self) -> None:
        """Start the renewal coroutine."""
        self._task = asyncio.create_task(self._run(), name="boilermaker-lock-renewer")

    async def stop(self) -> None:
        """Stop renewing."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def track(self, message: ReceivedMessage, label: str, limit: float | None = None) -> None:
        """Start keeping ``message``'s lock alive for up to ``limit`` seconds (default
        ``max_lock_renewal``); no-op without a lock."""
        if message.locked_until is None or message.lock_token is None:
            return
        now = time.monotonic()
        left = (message.locked_until - datetime.now(UTC)).total_seconds()
        duration = max(left, MIN_TICK * 4)
        held = _Held(
            message,
            label,
            now,
            duration,
            now + left,
            limit if limit is not None else self._settings.max_lock_renewal,
        )
        self._held[id(message)] = held
        # Wake the renewer only if this lock is due before its next round.
        if self._due(held) < self._next_round:
            self._wake.set()

    def untrack(self, message: ReceivedMessage) -> bool:
        """Stop renewing; returns True if the lock was seen to be lost."""
        held = self._held.pop(id(message), None)
        return bool(held and held.lost)

    async def _run(self) -> None:
        while True:
            tick = self._next_tick()
            self._next_round = time.monotonic() + tick
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), tick)
            except TimeoutError:
                pass
            await self._renew_due()

    def _due(self, held: _Held) -> float:
        """When ``held`` next needs a look: its renewal, or its renewal limit's warning or end.

        Rounds are planned for the limits too, so the warning and the give-up
        do not wait for the next renewal (half a lock duration away).
        """
        limit = held.limit
        due = min(held.expires - held.duration / 2, held.since + limit)
        if not held.warned:
            due = min(due, held.since + limit * self._settings.lock_renewal_warning)
        return due

    def _next_tick(self) -> float:
        if not self._held:
            return MAX_TICK
        now = time.monotonic()
        soonest = MAX_TICK
        for held in self._held.values():
            if not (held.lost or held.gave_up):
                soonest = min(soonest, self._due(held) - now)
        return min(MAX_TICK, max(MIN_TICK, soonest))

    async def _renew_due(self) -> None:
        now = time.monotonic()
        due = []
        for held in list(self._held.values()):
            if held.lost or held.gave_up:
                continue
            limit = held.limit
            running = now - held.since
            if not held.warned and running >= limit * self._settings.lock_renewal_warning:
                held.warned = True
                logger.warning(
                    "%s has run %.0fs, nearing the lock renewal limit of %.0fs; it will be "
                    "cancelled if it runs past its time limit",
                    held.label,
                    running,
                    limit,
                )
            if running >= limit:
                held.gave_up = True
                logger.error(
                    "%s reached the lock renewal limit (%.0fs); no longer renewing its lock",
                    held.label,
                    limit,
                )
                continue
            if held.expires - now <= held.duration / 2:
                due.append(held)
        if due:
            await asyncio.gather(*(self._renew(h) for h in due))

    async def _renew(self, held: _Held) -> None:
        try:
            until = await self._receiver.renew_lock(held.message)
        except MessageLockLost as exc:
            held.lost = True
            self._stats.locks_lost += 1
            logger.error("Lost the lock of %s: %s", held.label, exc)
            return
        except (BrokerError, OSError, RuntimeError) as exc:
            logger.warning("Renewing the lock of %s failed (%s); will try again", held.label, exc)
            return
        self._stats.lock_renewals += 1
        left = (until - datetime.now(UTC)).total_seconds()
        held.expires = time.monotonic() + left

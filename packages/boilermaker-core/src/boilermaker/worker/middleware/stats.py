"""Counting what a worker did (``WorkerStats``), from each message's outcome and verdict."""

from __future__ import annotations

from boilermaker.task.status import TaskStatus
from boilermaker.worker.middleware import MessageContext, Middleware
from boilermaker.worker.settings import WorkerStats
from boilermaker.worker.verdict import Action, Kind


class StatsMiddleware(Middleware):
    """Keeps :class:`WorkerStats` (settlement and lock counts are the worker's own)."""

    def __init__(self, stats: WorkerStats) -> None:
        self.stats = stats

    async def on_receive(self, ctx: MessageContext) -> None:
        self.stats.received += 1

    async def on_dead_letter(self, ctx: MessageContext) -> None:
        assert ctx.verdict is not None
        reason = ctx.verdict.reason or "unknown"
        self.stats.dead_lettered += 1
        self.stats.by_reason[reason] = self.stats.by_reason.get(reason, 0) + 1

    async def after_settle(self, ctx: MessageContext) -> None:
        outcome, verdict = ctx.outcome, ctx.verdict
        if verdict is None:
            return
        stats = self.stats
        if verdict.action is Action.ABANDON:
            stats.abandoned += 1
        if outcome is None:
            return
        if outcome.kind is Kind.CONTROL:
            stats.control_messages += 1
        elif outcome.kind is Kind.DUPLICATE:
            stats.duplicates_skipped += 1
        if verdict.status is TaskStatus.Success:
            stats.succeeded += 1
        elif verdict.status in (TaskStatus.Failure, TaskStatus.RetriesExhausted) and ctx.ran:
            stats.failed += 1
        if verdict.status is TaskStatus.RetriesExhausted:
            stats.retries_exhausted += 1
        if verdict.action is Action.RETRY:
            stats.retried += 1

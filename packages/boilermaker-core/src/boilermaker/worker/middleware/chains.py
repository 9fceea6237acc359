"""Chains: a task's ``on_success`` / ``on_failure`` task is published when it ends.

Graph nodes carry no chain callbacks (the builder turns them into edges), so
this concerns standalone tasks only. The next task is published before the
message is settled: if the worker dies in between, the redelivered message
runs again and publishes it again (same message id: duplicate detection drops
the copy).
"""

from __future__ import annotations

from boilermaker.publishing import FOLLOW_UP_ATTEMPTS, Publication, Publisher
from boilermaker.task.status import TaskStatus
from boilermaker.worker.middleware import MessageContext, Middleware


class ChainsMiddleware(Middleware):
    """Publishes chain callbacks."""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher

    async def on_success(self, ctx: MessageContext) -> None:
        task = ctx.task
        if task is not None and not task.graph_id and task.on_success is not None:
            await self.publisher.publish([Publication(task.on_success)], FOLLOW_UP_ATTEMPTS)

    async def on_failure(self, ctx: MessageContext) -> None:
        task, verdict = ctx.task, ctx.verdict
        if task is None or task.graph_id or task.on_failure is None or not ctx.ran:
            return
        if verdict is not None and verdict.status in (
            TaskStatus.Failure,
            TaskStatus.RetriesExhausted,
        ):
            await self.publisher.publish([Publication(task.on_failure)], FOLLOW_UP_ATTEMPTS)

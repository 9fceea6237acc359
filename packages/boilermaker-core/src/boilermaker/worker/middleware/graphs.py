"""Graphs: claiming a node before it runs, recording its outcome and continuing the graph.

The protocol itself (claims, arrivals, dispatch) is in
:mod:`boilermaker.graph_dispatch`; this module is where a worker takes part
in it. A node runs only if its claim says so; a redelivered message for a
finished node only repeats the continuation. Everything is written before
the message is settled.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from boilermaker.graph_dispatch import GraphRuntime
from boilermaker.task.status import TaskStatus
from boilermaker.worker.middleware import MessageContext, Middleware
from boilermaker.worker.middleware.results import errors_of, formatted_exception
from boilermaker.worker.verdict import Kind, Outcome

logger = logging.getLogger("boilermaker.app")


class GraphsMiddleware(Middleware):
    """Graph nodes' claims, outcomes and continuations."""

    def __init__(self, graphs: GraphRuntime) -> None:
        self.graphs = graphs

    async def before_task(self, ctx: MessageContext) -> Outcome | None:
        task = ctx.task
        if task is None or not task.graph_id:
            return None
        graph = await self.graphs.load(task.graph_id)
        if graph is None or task.task_id not in graph.tasks:
            return Outcome(
                Kind.NOT_SERVABLE,
                description=f"graph {task.graph_id} or its task {task.task_id} is not stored",
            )
        claim = await self.graphs.claim(task, ctx.message.sequence_number, ctx.message.message_id)
        if claim.kind == "run":
            return None
        if claim.kind == "finished" and claim.record is not None:
            logger.info("%s already finished; continuing its graph only", ctx.label)
            await self.graphs.continue_from(graph, task.task_id, claim.record, repeat=True)
            return Outcome(Kind.ALREADY_FINISHED)
        if claim.kind == "missing":
            return Outcome(
                Kind.NOT_SERVABLE,
                description=f"graph {task.graph_id} has no record for task {task.task_id}",
            )
        logger.info("%s: %s message, not running", ctx.label, claim.kind)
        return Outcome(Kind.DUPLICATE, description=claim.kind)

    async def on_retry(self, ctx: MessageContext) -> None:
        task = ctx.task
        if task is None or not task.graph_id or ctx.retry_message_id is None:
            return
        retry_at = datetime.now(UTC) + timedelta(seconds=ctx.retry_delay)
        await self.graphs.mark_retry(task, ctx.retry_message_id, retry_at)

    async def on_success(self, ctx: MessageContext) -> None:
        await self._finish(ctx)

    async def on_failure(self, ctx: MessageContext) -> None:
        await self._finish(ctx)

    async def _finish(self, ctx: MessageContext) -> None:
        task, verdict = ctx.task, ctx.verdict
        if task is None or not task.graph_id or verdict is None or verdict.status is None:
            return
        if not verdict.status.finished:
            return
        graph = await self.graphs.load(task.graph_id)
        if graph is None or task.task_id not in graph.tasks:
            return
        success = verdict.status is TaskStatus.Success
        outcome = ctx.outcome
        record = await self.graphs.finish(
            task,
            verdict.status,
            result=outcome.result if success and outcome is not None else None,
            errors=None if success else errors_of(outcome, verdict),
            formatted_exception=None if success else formatted_exception(outcome),
        )
        if record is not None and record.status.finished:
            await self.graphs.continue_from(graph, task.task_id, record)


class NoGraphsMiddleware(Middleware):
    """On a worker without a results store: graph tasks are refused on first delivery."""

    async def before_task(self, ctx: MessageContext) -> Outcome | None:
        task = ctx.task
        if task is None or not task.graph_id:
            return None
        return Outcome(
            Kind.NOT_SERVABLE,
            description=(
                f"task {task.task_id} belongs to graph {task.graph_id}, and this worker has "
                "no results store to run graphs with (Boilermaker(..., results_storage=...))"
            ),
        )

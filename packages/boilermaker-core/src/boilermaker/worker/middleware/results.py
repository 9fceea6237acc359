"""Results: a standalone task's outcome written to the results store.

Written before the message is settled, under the published layout
(``task-results/{task_id}/{task_id}.json``); a retry is recorded as Retry
before its message is published, so a fast retry's final result is never
overwritten. A success whose return value is not JSON is a failure of the
task (it could never be read back), decided here, before the verdict.
Graph nodes are recorded by :mod:`.graphs`.
"""

from __future__ import annotations

import traceback

from boilermaker.results import NodeRecord, Records, result_value, standalone_blob
from boilermaker.results_store import ResultsStore
from boilermaker.task.status import TaskStatus
from boilermaker.worker.middleware import MessageContext, Middleware
from boilermaker.worker.verdict import Kind, Outcome, Verdict


def errors_of(outcome: Outcome | None, verdict: Verdict | None) -> list[str] | None:
    """The ``errors`` field of a record: the verdict's description, else the error."""
    if verdict is not None and verdict.description:
        return [verdict.description]
    if outcome is not None and outcome.error is not None:
        return [f"{type(outcome.error).__name__}: {outcome.error}"]
    return None


def formatted_exception(outcome: Outcome | None) -> str | None:
    """The ``formatted_exception`` field of a record (the traceback's last 8000 chars)."""
    if outcome is None or outcome.error is None:
        return None
    return "".join(traceback.format_exception(outcome.error))[-8000:]


class ResultsMiddleware(Middleware):
    """Records standalone tasks' outcomes in a results store."""

    def __init__(self, store: ResultsStore) -> None:
        self.records = Records(store)

    async def after_task(self, ctx: MessageContext, outcome: Outcome) -> Outcome | None:
        if outcome.kind is not Kind.SUCCEEDED or ctx.task is None:
            return None
        try:
            result_value(outcome.result)
        except (TypeError, ValueError) as exc:
            return Outcome(
                Kind.FAILED,
                description=(
                    f"result of {ctx.task.function_name!r} is not JSON-serializable "
                    f"({type(outcome.result).__name__}): {exc}"
                ),
            )
        return None

    async def on_success(self, ctx: MessageContext) -> None:
        await self._record(ctx, TaskStatus.Success)

    async def on_retry(self, ctx: MessageContext) -> None:
        await self._record(ctx, TaskStatus.Retry)

    async def on_failure(self, ctx: MessageContext) -> None:
        if ctx.verdict is not None and ctx.verdict.status is not None:
            await self._record(ctx, ctx.verdict.status)

    async def _record(self, ctx: MessageContext, status: TaskStatus) -> None:
        task = ctx.task
        if task is None or task.graph_id:
            return
        outcome = ctx.outcome
        success = status is TaskStatus.Success
        record = NodeRecord(
            task_id=task.task_id,
            status=status,
            result=outcome.result if success and outcome is not None else None,
            attempt=task.attempts.attempts,
            errors=None
            if success or status is TaskStatus.Retry
            else errors_of(outcome, ctx.verdict),
            formatted_exception=None if success else formatted_exception(outcome),
        )
        await self.records.put(standalone_blob(task.task_id), record, if_match=None)

"""Running one task from one message, and settling the message exactly as the outcome says.

The order is fixed so nothing is lost: follow-up work (chain callbacks,
retry messages, graph continuations, results) is published or recorded
before the message is settled. If the worker dies in between, the message
comes back and the follow-up steps, all idempotent, are repeated.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import Span

from boilermaker.broker import BrokerError, MessageLockLost, ReceivedMessage, Receiver
from boilermaker.envelope import decode_task, is_wrapped
from boilermaker.exceptions import InvalidTaskFormat
from boilermaker.publishing import FOLLOW_UP_ATTEMPTS, Publication
from boilermaker.results import NodeRecord, Records, result_value, standalone_blob
from boilermaker.retries import RetryException
from boilermaker.task.status import TaskFailureResult, TaskStatus
from boilermaker.task.task import Task
from boilermaker.worker import dead_letter
from boilermaker.worker.current import CurrentMessage, current_message
from boilermaker.worker.lock_renewer import LockRenewer
from boilermaker.worker.settings import WorkerSettings, WorkerStats

if TYPE_CHECKING:
    from boilermaker.app import Boilermaker

logger = logging.getLogger("boilermaker.app")


@dataclass(slots=True)
class Outcome:
    """How a run ended."""

    status: TaskStatus
    result: Any = None
    error: BaseException | None = None
    description: str | None = None


class TaskRunner:
    """Runs tasks from messages of one receiver and settles them."""

    def __init__(
        self,
        app: Boilermaker,
        receiver: Receiver,
        renewer: LockRenewer,
        settings: WorkerSettings,
        stats: WorkerStats,
    ) -> None:
        self.app = app
        self.receiver = receiver
        self.renewer = renewer
        self.settings = settings
        self.stats = stats
        self._is_control = getattr(app.service_bus_client, "is_control_message", None)

    # -- entry point --------------------------------------------------------------------

    async def handle(self, message: ReceivedMessage) -> None:
        """Run the message's task and settle the message; never raises (except cancellation)."""
        self.stats.received += 1
        if self._is_control is not None and self._is_control(message):
            self.stats.control_messages += 1
            logger.debug("Completed control message %s", message.message_id)
            await self._settle("complete", message, "control message")
            return
        try:
            task = decode_task(message.body)
        except InvalidTaskFormat as exc:
            logger.error(
                "Dead-lettering undecodable message %s (sequence_number=%s): %s",
                message.message_id,
                message.sequence_number,
                exc,
            )
            await self._dead_letter(message, dead_letter.INVALID_TASK_FORMAT, str(exc), "message")
            return
        task.sequence_number = message.sequence_number
        label = f"[{task.function_name}] task {task.task_id}"
        self.renewer.track(message, label)
        # Each handler runs in its own asyncio task, so this is its own context.
        current_message.set(CurrentMessage(message, self.receiver))
        try:
            await self._handle_task(message, task, label)
        except asyncio.CancelledError:
            await self._abandon_after_cancel(message, label)
            raise
        except Exception:
            # A failure of our own bookkeeping (store or broker down): give the
            # message back so it is retried rather than lost.
            logger.exception("%s: processing failed; abandoning the message", label)
            await self._settle("abandon", message, label)
        finally:
            self.renewer.untrack(message)

    # -- the task -----------------------------------------------------------------------

    async def _handle_task(self, message: ReceivedMessage, task: Task, label: str) -> None:
        entry = self.app.registry.get(task.function_name)
        if entry is None:
            description = (
                f"function {task.function_name!r} is not registered on this worker "
                f"(registered: {', '.join(self.app.registry.names()) or 'none'})"
            )
            logger.error("%s: %s", label, description)
            if task.graph_id:
                await self._finish_graph_node(
                    task, Outcome(TaskStatus.Deadlettered, description=description)
                )
            await self._dead_letter(message, dead_letter.EXPECTATION_FAILED, description, label)
            return

        if not task.acks_late and not await self._settle("complete", message, label):
            logger.warning("%s: not running (acks_early and its message was lost)", label)
            return

        graph = None
        if task.graph_id:
            graph = await self.app.graphs.load(task.graph_id)
            if graph is None or task.task_id not in graph.tasks:
                description = f"graph {task.graph_id} or its task {task.task_id} is not stored"
                await self._dead_letter(message, dead_letter.EXPECTATION_FAILED, description, label)
                return
            claim = await self.app.graphs.claim(task, message.sequence_number, message.message_id)
            if claim.kind == "finished" and claim.record is not None:
                logger.info("%s already finished; continuing its graph only", label)
                await self.app.graphs.continue_from(graph, task.task_id, claim.record)
                await self._settle_if_late(task, "complete", message, label)
                return
            if claim.kind in ("skipped", "duplicate", "premature"):
                self.stats.duplicates_skipped += 1
                logger.info("%s: %s message, not running", label, claim.kind)
                await self._settle_if_late(task, "complete", message, label)
                return
            if claim.kind == "missing":
                description = f"graph {task.graph_id} has no record for task {task.task_id}"
                await self._dead_letter(message, dead_letter.EXPECTATION_FAILED, description, label)
                return

        task.attempts.inc()
        with self.app.tracing.run_span(
            task, message.application_properties, message.delivery_count
        ) as span:
            outcome = await self._run(task, entry.fn, message, span)
            # Follow-up messages (chain, retry, graph children) are published
            # inside the consumer span, so their traces continue this run's.
            await self._conclude(message, task, outcome, label)

    async def _run(
        self, task: Task, fn: Any, message: ReceivedMessage, span: Span | None
    ) -> Outcome:
        name = task.function_name
        logger.info("[%s] Begin Task sequence_number=%s", name, message.sequence_number)
        started = time.perf_counter()
        try:
            result = await fn(self.app.state, *task.args, **task.kwargs)
        except RetryException as exc:
            self.app.tracing.record_failure(span, exc)
            return Outcome(TaskStatus.Retry, error=exc)
        except Exception as exc:
            self.app.tracing.record_failure(span, exc)
            return Outcome(TaskStatus.Failure, error=exc)
        elapsed = time.perf_counter() - started
        if result is TaskFailureResult or isinstance(result, TaskFailureResult):
            reason = getattr(result, "reason", "task returned TaskFailureResult")
            return Outcome(TaskStatus.Failure, description=f"TaskFailureResult: {reason}")
        logger.info(
            "[%s] Completed Task sequence_number=%s in %.5fs",
            name,
            message.sequence_number,
            elapsed,
        )
        return Outcome(TaskStatus.Success, result=result)

    # -- outcomes -----------------------------------------------------------------------

    async def _conclude(
        self, message: ReceivedMessage, task: Task, outcome: Outcome, label: str
    ) -> None:
        if outcome.status is TaskStatus.Success and self._needs_result(task):
            try:
                result_value(outcome.result)
            except (TypeError, ValueError) as exc:
                outcome = Outcome(
                    TaskStatus.Failure,
                    description=(
                        f"result of {task.function_name!r} is not JSON-serializable "
                        f"({type(outcome.result).__name__}): {exc}"
                    ),
                )
        if outcome.status is TaskStatus.Success:
            await self._succeeded(message, task, outcome, label)
        elif outcome.status is TaskStatus.Retry:
            await self._retry(message, task, outcome, label)
        else:
            await self._failed(message, task, outcome, label, dead_letter.TASK_FAILED)

    def _needs_result(self, task: Task) -> bool:
        return self.app.results_storage is not None

    async def _succeeded(
        self, message: ReceivedMessage, task: Task, outcome: Outcome, label: str
    ) -> None:
        self.stats.succeeded += 1
        if task.graph_id:
            await self._finish_graph_node(task, outcome)
        else:
            await self._store_standalone(task, outcome)
            if task.on_success is not None:
                await self.app.publisher.publish([Publication(task.on_success)], FOLLOW_UP_ATTEMPTS)
        await self._settle_if_late(task, "complete", message, label)

    async def _retry(
        self, message: ReceivedMessage, task: Task, outcome: Outcome, label: str
    ) -> None:
        exc = outcome.error
        assert isinstance(exc, RetryException)
        if exc.policy is not None:
            task.policy = exc.policy
        attempts = task.attempts.attempts
        if not task.policy.can_retry(attempts):
            self.stats.retries_exhausted += 1
            logger.error(
                "%s: retries exhausted after %d attempt(s): %s", label, attempts, exc.msg or exc
            )
            exhausted = Outcome(
                TaskStatus.RetriesExhausted,
                error=exc,
                description=f"retries exhausted after {attempts} attempt(s): "
                f"{type(exc).__name__}: {exc}",
            )
            await self._failed(message, task, exhausted, label, dead_letter.PROCESSING_ERROR)
            return
        delay = task.get_next_delay()
        retry_id = task.retry_task_id
        retry_task = task.model_copy(deep=True)
        retry_task.sequence_number = None
        logger.warning(
            "%s: attempt %d asked for a retry (%s); next attempt in %ss",
            label,
            attempts,
            exc.msg or type(exc).__name__,
            delay,
        )
        # Recorded before the retry message exists, since the retry may run and
        # finish at once: a graph node would take that message for a duplicate
        # (the node still Started by this one) and never run again; a standalone
        # result would be overwritten with Retry after its final outcome.
        if task.graph_id:
            retry_at = datetime.now(UTC) + timedelta(seconds=delay)
            await self.app.graphs.mark_retry(task, retry_id, retry_at)
        elif self.app.results_storage is not None:
            await self._store_standalone(task, Outcome(TaskStatus.Retry))
        await self.app.publisher.publish(
            # The retry keeps the form of the message that asked for it.
            [Publication(retry_task, float(delay), retry_id, wrapped=is_wrapped(message.body))],
            FOLLOW_UP_ATTEMPTS,
        )
        self.stats.retried += 1
        await self._settle_if_late(task, "complete", message, label)

    async def _failed(
        self,
        message: ReceivedMessage,
        task: Task,
        outcome: Outcome,
        label: str,
        reason: str,
    ) -> None:
        self.stats.failed += 1
        limit = self.settings.description_limit
        if outcome.description is not None:
            description = dead_letter.bounded(outcome.description, limit)
        elif outcome.error is not None:
            description = dead_letter.describe_exception(outcome.error, limit)
        else:
            description = "task failed"
        if outcome.status is TaskStatus.Failure:
            logger.error(
                "%s failed on attempt %d: %s",
                label,
                task.attempts.attempts,
                description,
                extra={"task_id": str(task.task_id), "attempt": task.attempts.attempts},
            )
        if task.graph_id:
            await self._finish_graph_node(task, outcome)
        else:
            await self._store_standalone(task, outcome)
            if task.on_failure is not None:
                await self.app.publisher.publish([Publication(task.on_failure)], FOLLOW_UP_ATTEMPTS)
        if not task.acks_late:
            return
        if task.should_dead_letter:
            await self._dead_letter(message, reason, description, label)
        else:
            await self._settle("complete", message, label)

    # -- results and graphs --------------------------------------------------------------

    async def _store_standalone(self, task: Task, outcome: Outcome) -> None:
        store = self.app.results_storage
        if store is None:
            return
        record = NodeRecord(
            task_id=task.task_id,
            status=outcome.status,
            result=outcome.result,
            attempt=task.attempts.attempts,
            errors=_errors(outcome),
            formatted_exception=_formatted(outcome.error),
        )
        await Records(store).put(standalone_blob(task.task_id), record, if_match=None)

    async def _finish_graph_node(self, task: Task, outcome: Outcome) -> None:
        graph = await self.app.graphs.load(str(task.graph_id))
        if graph is None:
            return
        record = await self.app.graphs.finish(
            task,
            outcome.status,
            result=outcome.result,
            errors=_errors(outcome),
            formatted_exception=_formatted(outcome.error),
        )
        if record is not None and record.status.finished:
            await self.app.graphs.continue_from(graph, task.task_id, record)

    # -- settlement ----------------------------------------------------------------------

    async def _settle_if_late(
        self, task: Task, action: str, message: ReceivedMessage, label: str
    ) -> None:
        if task.acks_late:
            await self._settle(action, message, label)

    async def _dead_letter(
        self, message: ReceivedMessage, reason: str, description: str, label: str
    ) -> None:
        self.stats.dead_lettered += 1
        self.stats.by_reason[reason] = self.stats.by_reason.get(reason, 0) + 1
        try:
            await self.receiver.dead_letter(message, reason, description)
        except MessageLockLost as exc:
            self.stats.locks_lost += 1
            logger.error("%s: could not dead-letter (%s); it will be redelivered", label, exc)
        except BrokerError as exc:
            self.stats.settlement_errors += 1
            logger.error("%s: dead-lettering failed: %s", label, exc)

    async def _settle(self, action: str, message: ReceivedMessage, label: str) -> bool:
        try:
            if action == "complete":
                await self.receiver.complete(message)
            else:
                self.stats.abandoned += 1
                await self.receiver.abandon(message)
        except MessageLockLost as exc:
            self.stats.locks_lost += 1
            logger.error(
                "%s: could not %s its message, the lock was lost (%s); it will be redelivered",
                label,
                action,
                exc,
            )
            return False
        except BrokerError as exc:
            self.stats.settlement_errors += 1
            logger.error("%s: could not %s its message: %s", label, action, exc)
            return False
        # A settled message has no lock left to renew (acks_early settles before
        # the task runs; renewing then would report a lost lock).
        self.renewer.untrack(message)
        return True

    async def _abandon_after_cancel(self, message: ReceivedMessage, label: str) -> None:
        logger.warning("%s cancelled (worker stopping); abandoning its message", label)
        try:
            await asyncio.shield(self._settle("abandon", message, label))
        except asyncio.CancelledError:
            pass


def _errors(outcome: Outcome) -> list[str] | None:
    if outcome.description:
        return [outcome.description]
    if outcome.error is not None:
        return [f"{type(outcome.error).__name__}: {outcome.error}"]
    return None


def _formatted(exc: BaseException | None) -> str | None:
    if exc is None:
        return None
    return "".join(traceback.format_exception(exc))[-8000:]

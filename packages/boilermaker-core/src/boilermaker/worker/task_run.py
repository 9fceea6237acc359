"""One message, from receipt to settlement: receive -> decode -> run -> decide -> apply.

The order is fixed so nothing is lost: follow-up work (results, chain
callbacks, retry messages, graph continuations) is written or published
before the message is settled. If the worker dies in between, the message
comes back and the follow-up steps, all idempotent, are repeated. What the
outcome means for the message is decided in one place,
:func:`boilermaker.worker.verdict.decide`; everything cross-cutting is
middleware (:mod:`boilermaker.worker.middleware`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from boilermaker.broker import BrokerError, MessageLockLost, ReceivedMessage, Receiver
from boilermaker.envelope import decode_task, is_wrapped
from boilermaker.exceptions import InvalidTaskFormat, PublishError
from boilermaker.publishing import FOLLOW_UP_ATTEMPTS, Publication, Publisher
from boilermaker.registry import RegisteredFunction, Registry
from boilermaker.results_store import ResultsStoreError
from boilermaker.retries import RetryException
from boilermaker.task.status import TaskFailureResult, TaskStatus
from boilermaker.task.task import Task
from boilermaker.worker.current import CurrentMessage, current_message
from boilermaker.worker.lock_renewer import LockRenewer
from boilermaker.worker.middleware import MessageContext, MiddlewareStack
from boilermaker.worker.settings import WorkerSettings, WorkerStats
from boilermaker.worker.verdict import Action, Kind, Outcome, Verdict, decide

logger = logging.getLogger("boilermaker.app")

T = TypeVar("T")


def is_transient(exc: BaseException) -> bool:
    """Whether a failure of our own bookkeeping may heal by trying again later
    (the store or broker is unreachable) rather than fail the same way each time."""
    if isinstance(exc, BrokerError):
        return exc.transient
    if isinstance(exc, PublishError):
        cause = exc.__cause__
        return cause is None or is_transient(cause)
    return isinstance(exc, ResultsStoreError | OSError | TimeoutError)


class TaskRunner:
    """Runs tasks from messages of one receiver and settles them."""

    def __init__(
        self,
        *,
        receiver: Receiver,
        renewer: LockRenewer,
        registry: Registry,
        publisher: Publisher,
        middleware: MiddlewareStack,
        settings: WorkerSettings,
        stats: WorkerStats,
        state: Any = None,
        is_control: Callable[[ReceivedMessage], bool] | None = None,
    ) -> None:
        self.receiver = receiver
        self.renewer = renewer
        self.registry = registry
        self.publisher = publisher
        self.middleware = middleware
        self.settings = settings
        self.stats = stats
        self.state = state
        self._is_control = is_control

    # -- entry point --------------------------------------------------------------------

    async def handle(
        self, message: ReceivedMessage, release: Callable[[], None] | None = None
    ) -> None:
        """Handle one message and settle it; never raises (except cancellation).

        ``release`` is called once only settling the message is left: the task
        has run and its follow-ups (results, callbacks, retries) are done, so
        the worker may start another task while this settlement is confirmed.
        """
        ctx = MessageContext(message, state=self.state)
        # Each handler runs in its own asyncio task, so this is its own context.
        current_message.set(CurrentMessage(message, self.receiver))
        try:
            await self.middleware.notify("on_receive", ctx)
            ctx.outcome = await self._outcome(ctx)
            verdict = self._decide(ctx)
            verdict = await self._follow_up(ctx, verdict)
            ctx.verdict = verdict
            if release is not None:
                # Settling takes a round trip, well inside the half a lock duration
                # renewal leaves; renewing meanwhile would race the settlement.
                self.renewer.untrack(message)
                release()
            await self._settle(ctx, verdict)
        except asyncio.CancelledError:
            await self._abandon_after_cancel(ctx)
            raise
        finally:
            self.renewer.untrack(message)
            await self.middleware.notify("after_settle", ctx, reverse=True)

    # -- reaching an outcome --------------------------------------------------------------

    async def _outcome(self, ctx: MessageContext) -> Outcome:
        message = ctx.message
        if self._is_control is not None and self._is_control(message):
            logger.debug("Completing control message %s", message.message_id)
            return Outcome(Kind.CONTROL)
        try:
            if message.body_error is not None:  # the adapter could not convert it
                raise InvalidTaskFormat(message.body_error)
            task = decode_task(message.body)
        except InvalidTaskFormat as exc:
            logger.error(
                "Dead-lettering undecodable message %s (sequence_number=%s): %s",
                message.message_id,
                message.sequence_number,
                exc,
            )
            return Outcome(Kind.UNDECODABLE, error=exc, description=str(exc))
        task.sequence_number = message.sequence_number
        ctx.task = task
        await self.middleware.notify("after_decode", ctx)
        entry = self.registry.get(task.function_name)
        if entry is None:
            description = (
                f"function {task.function_name!r} is not registered on this worker "
                f"(registered: {', '.join(self.registry.names()) or 'none'})"
            )
            logger.error("%s: %s", ctx.label, description)
            return Outcome(Kind.UNKNOWN_FUNCTION, description=description)
        limit = entry.timeout if entry.timeout is not None else self.settings.task_timeout
        self.renewer.track(message, ctx.label, self._renewal_limit(limit))
        if not task.acks_late and not await self._settle_action(ctx, Action.COMPLETE):
            return Outcome(Kind.INTERRUPTED, description="the message was lost before it could run")
        middleware = self.middleware
        try:
            skipped = (
                await self._patiently(ctx, "before_task", lambda: middleware.before_task(ctx))
                if middleware.with_hook("before_task")
                else None
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return self._bookkeeping_failed(ctx, "before_task", exc)
        if skipped is not None:
            return skipped
        task.record_attempt()
        outcome = await self._run(ctx, task, entry, limit)
        if not middleware.with_hook("after_task"):
            return outcome
        try:
            return await self._patiently(
                ctx, "after_task", lambda: middleware.after_task(ctx, outcome)
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return self._bookkeeping_failed(ctx, "after_task", exc)

    def _renewal_limit(self, time_limit: float | None) -> float:
        """How long the lock is kept: past the task's own time limit, never short of it."""
        if time_limit is None:
            return self.settings.max_lock_renewal
        return max(self.settings.max_lock_renewal, time_limit + self.settings.time_limit_margin)

    async def _run(
        self, ctx: MessageContext, task: Task, entry: RegisteredFunction, limit: float | None
    ) -> Outcome:
        """Run the function within its time limit; a task with none is stopped at the
        lock renewal limit, before its lock can lapse and the message run twice."""
        name = task.function_name
        deadline = limit if limit is not None else self.settings.max_lock_renewal
        logger.info("[%s] Begin Task sequence_number=%s", name, ctx.message.sequence_number)
        started = time.perf_counter()
        ctx.ran = True
        timer = asyncio.timeout(deadline)
        try:
            async with timer:
                result = await entry.fn(self.state, *task.args, **task.kwargs)
        except TimeoutError as exc:
            if not timer.expired():
                return Outcome(Kind.FAILED, error=exc)
            what = (
                f"its time limit of {limit:g}s"
                if limit is not None
                else f"the lock renewal limit of {deadline:g}s (it has no time limit of its own)"
            )
            logger.error("%s ran past %s and was cancelled", ctx.label, what)
            return Outcome(
                Kind.TIMED_OUT, description=f"TimeLimitExceeded: the task ran past {what}"
            )
        except RetryException as exc:
            return Outcome(Kind.RETRY_REQUESTED, error=exc)
        except Exception as exc:
            return Outcome(Kind.FAILED, error=exc)
        elapsed = time.perf_counter() - started
        if result is TaskFailureResult or isinstance(result, TaskFailureResult):
            reason = getattr(result, "reason", "task returned TaskFailureResult")
            return Outcome(Kind.FAILED, description=f"TaskFailureResult: {reason}")
        logger.info(
            "[%s] Completed Task sequence_number=%s in %.5fs",
            name,
            ctx.message.sequence_number,
            elapsed,
        )
        return Outcome(Kind.SUCCEEDED, result=result)

    async def _patiently(
        self, ctx: MessageContext, stage: str, call: Callable[[], Awaitable[T]]
    ) -> T:
        """``call()``, tried again while it fails transiently (the store or broker is
        down), for up to ``bookkeeping_patience`` seconds, with the message's lock kept
        alive: giving the message back would run a finished task again, and burn
        deliveries towards the broker's maximum. Every step it repeats is idempotent."""
        deadline = time.monotonic() + self.settings.bookkeeping_patience
        pause = 0.05
        warned = False
        while True:
            try:
                return await call()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not is_transient(exc) or time.monotonic() + pause > deadline:
                    raise
                if not warned:
                    warned = True
                    logger.warning(
                        "%s: %s failed (%s); trying again for up to %.0fs",
                        ctx.label,
                        stage,
                        exc,
                        self.settings.bookkeeping_patience,
                    )
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)

    def _bookkeeping_failed(self, ctx: MessageContext, stage: str, exc: BaseException) -> Outcome:
        """An error of ours (or a middleware's) around the task: worth another delivery
        only if it may heal; otherwise the message is dead-lettered saying why."""
        if is_transient(exc):
            logger.error(
                "%s: %s failed (%s); giving the message back", ctx.label, stage, exc, exc_info=exc
            )
            return Outcome(Kind.INTERRUPTED, error=exc)
        logger.error("%s: %s failed for good: %s", ctx.label, stage, exc, exc_info=exc)
        return Outcome(
            Kind.FOLLOW_UP_FAILED,
            error=exc,
            description=f"{stage}: {type(exc).__name__}: {exc}",
        )

    # -- deciding and applying ------------------------------------------------------------

    def _decide(self, ctx: MessageContext) -> Verdict:
        outcome, task = ctx.outcome, ctx.task
        assert outcome is not None
        error = outcome.error
        if isinstance(error, RetryException) and error.policy is not None and task is not None:
            task.policy = error.policy
        verdict = decide(outcome, task, self.settings.description_limit)
        ctx.verdict = verdict
        attempt = task.attempts.attempts if task is not None else 0
        if verdict.status is TaskStatus.Failure and ctx.ran:
            logger.error(
                "%s failed on attempt %d: %s",
                ctx.label,
                attempt,
                verdict.description,
                extra={"task_id": str(task.task_id) if task else None, "attempt": attempt},
            )
        elif verdict.status is TaskStatus.RetriesExhausted:
            logger.error("%s: %s", ctx.label, verdict.description)
        return verdict

    async def _follow_up(self, ctx: MessageContext, verdict: Verdict) -> Verdict:
        """Results, chain callbacks, graph continuation and the retry message, before
        the message is settled."""
        stage = "follow-up"
        try:
            if verdict.action is Action.RETRY:
                stage = "retry"
                await self._patiently(ctx, stage, lambda: self._retry(ctx))
            elif verdict.status is TaskStatus.Success:
                stage = "on_success"
                if self.middleware.with_hook(stage):
                    await self._patiently(ctx, stage, lambda: self.middleware.run(stage, ctx))
            elif verdict.failed:
                stage = "on_failure"
                if self.middleware.with_hook(stage):
                    await self._patiently(ctx, stage, lambda: self.middleware.run(stage, ctx))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            ctx.outcome = self._bookkeeping_failed(ctx, stage, exc)
            return self._decide(ctx)
        return verdict

    async def _retry(self, ctx: MessageContext) -> None:
        task, outcome = ctx.task, ctx.outcome
        assert task is not None
        assert outcome is not None
        ctx.retry_delay = float(task.get_next_delay())
        ctx.retry_message_id = task.retry_task_id
        reason = outcome.description or (
            outcome.error.msg
            if isinstance(outcome.error, RetryException) and outcome.error.msg
            else type(outcome.error).__name__
        )
        logger.warning(
            "%s: attempt %d asked for a retry (%s); next attempt in %ss",
            ctx.label,
            task.attempts.attempts,
            reason,
            int(ctx.retry_delay),
        )
        # Recorded (on_retry) before the retry message exists, since the retry may
        # run and finish at once.
        await self.middleware.run("on_retry", ctx)
        retry_task = task.model_copy(deep=True)
        retry_task.sequence_number = None
        wrapped = is_wrapped(ctx.message.body)  # the retry keeps the message's form
        await self.publisher.publish(
            [Publication(retry_task, ctx.retry_delay, ctx.retry_message_id, wrapped=wrapped)],
            FOLLOW_UP_ATTEMPTS,
        )

    async def _settle(self, ctx: MessageContext, verdict: Verdict) -> None:
        if ctx.settled:
            return  # acks early: completed before it ran
        if verdict.action is Action.DEAD_LETTER:
            await self.middleware.notify("on_dead_letter", ctx)
        await self._settle_action(ctx, verdict.action)

    async def _settle_action(self, ctx: MessageContext, action: Action) -> bool:
        message, verdict = ctx.message, ctx.verdict
        try:
            if action is Action.DEAD_LETTER:
                assert verdict is not None
                await self.receiver.dead_letter(
                    message, verdict.reason or "", verdict.description or ""
                )
            elif action is Action.ABANDON:
                await self.receiver.abandon(message)
            else:
                await self.receiver.complete(message)
        except MessageLockLost as exc:
            self.stats.locks_lost += 1
            logger.error(
                "%s: could not %s its message, the lock was lost (%s); it will be redelivered",
                ctx.label,
                action.value.replace("_", "-"),
                exc,
            )
            return False
        except BrokerError as exc:
            self.stats.settlement_errors += 1
            logger.error("%s: could not %s its message: %s", ctx.label, action.value, exc)
            return False
        ctx.settled = True
        # A settled message has no lock left to renew (acks early settles before
        # the task runs; renewing then would report a lost lock).
        self.renewer.untrack(message)
        return True

    async def _abandon_after_cancel(self, ctx: MessageContext) -> None:
        if ctx.settled:
            return
        logger.warning("%s cancelled (worker stopping); abandoning its message", ctx.label)
        ctx.verdict = Verdict(Action.ABANDON)
        try:
            await asyncio.shield(self._settle_action(ctx, Action.ABANDON))
        except asyncio.CancelledError:
            pass

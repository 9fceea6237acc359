"""Middleware: behaviour added around every message a worker handles.

Subclass :class:`Middleware` and override the hooks you need (every hook is a
no-op by default); add it with ``Boilermaker(..., middleware=[...])``,
``app.add_middleware(...)`` or ``Worker(..., middleware=[...])``. The worker's
own cross-cutting behaviour is built the same way, one small module each:
:mod:`.stats`, :mod:`.tracing`, :mod:`.results`, :mod:`.graphs`,
:mod:`.chains`.

The path of one message, and the hooks on it::

    on_receive            the message arrived (not decoded yet)
    after_decode          ctx.task is set (skipped for undecodable messages)
    before_task           may return an Outcome: the task then does not run
      -- the task function runs (time limit applies) --
    after_task            may return a replacement Outcome
      -- the verdict is decided (boilermaker.worker.verdict.decide) --
    on_success | on_retry | on_failure      follow-ups: results, chain callbacks,
                                            graph continuation; the retry message
                                            is published after on_retry
    on_dead_letter        the message is about to be dead-lettered
      -- the message is settled --
    after_settle          always, last (ctx.settled says whether it worked)

plus ``before_publish`` for every task message published (follow-ups and
``apply_async`` alike) and ``on_worker_start`` / ``on_worker_stop``.

Order: the worker's own middleware runs first (stats, tracing, results,
graphs, chains), then yours in the order given. Hooks before the task run in
that order; ``after_task`` and the follow-up hooks too (so results are written
before a chain's next task is published), and ``after_settle`` in reverse.

Rules: a middleware never settles a message (it has no receiver to do it with)
and never swallows cancellation. An exception from ``before_task``,
``after_task`` or a follow-up hook is the message's outcome: a transient one
(a store or broker error) gives the message back for redelivery; anything else
dead-letters it as ``FollowUpFailed``, naming the hook and the error, since
handling it again would fail again. An exception from ``on_receive``,
``after_decode``, ``on_dead_letter`` or ``after_settle`` is logged and ignored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from boilermaker.broker import PropertyValue, ReceivedMessage
from boilermaker.task.task import Task
from boilermaker.worker.verdict import Outcome, Verdict

if TYPE_CHECKING:
    from boilermaker.worker.engine import Worker


@dataclass(slots=True)
class MessageContext:
    """One message on its way through the worker, as middleware sees it.

    ``task`` is None until (and unless) the body decoded. ``outcome`` and
    ``verdict`` are set as they are reached; ``ran`` says whether the task
    function ran; for a retry, ``retry_message_id`` and ``retry_delay`` say
    what will be published. ``state`` is the application state. ``notes`` is
    free for middleware to keep things in between hooks (use your own key).
    """

    message: ReceivedMessage
    state: Any = None
    task: Task | None = None
    outcome: Outcome | None = None
    verdict: Verdict | None = None
    ran: bool = False
    settled: bool = False
    retry_message_id: str | None = None
    retry_delay: float = 0.0
    received_at: float = field(default_factory=time.monotonic)
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``[function] task <id>`` for log lines (the message id when undecoded)."""
        if self.task is None:
            return f"message {self.message.message_id}"
        return f"[{self.task.function_name}] task {self.task.task_id}"


class Middleware:
    """Hooks around every message a worker handles (see the module docstring)."""

    async def on_worker_start(self, worker: Worker) -> None:
        """The worker is about to receive its first message."""

    async def on_worker_stop(self, worker: Worker) -> None:
        """The worker stopped (in-flight tasks are done or were cancelled)."""

    async def on_receive(self, ctx: MessageContext) -> None:
        """A message arrived; it is not decoded yet."""

    async def after_decode(self, ctx: MessageContext) -> None:
        """The body decoded into ``ctx.task``."""

    async def before_task(self, ctx: MessageContext) -> Outcome | None:
        """Just before the task function runs; return an Outcome to not run it."""
        return None

    async def after_task(self, ctx: MessageContext, outcome: Outcome) -> Outcome | None:
        """The task function returned or raised; return an Outcome to replace ``outcome``."""
        return None

    async def on_success(self, ctx: MessageContext) -> None:
        """The task succeeded; follow-up work goes here (before the message is settled)."""

    async def on_retry(self, ctx: MessageContext) -> None:
        """The task will run again; called before its retry message is published."""

    async def on_failure(self, ctx: MessageContext) -> None:
        """The task failed for good (``ctx.verdict.status`` says how); before settlement."""

    async def on_dead_letter(self, ctx: MessageContext) -> None:
        """The message is about to be dead-lettered with ``ctx.verdict.reason``."""

    async def after_settle(self, ctx: MessageContext) -> None:
        """The message was settled (or settling failed: ``ctx.settled`` is False)."""

    def before_publish(self, task: Task, properties: dict[str, PropertyValue]) -> None:
        """A task message is being built; ``properties`` (its application properties)
        may be added to. Synchronous: it runs for every message of a batch."""


logger = logging.getLogger("boilermaker.app")


class MiddlewareStack:
    """Calls a hook on every middleware, in order (``after_settle`` in reverse)."""

    def __init__(self, middleware: Sequence[Middleware]) -> None:
        for item in middleware:
            if not isinstance(item, Middleware):
                raise TypeError(
                    f"middleware must be Middleware instances (subclass "
                    f"boilermaker.worker.Middleware), not {type(item).__name__}"
                )
        self.middleware = list(middleware)
        # Per hook, the middleware that override it (in order): a hook left as the
        # base class's no-op is not called, so an unused hook costs nothing per message.
        self._by_hook: dict[str, list[Middleware]] = {
            hook: [item for item in self.middleware if _overrides(item, hook)] for hook in _HOOKS
        }

    def with_hook(self, hook: str) -> list[Middleware]:
        """The middleware that override ``hook``, in order."""
        found = self._by_hook.get(hook)
        if found is None:
            found = self._by_hook[hook] = [i for i in self.middleware if _overrides(i, hook)]
        return found

    async def before_task(self, ctx: MessageContext) -> Outcome | None:
        """The first Outcome a middleware returns (the rest are not asked), or None."""
        for item in self.with_hook("before_task"):
            outcome = await item.before_task(ctx)
            if outcome is not None:
                return outcome
        return None

    async def after_task(self, ctx: MessageContext, outcome: Outcome) -> Outcome:
        """``outcome`` as the middleware leave it (each sees the previous one's)."""
        for item in self.with_hook("after_task"):
            replaced = await item.after_task(ctx, outcome)
            if replaced is not None:
                outcome = replaced
        return outcome

    async def run(self, hook: str, ctx: MessageContext) -> None:
        """Call ``hook`` on each middleware in order; an exception stops and propagates."""
        for item in self.with_hook(hook):
            await getattr(item, hook)(ctx)

    async def notify(self, hook: str, ctx: MessageContext, *, reverse: bool = False) -> None:
        """Call ``hook`` on each middleware; exceptions are logged, never propagated."""
        found = self.with_hook(hook)
        for item in reversed(found) if reverse else found:
            try:
                await getattr(item, hook)(ctx)
            except Exception:
                logger.exception("%s.%s failed for %s", type(item).__name__, hook, ctx.label)

    def before_publish(self, task: Task, properties: dict[str, PropertyValue]) -> None:
        """Let every middleware add to a message's properties."""
        for item in self.with_hook("before_publish"):
            item.before_publish(task, properties)


def _overrides(item: Middleware, hook: str) -> bool:
    """Whether ``item`` does something at ``hook``: its class, or the instance itself,
    replaces the base class's no-op."""
    if hook in getattr(item, "__dict__", {}):
        return True
    return getattr(type(item), hook, None) is not getattr(Middleware, hook, None)


#: The hooks a middleware may override.
_HOOKS = tuple(
    name for name, value in vars(Middleware).items() if callable(value) and not name.startswith("_")
)

__all__ = ["MessageContext", "Middleware", "MiddlewareStack"]

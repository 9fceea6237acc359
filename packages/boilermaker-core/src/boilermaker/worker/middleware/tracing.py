"""Tracing: a consumer span around each task run, continuing the publisher's trace.

The span is current from ``before_task`` until the message is settled, so the
follow-ups published meanwhile (chain callbacks, retries, graph children)
continue this run's trace.
"""

from __future__ import annotations

from contextlib import ExitStack

from boilermaker.tracing import Tracing
from boilermaker.worker.middleware import MessageContext, Middleware
from boilermaker.worker.verdict import Kind, Outcome

_KEY = "boilermaker.tracing"


class TracingMiddleware(Middleware):
    """Opens a span per run (a no-op unless tracing is enabled)."""

    def __init__(self, tracing: Tracing) -> None:
        self.tracing = tracing

    async def before_task(self, ctx: MessageContext) -> Outcome | None:
        if not self.tracing.enabled or ctx.task is None or _KEY in ctx.notes:
            return None
        spans = ExitStack()
        ctx.notes[_KEY] = (
            spans,
            spans.enter_context(
                self.tracing.run_span(
                    ctx.task, ctx.message.application_properties, ctx.message.delivery_count
                )
            ),
        )
        return None

    async def after_task(self, ctx: MessageContext, outcome: Outcome) -> Outcome | None:
        held = ctx.notes.get(_KEY)
        if held is not None and outcome.error is not None and outcome.kind is not Kind.SUCCEEDED:
            self.tracing.record_failure(held[1], outcome.error)
        return None

    async def after_settle(self, ctx: MessageContext) -> None:
        held = ctx.notes.pop(_KEY, None)
        if held is not None:
            held[0].close()

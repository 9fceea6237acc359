"""OpenTelemetry tracing across publish, run, chains and graph edges (off by default).

Only ``opentelemetry-api`` is used: with no SDK configured every span is a
no-op. The W3C ``traceparent`` travels in the message's application
properties (and in ``Task.diagnostic_id``), so a consumer span continues the
producer's trace, and tasks published from inside a task (chains, graph
children, retries) link back to the run that published them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract, inject
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

from boilermaker.task.task import Task

TRACEPARENT = "traceparent"
_tracer = trace.get_tracer("boilermaker")


class Tracing:
    """Spans for one application; every method is cheap and safe when disabled."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def inject(self, task: Task, properties: dict[str, Any], span: Span | None = None) -> None:
        """Put the trace context (``span``'s, else the current one) into the message
        properties and the task."""
        if not self.enabled:
            return
        carrier: dict[str, str] = {}
        inject(carrier, context=trace.set_span_in_context(span) if span is not None else None)
        parent = carrier.get(TRACEPARENT)
        if parent:
            properties[TRACEPARENT] = parent
            properties["Diagnostic-Id"] = parent
            task.diagnostic_id = parent

    @contextmanager
    def publish_spans(self, tasks: Sequence[Task], queue: str | None) -> Iterator[list[Span]]:
        """One producer span per task, siblings under the current context, ended
        together when the batch they travel in has been sent (or failed)."""
        if not self.enabled:
            yield []
            return
        spans = []
        for task in tasks:
            attributes = {
                "messaging.system": "servicebus",
                "messaging.operation.type": "send",
                "messaging.message.id": str(task.task_id),
                "boilermaker.function": task.function_name,
            }
            if queue:
                attributes["messaging.destination.name"] = queue
            if task.graph_id:
                attributes["boilermaker.graph_id"] = str(task.graph_id)
            spans.append(
                _tracer.start_span(
                    f"send {task.function_name}", kind=SpanKind.PRODUCER, attributes=attributes
                )
            )
        try:
            yield spans
        except BaseException as exc:
            for span in spans:
                self.record_failure(span, exc)
            raise
        finally:
            for span in spans:
                span.end()

    @contextmanager
    def run_span(
        self, task: Task, properties: Mapping[str, Any], delivery_count: int
    ) -> Iterator[Span | None]:
        """A consumer span around one task run, continuing the publisher's trace."""
        if not self.enabled:
            yield None
            return
        carrier = {
            k: str(v) for k, v in properties.items() if isinstance(k, str) and k == TRACEPARENT
        }
        if TRACEPARENT not in carrier and task.diagnostic_id:
            carrier[TRACEPARENT] = task.diagnostic_id
        ctx = extract(carrier)
        parent_span = trace.get_current_span(ctx).get_span_context()
        links = [Link(parent_span)] if parent_span.is_valid else []
        attributes: dict[str, Any] = {
            "messaging.system": "servicebus",
            "messaging.operation.type": "process",
            "messaging.message.id": str(task.task_id),
            "messaging.servicebus.message.delivery_count": delivery_count,
            "boilermaker.function": task.function_name,
            "boilermaker.attempt": task.attempts.attempts,
        }
        if task.graph_id:
            attributes["boilermaker.graph_id"] = str(task.graph_id)
        token = otel_context.attach(ctx)
        try:
            with _tracer.start_as_current_span(
                f"process {task.function_name}",
                kind=SpanKind.CONSUMER,
                attributes=attributes,
                links=links,
            ) as span:
                yield span
        finally:
            otel_context.detach(token)

    @staticmethod
    def record_failure(span: Span | None, exc: BaseException) -> None:
        """Mark a span failed with the exception."""
        if span is None:
            return
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, str(exc)[:200]))

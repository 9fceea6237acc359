"""Trace context across publish, run, chains and retries (opentelemetry-api only).

With no SDK configured, spans are non-recording but still carry the context
they continue, which is what these tests look at: the ``traceparent`` the
producer injects and the trace the consumer runs in.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from boilermaker import Boilermaker, RetryException, RetryPolicy
from boilermaker.broker import ReceivedMessage
from boilermaker.memory import InMemoryBroker

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
SPAN_ID = 0xB7AD6B7169203331
TRACEPARENT = f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-01"


@pytest.fixture
def parent_span() -> Iterator[None]:
    """A sampled span context active while the test publishes."""
    context = SpanContext(
        TRACE_ID, SPAN_ID, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED)
    )
    with trace.use_span(NonRecordingSpan(context)):
        yield


async def queued(broker: InMemoryBroker) -> list[ReceivedMessage]:
    async with broker.receiver() as receiver:
        return await receiver.peek(100)


def current_trace_id() -> int:
    return trace.get_current_span().get_span_context().trace_id


async def test_tracing_is_off_by_default(parent_span: None) -> None:
    broker = InMemoryBroker()
    app = Boilermaker({}, broker)

    @app.task()
    async def job(state: Any) -> None:
        return None

    task = await app.apply_async(job)
    (message,) = await queued(broker)
    assert "traceparent" not in message.application_properties
    assert "Diagnostic-Id" not in message.application_properties
    assert task.diagnostic_id is None


async def test_publish_injects_traceparent_into_application_properties(
    parent_span: None,
) -> None:
    broker = InMemoryBroker()
    app = Boilermaker({}, broker, enable_opentelemetry=True)

    @app.task()
    async def job(state: Any) -> None:
        return None

    task = await app.apply_async(job)
    (message,) = await queued(broker)
    assert message.application_properties["traceparent"] == TRACEPARENT
    assert task.diagnostic_id == TRACEPARENT


async def test_consumer_continues_the_producers_trace() -> None:
    broker = InMemoryBroker()
    seen: list[int] = []
    app = Boilermaker(seen, broker, enable_opentelemetry=True)

    @app.task()
    async def job(state: list[int]) -> None:
        state.append(current_trace_id())

    context = SpanContext(TRACE_ID, SPAN_ID, False, TraceFlags(TraceFlags.SAMPLED))
    with trace.use_span(NonRecordingSpan(context)):
        await app.apply_async(job)
    # The worker runs outside the publisher's context: the trace must come
    # from the message.
    assert current_trace_id() == 0
    await app.run_until_idle(timeout=5)
    assert seen == [TRACE_ID]


async def test_chain_and_retry_messages_continue_the_trace() -> None:
    broker = InMemoryBroker()
    state: dict[str, Any] = {"runs": 0, "traces": []}
    app = Boilermaker(state, broker, enable_opentelemetry=True)
    published: list[dict[str, Any]] = []
    original_send = broker.send

    async def recording_send(messages: Any) -> list[int | None]:
        published.extend(dict(m.application_properties) for m in messages)
        return await original_send(messages)

    broker.send = recording_send  # type: ignore[method-assign]

    @app.task(policy=RetryPolicy(max_tries=3, delay=0))
    async def first(state: dict[str, Any]) -> None:
        state["runs"] += 1
        state["traces"].append(current_trace_id())
        if state["runs"] == 1:
            raise RetryException("again")

    @app.task()
    async def second(state: dict[str, Any]) -> None:
        state["traces"].append(current_trace_id())

    head = app.create_task(first)
    head >> app.create_task(second)
    context = SpanContext(TRACE_ID, SPAN_ID, False, TraceFlags(TraceFlags.SAMPLED))
    with trace.use_span(NonRecordingSpan(context)):
        await app.publish_task(head)
    await app.run_until_idle(timeout=5)

    # head, its retry, then second: each message carries the trace.
    assert len(published) == 3
    for properties in published:
        assert "traceparent" in properties
        assert properties["traceparent"].split("-")[1] == f"{TRACE_ID:032x}"
    assert state["traces"] == [TRACE_ID, TRACE_ID, TRACE_ID]


# -- with the OpenTelemetry SDK (skipped when opentelemetry-sdk is not installed) ----------


@pytest.fixture(scope="module")
def span_exporter() -> Any:
    sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
    export = pytest.importorskip("opentelemetry.sdk.trace.export")
    in_memory = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")
    provider = sdk_trace.TracerProvider()
    exporter = in_memory.InMemorySpanExporter()
    provider.add_span_processor(export.SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    if trace.get_tracer_provider() is not provider:
        pytest.skip("another tracer provider was already installed in this process")
    return exporter


async def test_sdk_producer_and_consumer_spans_share_one_trace(span_exporter: Any) -> None:
    span_exporter.clear()
    broker = InMemoryBroker()
    app = Boilermaker({}, broker, enable_opentelemetry=True)

    @app.task()
    async def job(state: Any) -> None:
        return None

    with trace.get_tracer("tests").start_as_current_span("request"):
        await app.apply_async(job)
    (message,) = await queued(broker)
    await app.run_until_idle(timeout=5)

    spans = {span.name: span for span in span_exporter.get_finished_spans()}
    send, process = spans["send job"], spans["process job"]
    assert send.kind is trace.SpanKind.PRODUCER
    assert process.kind is trace.SpanKind.CONSUMER
    version, trace_id, span_id, _flags = message.application_properties["traceparent"].split("-")
    assert (version, trace_id, span_id) == (
        "00",
        f"{send.context.trace_id:032x}",
        f"{send.context.span_id:016x}",
    )
    assert process.context.trace_id == send.context.trace_id
    assert process.parent is not None
    assert process.parent.span_id == send.context.span_id
    assert spans["request"].context.trace_id == send.context.trace_id


async def test_sdk_traced_batch_is_one_send_with_a_span_per_task(span_exporter: Any) -> None:
    span_exporter.clear()
    broker = InMemoryBroker()
    app = Boilermaker({}, broker, enable_opentelemetry=True)

    @app.task()
    async def job(state: Any, n: int) -> None:
        return None

    with trace.get_tracer("tests").start_as_current_span("request") as request:
        await app.apply_many(job, range(10))
    messages = await queued(broker)

    assert broker.send_calls == 1
    sends = [s for s in span_exporter.get_finished_spans() if s.name == "send job"]
    assert len(sends) == 10
    assert {s.parent.span_id for s in sends} == {request.get_span_context().span_id}
    by_span = {f"{s.context.span_id:016x}": s for s in sends}
    injected = {m.application_properties["traceparent"].split("-")[2] for m in messages}
    assert injected == set(by_span)

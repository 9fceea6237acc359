"""Turning tasks into broker messages and sending them, with bounded retries.

Every size check happens before anything is sent, so a batch either goes
out whole or not at all because of its size. Only transient broker errors
are retried; authentication and size errors surface at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from boilermaker.broker import CALL_OVERHEAD, Broker, BrokerError, OutgoingMessage, fits
from boilermaker.envelope import CONTENT_TYPE, encode_task
from boilermaker.exceptions import BoilermakerAppException, MessageTooLarge, PublishError
from boilermaker.retries import MAX_DELAY_SECONDS
from boilermaker.task.serialize import check_arguments
from boilermaker.task.task import Task
from boilermaker.tracing import Span, Tracing

logger = logging.getLogger("boilermaker.app")

#: Attempts for messages the system publishes on its own behalf (chain callbacks,
#: retries, graph dispatch): a dropped pooled connection must not turn into a
#: re-run of the task that published them.
FOLLOW_UP_ATTEMPTS = 3

#: Seconds to wait before publish attempt 2, 3, ... (transient errors only).
PUBLISH_BACKOFF = (0.1, 0.3, 1.0, 2.0)


@dataclass(frozen=True, slots=True)
class Publication:
    """One task to publish, with its delay and message id."""

    task: Task
    delay: float = 0.0
    message_id: str | None = None
    #: Send the task wrapped, so 1.x workers refuse it (nodes of 2.x graphs).
    wrapped: bool = False


def batches_by_size(messages: Sequence[OutgoingMessage], limit: int) -> list[list[OutgoingMessage]]:
    """Split messages, in order, into the fewest runs whose sizes fit in one broker call."""
    batches: list[list[OutgoingMessage]] = []
    current: list[OutgoingMessage] = []
    used = 0
    for message in messages:
        size = message.size
        if current and not fits(used + size, limit):
            batches.append(current)
            current, used = [], 0
        current.append(message)
        used += size
    if current:
        batches.append(current)
    return batches


def check_chain_arguments(task: Task) -> None:
    """Check the arguments of ``task`` and of every task chained to it are JSON.

    Tasks built with ``create_task`` or ``Task.si`` were checked already; this
    catches tasks built or changed by hand, which would otherwise be encoded
    lossily (a datetime as a string, NaN as null) instead of refused.
    """
    pending: list[Task] = [task]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue  # one failure handler shared by a whole chain
        seen.add(id(current))
        check_arguments(current.function_name, current.args, current.kwargs)
        pending.extend(t for t in (current.on_success, current.on_failure) if t is not None)


class PublishHook(Protocol):
    """What the publisher asks of middleware: a look at each message being built."""

    def before_publish(self, task: Task, properties: dict[str, Any]) -> None: ...


class Publisher:
    """Encodes tasks into envelopes and sends them on a broker.

    ``hooks`` (the application's middleware, a list that may grow) see every
    message's application properties before it is encoded.
    """

    def __init__(
        self,
        broker: Broker,
        tracing: Tracing,
        queue_name: str | None = None,
        hooks: Sequence[PublishHook] = (),
    ) -> None:
        self.broker = broker
        self.tracing = tracing
        self.queue_name = queue_name
        self.hooks = hooks

    def to_message(self, item: Publication, span: Span | None = None) -> OutgoingMessage:
        """Encode one task (with ``span``'s trace context), refusing it if it is over
        the broker's size limit."""
        task = item.task
        delay = item.delay
        if (
            isinstance(delay, bool)
            or not isinstance(delay, int | float)
            or not (0 <= delay <= MAX_DELAY_SECONDS)
        ):
            raise BoilermakerAppException(
                f"delay must be a number of seconds from 0 to {MAX_DELAY_SECONDS} (30 days), "
                f"got {delay!r}"
            )
        properties: dict[str, Any] = {
            "boilermaker_function": task.function_name,
            "boilermaker_task_id": str(task.task_id),
        }
        if task.graph_id:
            properties["boilermaker_graph_id"] = str(task.graph_id)
        self.tracing.inject(task, properties, span)
        for hook in self.hooks:
            hook.before_publish(task, properties)
        check_chain_arguments(task)
        body = encode_task(task, wrapped=item.wrapped)
        scheduled = datetime.now(UTC) + timedelta(seconds=item.delay) if item.delay > 0 else None
        message = OutgoingMessage(
            body=body,
            message_id=item.message_id or str(task.task_id),
            scheduled_enqueue_time=scheduled,
            application_properties=properties,
            content_type=CONTENT_TYPE,
        )
        limit = self.broker.max_message_size
        if not fits(message.size, limit):
            raise MessageTooLarge(
                message.size + CALL_OVERHEAD, limit, f"task {task.function_name!r} ({task.task_id})"
            )
        return message

    async def publish(self, items: Sequence[Publication], attempts: int = 1) -> list[Task]:
        """Send every item; sets each task's ``sequence_number`` when the broker reports it."""
        if attempts < 1:
            raise ValueError("publish_attempts must be at least 1")
        if not items:
            return []
        with self.tracing.publish_spans([item.task for item in items], self.queue_name) as spans:
            if spans:
                messages = [self.to_message(i, s) for i, s in zip(items, spans, strict=True)]
            else:
                messages = [self.to_message(item) for item in items]
            numbers: list[int | None] = []
            for batch in batches_by_size(messages, self.broker.max_message_size):
                numbers.extend(await self._send(batch, attempts))
        for item, number in zip(items, numbers, strict=True):
            item.task.sequence_number = number
        return [item.task for item in items]

    async def _send(self, messages: list[OutgoingMessage], attempts: int) -> list[int | None]:
        for attempt in range(1, attempts + 1):
            try:
                return await self.broker.send(messages)
            except BrokerError as exc:
                if not exc.transient or attempt == attempts:
                    raise PublishError(
                        f"publishing {len(messages)} message(s) failed after {attempt} "
                        f"attempt(s): {exc}"
                    ) from exc
                delay = PUBLISH_BACKOFF[min(attempt - 1, len(PUBLISH_BACKOFF) - 1)]
                logger.warning(
                    "Publish attempt %d/%d failed (%s); retrying in %.1fs",
                    attempt,
                    attempts,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

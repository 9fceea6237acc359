"""Listing, replaying and purging a dead-letter sub-queue (see the package docstring)."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import math
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from boilermaker import graph_node
from boilermaker.broker import (
    Broker,
    BrokerError,
    MessageLockLost,
    OutgoingMessage,
    PropertyValue,
    ReceivedMessage,
    Receiver,
    SubQueue,
)
from boilermaker.dead_letters.records import (
    _BROKER_PROPERTIES,
    _EVERYTHING,
    _LINEAGE_KEYS,
    DEAD_LETTER_REASON,
    GRAPH_NEEDS_RUNTIME,
    LOCK_MARGIN,
    ORIGINAL_MESSAGE_ID,
    ORIGINAL_SEQUENCE_NUMBER,
    REPLAY_COUNT,
    REPLAYED_AT,
    DeadLetter,
    DeadLetterFilter,
)
from boilermaker.dead_letters.reports import (
    PurgeReport,
    ReplayReport,
    _Action,
    _outcome,
    _Settled,
)
from boilermaker.envelope import decode_task, encode_task, is_wrapped
from boilermaker.graph_dispatch import GraphRuntime
from boilermaker.graph_node import Step
from boilermaker.results import node_blob
from boilermaker.retries import RetryAttempts
from boilermaker.task.status import TaskStatus


class _Pace:
    """Slots at most ``rate`` per second apart (no limit when rate is None)."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self._next = 0.0

    def book(self) -> float:
        """The monotonic time of the next free slot, which is now taken."""
        slot = max(time.monotonic(), self._next)
        if self.interval:
            self._next = slot + self.interval
        return slot


class DeadLetterQueue:
    """List, replay and purge the dead-letter sub-queue of ``broker``'s queue.

    Args:
        broker: The queue (any Broker). Replayed copies are sent with ``broker.send``.
        graphs: The app's graph runtime (``app.graphs``; needs a results store),
            so dead-lettered graph tasks can be reset and replayed.
        page_size: Messages per peek.
        batch_size: Most messages locked per receive while replaying or purging.
        receive_wait: Longest wait (s) for a receive; an empty receive ends a pass.
    """

    def __init__(
        self,
        broker: Broker,
        *,
        graphs: GraphRuntime | None = None,
        page_size: int = 100,
        batch_size: int = 32,
        receive_wait: float = 2.0,
    ) -> None:
        if page_size < 1 or batch_size < 1:
            raise ValueError("page_size and batch_size must be at least 1")
        if receive_wait <= 0:
            raise ValueError("receive_wait must be positive")
        self.broker = broker
        self.graphs = graphs
        self.page_size = page_size
        self.batch_size = batch_size
        self.receive_wait = receive_wait

    # -- reading --------------------------------------------------------------------------

    async def list(
        self, limit: int | None = 100, filters: DeadLetterFilter | None = None
    ) -> list[DeadLetter]:
        """Up to ``limit`` matching dead letters, by sequence number; peeks, never locks.

        ``limit=None`` reads the whole sub-queue.
        """
        found, _ = await self._scan(filters or _EVERYTHING, limit)
        return found

    async def show(self, sequence_number: int) -> DeadLetter | None:
        """The dead letter with this sequence number, or None."""
        async with self.broker.receiver(sub_queue=SubQueue.DeadLetter) as receiver:
            page = await receiver.peek(1, from_sequence_number=sequence_number)
        for message in page:
            if message.sequence_number == sequence_number:
                return DeadLetter.from_message(message)
        return None

    async def _scan(
        self, filters: DeadLetterFilter, limit: int | None, receiver: Receiver | None = None
    ) -> tuple[builtins.list[DeadLetter], int]:
        """Matching dead letters (up to ``limit``) and how many messages were peeked."""
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        if limit == 0 or filters.sequence_numbers == frozenset():
            return [], 0
        if receiver is None:
            async with self.broker.receiver(sub_queue=SubQueue.DeadLetter) as own:
                return await self._scan(filters, limit, own)
        found: builtins.list[DeadLetter] = []
        scanned = 0
        next_seq = min(filters.sequence_numbers) if filters.sequence_numbers else None
        while limit is None or len(found) < limit:
            page = await receiver.peek(self.page_size, from_sequence_number=next_seq)
            page = sorted(
                (m for m in page if next_seq is None or m.sequence_number >= next_seq),
                key=lambda m: m.sequence_number,
            )
            if not page:
                break
            for message in page:
                scanned += 1
                letter = DeadLetter.from_message(message)
                if filters.matches(letter):
                    found.append(letter)
                    if limit is not None and len(found) >= limit:
                        break
            next_seq = page[-1].sequence_number + 1
        return found, scanned

    # -- replay ---------------------------------------------------------------------------

    async def replay(
        self,
        filters: DeadLetterFilter | None = None,
        limit: int | None = None,
        dry_run: bool = False,
        rate_per_second: float | None = None,
        reset_attempts: bool = True,
    ) -> ReplayReport:
        """Send a copy of each matching dead letter to the queue, then remove it from the DLQ.

        The copy's message id is ``<original message id>:replay:<n>`` and its
        application properties carry the lineage (see module docstring).
        With ``reset_attempts`` the task is re-encoded with ``attempts = 0`` so
        it gets its full retry budget again; undecodable bodies are resent as
        they are. If sending fails the message is abandoned back into the DLQ
        and reported as failed. ``rate_per_second`` bounds the sends per
        second. A dry run peeks only and reports what would be replayed.
        """
        if rate_per_second is not None and not rate_per_second > 0:
            raise ValueError(f"rate_per_second must be positive, got {rate_per_second}")
        filters = filters or _EVERYTHING
        report = ReplayReport(dry_run=dry_run)
        if dry_run:
            letters, _ = await self._scan(filters, limit)
            for letter in letters:
                skip = await self._graph_check(letter)
                if skip is not None:
                    report.skipped.append(_outcome(letter, skip))
                else:
                    report.replayed.append(
                        _outcome(letter, new_message_id=self._replay_message_id(letter))
                    )
            return report

        pace = _Pace(rate_per_second)
        batch = self.batch_size
        if rate_per_second is not None:
            # Receive about a second of sends at a time: locks stay fresh while waiting.
            batch = max(1, min(batch, math.floor(rate_per_second)))

        async def act(receiver: Receiver, message: ReceivedMessage, letter: DeadLetter) -> _Settled:
            skip = await self._graph_check(letter)
            if skip is not None:
                report.skipped.append(_outcome(letter, skip))
                return "keep"
            try:
                await self._wait_turn(pace.book(), receiver, message)
            except MessageLockLost as exc:
                report.failed.append(_outcome(letter, f"lock lost before sending: {exc}"))
                return "settled"  # nothing to give back: it is in the DLQ again already
            except BrokerError as exc:
                report.failed.append(_outcome(letter, f"{type(exc).__name__}: {exc}"))
                return "keep"
            note: str | None = None
            try:
                note = await self._reset_graph_node(letter, reset_attempts)
                outgoing = self._replay_copy(message, letter, reset_attempts)
                await self.broker.send([outgoing])
            except Exception as exc:
                detail = f"{type(exc).__name__}: {exc}"
                if note and note.startswith("graph node reset"):
                    detail += (
                        "; its graph node was already reset to scheduled: replay again, or "
                        "recover the graph to dispatch it"
                    )
                report.failed.append(_outcome(letter, detail))
                return "keep"
            try:
                await receiver.complete(message)
            except BrokerError as exc:
                note = (
                    f"sent, but the dead-lettered original could not be removed ({exc}); "
                    "it is still in the dead-letter queue"
                )
            report.replayed.append(_outcome(letter, note, outgoing.message_id))
            return "settled"

        missing = await self._sweep(filters, limit, batch, act)
        for letter in missing:
            report.skipped.append(_outcome(letter, "no longer in the dead-letter queue"))
        return report

    def _replay_message_id(self, letter: DeadLetter) -> str:
        lineage = letter.lineage
        original = lineage.original_message_id if lineage else letter.message_id
        count = (lineage.replay_count if lineage else 0) + 1
        return f"{original}:replay:{count}"

    def _replay_copy(
        self, message: ReceivedMessage, letter: DeadLetter, reset_attempts: bool
    ) -> OutgoingMessage:
        lineage = letter.lineage
        properties: dict[str, PropertyValue] = {
            key: _property_value(value)
            for key, value in message.application_properties.items()
            if key not in _BROKER_PROPERTIES and key not in _LINEAGE_KEYS
        }
        properties[ORIGINAL_MESSAGE_ID] = (
            lineage.original_message_id if lineage else letter.message_id
        )
        original_seq = lineage.original_sequence_number if lineage else None
        properties[ORIGINAL_SEQUENCE_NUMBER] = (
            original_seq if original_seq is not None else letter.sequence_number
        )
        if letter.reason is not None:
            properties[DEAD_LETTER_REASON] = letter.reason
        properties[REPLAY_COUNT] = (lineage.replay_count if lineage else 0) + 1
        properties[REPLAYED_AT] = datetime.now(UTC).isoformat()
        body = message.body
        if reset_attempts and letter.task is not None:
            task = decode_task(body)
            task.attempts = RetryAttempts()
            body = encode_task(task, wrapped=is_wrapped(body))
        return OutgoingMessage(
            body=body,
            message_id=self._replay_message_id(letter),
            application_properties=properties,
            content_type=message.content_type,
            correlation_id=message.correlation_id,
            subject=message.subject,
        )

    async def _wait_turn(self, slot: float, receiver: Receiver, message: ReceivedMessage) -> None:
        """Sleep until ``slot`` (monotonic), keeping the message's lock alive meanwhile."""
        while (left := slot - time.monotonic()) > 0:
            step = left
            if message.locked_until is not None:
                lock_left = (message.locked_until - datetime.now(UTC)).total_seconds()
                step = min(step, max(0.01, lock_left / 2))
            await asyncio.sleep(step)
            await self._keep_lock(receiver, message)
        await self._keep_lock(receiver, message)

    async def _keep_lock(self, receiver: Receiver, message: ReceivedMessage) -> None:
        until = message.locked_until
        if until is None:
            return
        if until - datetime.now(UTC) < timedelta(seconds=LOCK_MARGIN):
            await receiver.renew_lock(message)

    # -- graph tasks ------------------------------------------------------------------------

    async def _graph_check(self, letter: DeadLetter) -> str | None:
        """Why a graph task cannot be replayed (None if it can, or is no graph task)."""
        task = letter.task
        if task is None or not task.graph_id:
            return None
        if self.graphs is None:
            return GRAPH_NEEDS_RUNTIME
        graph = await self.graphs.load(task.graph_id)
        if graph is None or task.task_id not in graph.tasks:
            return f"graph task: graph {task.graph_id} or its task {task.task_id} is not stored"
        got = await self.graphs.records.get(node_blob(task.graph_id, task.task_id))
        if got is not None and got[0].skipped:
            return "graph task: its graph skipped the node (a parent did not succeed)"
        return None

    async def _reset_graph_node(self, letter: DeadLetter, reset_attempts: bool) -> str | None:
        """Make a graph node runnable again; returns a note for the report, if any."""
        task = letter.task
        if task is None or not task.graph_id or self.graphs is None:
            return None
        name = node_blob(task.graph_id, task.task_id)
        step = Step(
            lambda rec: graph_node.reset(rec, rerun_failed=True, reset_attempts=reset_attempts)
        )
        await self.graphs.records.update(name, step)
        if step.value is TaskStatus.Success:
            return "graph node had already succeeded: only its continuation runs again"
        if step.value is not None:
            return f"graph node reset from {step.value.value} to scheduled"
        return None

    # -- purge ----------------------------------------------------------------------------

    async def purge(
        self,
        filters: DeadLetterFilter | None = None,
        limit: int | None = None,
        dry_run: bool = False,
    ) -> PurgeReport:
        """Remove (complete) matching dead letters. A dry run peeks only."""
        filters = filters or _EVERYTHING
        report = PurgeReport(dry_run=dry_run)
        if dry_run:
            letters, _ = await self._scan(filters, limit)
            report.purged.extend(_outcome(letter) for letter in letters)
            return report

        async def act(receiver: Receiver, message: ReceivedMessage, letter: DeadLetter) -> _Settled:
            try:
                await receiver.complete(message)
            except BrokerError as exc:
                report.failed.append(_outcome(letter, f"{type(exc).__name__}: {exc}"))
                return "keep"
            report.purged.append(_outcome(letter))
            return "settled"

        missing = await self._sweep(filters, limit, self.batch_size, act)
        for letter in missing:
            report.skipped.append(_outcome(letter, "no longer in the dead-letter queue"))
        return report

    # -- the locked pass ------------------------------------------------------------------

    async def _sweep(
        self, filters: DeadLetterFilter, limit: int | None, batch: int, act: _Action
    ) -> builtins.list[DeadLetter]:
        """Receive the dead letters a peek found matching and ``act`` on each.

        Returns the targets that were not found (settled meanwhile by someone else).
        Every message received and not settled by ``act`` is abandoned at the end.
        """
        async with self.broker.receiver(sub_queue=SubQueue.DeadLetter) as receiver:
            targets, scanned = await self._scan(filters, limit, receiver)
            if not targets:
                return []
            pending = {letter.sequence_number: letter for letter in targets}
            held: dict[int, ReceivedMessage] = {}
            # Guard against a pass that never ends (locks lapsing as fast as we go).
            budget = 2 * scanned + 10 * batch
            received = 0
            try:
                while pending and received < budget:
                    # Ask for what is left to find, plus as many as the non-matching
                    # messages met so far (they suggest how sparse the targets are).
                    want = min(batch, len(pending) + len(held))
                    messages = await receiver.receive(want, self.receive_wait)
                    if not messages:
                        break
                    received += len(messages)
                    for message in messages:
                        seq = message.sequence_number
                        # Seen before: its earlier lock lapsed; hold the new one.
                        held[seq] = message
                        if seq not in pending:
                            continue
                        del pending[seq]
                        letter = DeadLetter.from_message(message)
                        if not filters.matches(letter):
                            continue
                        if await act(receiver, message, letter) == "settled":
                            del held[seq]
            finally:
                await self._abandon_all(receiver, held.values())
        return sorted(pending.values(), key=lambda letter: letter.sequence_number)

    @staticmethod
    async def _abandon_all(receiver: Receiver, messages: Iterable[ReceivedMessage]) -> None:
        for message in list(messages):
            # A lapsed lock means the message is back in the queue already.
            with contextlib.suppress(BrokerError):
                await receiver.abandon(message)


def _property_value(value: Any) -> PropertyValue:
    if value is None or isinstance(value, str | int | float | bool | bytes):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)

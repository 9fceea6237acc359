"""DeadLetterQueue on the in-memory broker: list by peeking, replay with lineage, purge."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from boilermaker import Boilermaker, RetryException, RetryPolicy, Task
from boilermaker.broker import (
    BrokerError,
    OutgoingMessage,
    ReceivedMessage,
    SubQueue,
)
from boilermaker.dead_letters import (
    DEAD_LETTER_REASON,
    GRAPH_NEEDS_RUNTIME,
    ORIGINAL_MESSAGE_ID,
    ORIGINAL_SEQUENCE_NUMBER,
    REPLAY_COUNT,
    REPLAYED_AT,
    DeadLetter,
    DeadLetterFilter,
    DeadLetterQueue,
)
from boilermaker.envelope import decode_task
from boilermaker.ids import GraphId
from boilermaker.memory import InMemoryBroker, InMemoryResultsStore
from boilermaker.results import node_blob
from boilermaker.task import TaskGraphBuilder, TaskStatus
from boilermaker.worker import (
    EXPECTATION_FAILED,
    INVALID_TASK_FORMAT,
    PROCESSING_ERROR,
    TASK_FAILED,
)
from tests.core.flaky_broker import FlakyBroker

WAIT = 0.05


class State:
    def __init__(self) -> None:
        self.broken: set[str] = set()
        self.runs: list[str] = []


async def charge(state: State, order: str) -> str:
    state.runs.append(order)
    if order in state.broken:
        raise ValueError(f"card declined for {order}")
    return f"charged {order}"


async def poll(state: State, feed: str) -> None:
    state.runs.append(feed)
    raise RetryException(f"{feed} not ready")


def new_app(**broker_options: Any) -> tuple[Boilermaker, State, InMemoryBroker]:
    state = State()
    broker = InMemoryBroker(**broker_options)
    app = Boilermaker(state, broker)
    app.register_async(charge, policy=RetryPolicy.no_retry())
    app.register_async(poll, policy=RetryPolicy(max_tries=2, delay=0))
    return app, state, broker


async def dead_letter_everything(app: Boilermaker, state: State, broker: InMemoryBroker) -> None:
    """Two TaskFailed (charge), one ProcessingError (poll), one ExpectationFailed, one junk."""
    state.broken |= {"o-1", "o-2"}
    await app.apply_async(charge, "o-1")
    await app.apply_async(charge, "o-2")
    await app.apply_async(poll, "feed-a")
    await app.publish_task(Task.si("ghost"))
    await broker.send([OutgoingMessage(body=b"\xffnot json", message_id="junk-1")])
    await app.run_until_idle(timeout=10)
    assert broker.counts().dead_lettered == 5


def dlq(broker: InMemoryBroker, **options: Any) -> DeadLetterQueue:
    options.setdefault("receive_wait", WAIT)
    return DeadLetterQueue(broker, **options)


async def peek_main(broker: InMemoryBroker) -> list[ReceivedMessage]:
    async with broker.receiver() as receiver:
        return await receiver.peek(100)


# -- list -------------------------------------------------------------------------------------


async def test_list_reads_reason_description_and_decoded_task_of_each_dead_letter() -> None:
    app, state, broker = new_app()
    await dead_letter_everything(app, state, broker)

    letters = await dlq(broker).list()

    # poll's dead letter is its retry message, sent after the others.
    assert [letter.reason for letter in letters] == [
        TASK_FAILED,
        TASK_FAILED,
        EXPECTATION_FAILED,
        INVALID_TASK_FORMAT,
        PROCESSING_ERROR,
    ]
    first = letters[0]
    assert first.task is not None
    assert first.function_name == "charge"
    assert first.task.args == ["o-1"]
    assert first.task.attempts == 0
    assert first.attempts_made == 1
    assert first.task.graph_id is None
    assert first.task.task_id == first.message_id
    assert first.description == "ValueError: card declined for o-1"
    assert first.delivery_count == 0
    assert first.enqueued_time is not None
    assert first.enqueued_time.tzinfo is not None
    assert first.lineage is None
    assert "retries exhausted after 2 attempt(s)" in (letters[4].description or "")
    assert letters[4].task is not None
    assert letters[4].task.attempts == 1
    assert letters[4].attempts_made == 2
    assert letters[2].attempts_made == 0
    assert letters[3].attempts_made is None
    assert letters[2].function_name == "ghost"
    junk = letters[3]
    assert junk.task is None
    assert junk.message_id == "junk-1"
    assert junk.decode_error is not None
    assert "UTF-8" in junk.decode_error
    assert [letter.sequence_number for letter in letters] == sorted(
        letter.sequence_number for letter in letters
    )


async def test_list_only_peeks_so_nothing_is_locked_or_counted_as_delivered() -> None:
    app, state, broker = new_app()
    await dead_letter_everything(app, state, broker)

    await dlq(broker).list()
    await dlq(broker).list()

    assert broker.counts().dead_lettered == 5
    assert [m.delivery_count for m in broker.dead_letters()] == [0] * 5
    async with broker.receiver(sub_queue=SubQueue.DeadLetter) as receiver:
        assert len(await receiver.receive(10, WAIT)) == 5


async def test_list_pages_through_the_whole_queue_and_stops_at_the_limit() -> None:
    app, state, broker = new_app()
    await dead_letter_everything(app, state, broker)

    small_pages = dlq(broker, page_size=2)
    assert len(await small_pages.list(limit=None)) == 5
    assert len(await small_pages.list(limit=3)) == 3
    assert await small_pages.list(limit=0) == []
    matched = await small_pages.list(limit=1, filters=DeadLetterFilter(reason=INVALID_TASK_FORMAT))
    assert [letter.message_id for letter in matched] == ["junk-1"]


async def test_filters_by_reason_function_task_id_time_and_sequence_number() -> None:
    app, state, broker = new_app()
    await dead_letter_everything(app, state, broker)
    queue = dlq(broker)
    letters = await queue.list()
    by_reason = await queue.list(filters=DeadLetterFilter(reason="taskfailed"))
    by_function = await queue.list(filters=DeadLetterFilter(function_name="poll"))
    target = letters[1]
    assert target.task is not None
    by_task = await queue.list(filters=DeadLetterFilter(task_id=target.task.task_id))
    by_seq = await queue.list(filters=DeadLetterFilter(sequence_numbers=frozenset({4, 5})))
    now = datetime.now(UTC)
    future = await queue.list(filters=DeadLetterFilter(enqueued_since=now + timedelta(hours=1)))
    past = await queue.list(
        filters=DeadLetterFilter(enqueued_since=now - timedelta(hours=1), enqueued_until=now)
    )
    naive_until = await queue.list(
        filters=DeadLetterFilter(enqueued_until=datetime.now(UTC).replace(tzinfo=None))
    )

    assert [letter.function_name for letter in by_reason] == ["charge", "charge"]
    assert [letter.reason for letter in by_function] == [PROCESSING_ERROR]
    assert by_task == [target]
    assert [letter.function_name for letter in by_seq] == ["ghost", None]
    assert future == []
    assert len(past) == 5
    assert len(naive_until) == 5
    assert await queue.list(filters=DeadLetterFilter(function_name="nope")) == []


def test_a_time_range_that_ends_before_it_starts_is_refused() -> None:
    now = datetime.now(UTC)
    with pytest.raises(ValueError, match="after"):
        DeadLetterFilter(enqueued_since=now, enqueued_until=now - timedelta(seconds=1))


async def test_show_finds_one_dead_letter_by_sequence_number() -> None:
    app, state, broker = new_app()
    await dead_letter_everything(app, state, broker)
    queue = dlq(broker)
    letters = await queue.list()

    shown = await queue.show(letters[2].sequence_number)

    assert shown == letters[2]
    assert await queue.show(10_000) is None
    doc = letters[3].to_dict(include_body=True)
    assert doc["task"] is None
    assert "body_base64" in doc
    assert doc["application_properties"]["DeadLetterReason"] == INVALID_TASK_FORMAT


# -- replay -----------------------------------------------------------------------------------


async def test_replay_dry_run_reports_what_would_happen_and_changes_nothing() -> None:
    app, state, broker = new_app()
    await dead_letter_everything(app, state, broker)
    before = [(m.sequence_number, m.delivery_count) for m in broker.dead_letters()]

    report = await dlq(broker).replay(DeadLetterFilter(reason=TASK_FAILED), dry_run=True)

    assert report.dry_run
    assert len(report.replayed) == 2
    assert report.replayed[0].new_message_id == f"{report.replayed[0].message_id}:replay:1"
    assert report.failed == []
    assert report.skipped == []
    assert [(m.sequence_number, m.delivery_count) for m in broker.dead_letters()] == before
    assert await peek_main(broker) == []


async def test_replay_sends_copies_with_lineage_and_reset_attempts_then_removes_originals() -> None:
    app, state, broker = new_app()
    await dead_letter_everything(app, state, broker)
    queue = dlq(broker)
    originals = await queue.list(filters=DeadLetterFilter(reason=TASK_FAILED))

    report = await queue.replay(DeadLetterFilter(reason=TASK_FAILED))

    assert report.replayed_sequence_numbers == [o.sequence_number for o in originals]
    assert report.failed == []
    assert report.skipped == []
    copies = await peek_main(broker)
    assert [c.message_id for c in copies] == [f"{o.message_id}:replay:1" for o in originals]
    for copy, original in zip(copies, originals, strict=True):
        props = copy.application_properties
        assert props[ORIGINAL_MESSAGE_ID] == original.message_id
        assert props[ORIGINAL_SEQUENCE_NUMBER] == original.sequence_number
        assert props[DEAD_LETTER_REASON] == TASK_FAILED
        assert props[REPLAY_COUNT] == 1
        assert datetime.fromisoformat(props[REPLAYED_AT]).tzinfo is not None
        assert props["boilermaker_function"] == "charge"
        assert "DeadLetterReason" not in props
        task = decode_task(copy.body)
        assert task.attempts.attempts == 0
        assert original.task is not None
        assert str(task.task_id) == original.task.task_id
    remaining = await queue.list()
    assert [letter.reason for letter in remaining] == [
        EXPECTATION_FAILED,
        INVALID_TASK_FORMAT,
        PROCESSING_ERROR,
    ]
    counts = broker.counts()
    assert counts.locked == 0
    assert counts.active == 2


async def test_replayed_tasks_run_again_and_a_second_failure_keeps_the_lineage() -> None:
    app, state, broker = new_app()
    await dead_letter_everything(app, state, broker)
    queue = dlq(broker)
    state.broken = {"o-2"}  # o-1 is fixed now, o-2 is not
    state.runs.clear()

    await queue.replay(DeadLetterFilter(function_name="charge"))
    await app.run_until_idle(timeout=10)

    assert sorted(state.runs) == ["o-1", "o-2"]
    again = await queue.list(filters=DeadLetterFilter(function_name="charge"))
    assert len(again) == 1
    lineage = again[0].lineage
    assert lineage is not None
    assert again[0].task is not None
    assert again[0].task.args == ["o-2"]
    assert lineage.replay_count == 1
    assert lineage.dead_letter_reason == TASK_FAILED
    first_id = lineage.original_message_id

    report = await queue.replay(DeadLetterFilter(function_name="charge"))

    assert report.replayed[0].new_message_id == f"{first_id}:replay:2"
    (copy,) = await peek_main(broker)
    assert copy.application_properties[ORIGINAL_MESSAGE_ID] == first_id
    assert copy.application_properties[ORIGINAL_SEQUENCE_NUMBER] == (
        lineage.original_sequence_number
    )
    assert copy.application_properties[REPLAY_COUNT] == 2


async def test_replay_can_keep_attempts_and_resends_undecodable_bodies_unchanged() -> None:
    app, state, broker = new_app()
    await dead_letter_everything(app, state, broker)
    letters = await dlq(broker).list()
    junk_seq, poll_seq = letters[3].sequence_number, letters[4].sequence_number

    report = await dlq(broker).replay(
        DeadLetterFilter(sequence_numbers=frozenset({poll_seq, junk_seq})), reset_attempts=False
    )

    assert report.replayed_sequence_numbers == [junk_seq, poll_seq]
    junk, kept = await peek_main(broker)
    assert decode_task(kept.body).attempts.attempts == 1
    assert kept.body == letters[4].body
    assert junk.body == b"\xffnot json"
    assert junk.message_id == "junk-1:replay:1"
    assert junk.application_properties[DEAD_LETTER_REASON] == INVALID_TASK_FORMAT


async def test_replay_copies_are_not_dropped_by_duplicate_detection() -> None:
    app, state, broker = new_app(duplicate_detection_window=600)
    await dead_letter_everything(app, state, broker)

    report = await dlq(broker).replay(DeadLetterFilter(reason=TASK_FAILED))

    assert len(report.replayed) == 2
    assert broker.duplicates_dropped == 0
    assert len(await peek_main(broker)) == 2


async def test_replay_respects_the_limit_and_leaves_non_matching_messages_unlocked() -> None:
    app, state, broker = new_app()
    await dead_letter_everything(app, state, broker)

    report = await dlq(broker, batch_size=2).replay(DeadLetterFilter(reason=TASK_FAILED), limit=1)

    assert len(report.replayed) == 1
    counts = broker.counts()
    assert counts.dead_lettered == 4
    assert counts.locked == 0
    async with broker.receiver(sub_queue=SubQueue.DeadLetter) as receiver:
        assert len(await receiver.receive(10, WAIT)) == 4


async def test_non_matching_messages_received_in_a_pass_are_abandoned_at_its_end() -> None:
    app, state, broker = new_app()
    await dead_letter_everything(app, state, broker)

    # poll's message is last; every other message is received (and held) before it.
    report = await dlq(broker, batch_size=1).replay(DeadLetterFilter(reason=PROCESSING_ERROR))

    assert report.replayed_sequence_numbers == [6]
    letters = await dlq(broker).list()
    assert len(letters) == 4
    assert all(letter.delivery_count == 1 for letter in letters)
    async with broker.receiver(sub_queue=SubQueue.DeadLetter) as receiver:
        assert len(await receiver.receive(10, WAIT)) == 4


async def test_a_failed_send_abandons_the_message_back_into_the_dead_letter_queue() -> None:
    app, state, broker = new_app()
    await dead_letter_everything(app, state, broker)
    failing = FlakyBroker(broker)
    failing.always = BrokerError("namespace unreachable")

    report = await DeadLetterQueue(failing, receive_wait=WAIT).replay(
        DeadLetterFilter(reason=TASK_FAILED)
    )

    assert report.replayed == []
    assert len(report.failed) == 2
    assert all("namespace unreachable" in (o.detail or "") for o in report.failed)
    assert broker.counts().dead_lettered == 5
    assert broker.counts().locked == 0
    assert await peek_main(broker) == []

    failing.always = None
    retried = await DeadLetterQueue(failing, receive_wait=WAIT).replay(
        DeadLetterFilter(reason=TASK_FAILED)
    )
    assert report.failed_sequence_numbers == retried.replayed_sequence_numbers


async def test_replay_is_rate_limited() -> None:
    app, state, broker = new_app()
    state.broken = {f"o-{n}" for n in range(6)}
    for n in range(6):
        await app.apply_async(charge, f"o-{n}")
    await app.run_until_idle(timeout=10)

    started = time.monotonic()
    report = await dlq(broker).replay(rate_per_second=20)
    elapsed = time.monotonic() - started

    assert len(report.replayed) == 6
    assert elapsed >= 5 / 20 * 0.9
    with pytest.raises(ValueError, match="positive"):
        await dlq(broker).replay(rate_per_second=0)


async def test_a_slow_replay_keeps_the_locks_of_waiting_messages_alive() -> None:
    app, state, broker = new_app(lock_duration=0.3)
    state.broken = {"o-1", "o-2", "o-3"}
    for order in sorted(state.broken):
        await app.apply_async(charge, order)
    await app.run_until_idle(timeout=10)

    # 0.4 s between sends is longer than the 0.3 s lock.
    report = await dlq(broker, batch_size=3).replay(rate_per_second=2.5)

    assert report.failed == []
    assert len(report.replayed) == 3
    assert broker.counts().dead_lettered == 0
    assert len(await peek_main(broker)) == 3


async def test_a_target_settled_by_someone_else_meanwhile_is_reported_as_skipped() -> None:
    app, state, broker = new_app()
    await dead_letter_everything(app, state, broker)
    queue = dlq(broker)
    (letter,) = await queue.list(filters=DeadLetterFilter(sequence_numbers=frozenset({1})))

    class Racing(DeadLetterQueue):
        """Another tool removes the message between the peek and the receive."""

        async def _scan(
            self, filters: DeadLetterFilter, limit: int | None, receiver: Any = None
        ) -> Any:
            found = await super()._scan(filters, limit, receiver)
            await queue.purge(DeadLetterFilter(sequence_numbers=frozenset({1})))
            return found

    report = await Racing(broker, receive_wait=WAIT).replay(
        DeadLetterFilter(sequence_numbers=frozenset({1}))
    )

    assert report.replayed == []
    assert [o.sequence_number for o in report.skipped] == [letter.sequence_number]
    assert report.skipped[0].detail == "no longer in the dead-letter queue"


# -- purge ------------------------------------------------------------------------------------


async def test_purge_dry_run_lists_and_purge_removes_only_matching_messages() -> None:
    app, state, broker = new_app()
    await dead_letter_everything(app, state, broker)
    queue = dlq(broker)

    dry = await queue.purge(DeadLetterFilter(reason=TASK_FAILED), dry_run=True)
    assert len(dry.purged) == 2
    assert broker.counts().dead_lettered == 5

    report = await queue.purge(DeadLetterFilter(reason=TASK_FAILED))
    assert report.purged_sequence_numbers == dry.purged_sequence_numbers
    assert broker.counts().dead_lettered == 3
    assert broker.counts().locked == 0

    everything = await queue.purge()
    assert len(everything.purged) == 3
    assert broker.counts().dead_lettered == 0
    assert await peek_main(broker) == []


# -- graph tasks ------------------------------------------------------------------------------


async def step(state: State, name: str) -> str:
    state.runs.append(name)
    if name in state.broken:
        raise ValueError(f"{name} failed")
    return f"{name} done"


async def failed_graph() -> tuple[Boilermaker, State, InMemoryBroker, Any, dict[str, Task]]:
    state = State()
    broker = InMemoryBroker()
    app = Boilermaker(state, broker, results_storage=InMemoryResultsStore())
    app.register_async(step, policy=RetryPolicy.no_retry())
    tasks = {name: app.create_task(step, name) for name in ("fetch", "save")}
    graph = TaskGraphBuilder().add(tasks["fetch"]).then(tasks["save"]).build()
    state.broken = {"save"}
    await app.publish_graph(graph)
    await app.run_until_idle(timeout=10)
    assert broker.counts().dead_lettered == 1
    return app, state, broker, graph, tasks


async def test_graph_tasks_are_skipped_without_a_graph_runtime_and_stay_dead_lettered() -> None:
    _app, _state, broker, _graph, tasks = await failed_graph()

    dry = await dlq(broker).replay(dry_run=True)
    report = await dlq(broker).replay()

    for result in (dry, report):
        assert result.replayed == []
        assert [o.detail for o in result.skipped] == [GRAPH_NEEDS_RUNTIME]
    (letter,) = await dlq(broker).list()
    assert letter.task is not None
    assert letter.task.graph_id is not None
    assert letter.task.task_id == tasks["save"].task_id
    assert broker.counts().locked == 0
    assert await peek_main(broker) == []


async def test_graph_task_replay_resets_the_node_so_it_runs_again() -> None:
    app, state, broker, graph, tasks = await failed_graph()
    save = tasks["save"].task_id
    progress = await app.graph_progress(graph.graph_id)
    assert progress is not None
    assert progress.statuses[save] is TaskStatus.Failure

    report = await dlq(broker, graphs=app.graphs).replay()

    assert len(report.replayed) == 1
    assert "reset from failure to scheduled" in (report.replayed[0].detail or "")
    got = await app.graphs.records.get(node_blob(graph.graph_id, save))
    assert got is not None
    assert got[0].status is TaskStatus.Scheduled
    assert got[0].attempt == 0
    assert got[0].errors is None

    state.broken.clear()
    state.runs.clear()
    await app.run_until_idle(timeout=10)

    assert state.runs == ["save"]
    progress = await app.graph_progress(graph.graph_id)
    assert progress is not None
    assert progress.statuses[save] is TaskStatus.Success
    assert broker.counts().dead_lettered == 0


async def test_a_failed_send_after_a_graph_node_reset_leaves_it_recoverable() -> None:
    app, state, broker, graph, tasks = await failed_graph()
    failing = FlakyBroker(broker)
    failing.always = BrokerError("namespace unreachable")

    report = await DeadLetterQueue(failing, graphs=app.graphs, receive_wait=WAIT).replay()

    assert report.replayed == []
    (failure,) = report.failed
    assert "namespace unreachable" in (failure.detail or "")
    assert "already reset to scheduled" in (failure.detail or "")
    assert broker.counts().dead_lettered == 1
    state.broken.clear()
    state.runs.clear()
    assert await app.recover_graph(graph.graph_id, stalled_after=timedelta(0)) == [
        tasks["save"].task_id
    ]
    await app.run_until_idle(timeout=10)
    assert state.runs == ["save"]


async def test_a_dead_letter_of_an_unknown_graph_is_skipped_with_the_reason() -> None:
    app, _state, broker, _graph, _tasks = await failed_graph()
    await dlq(broker).purge()
    ghost = Task.si("step", "x")
    ghost.graph_id = GraphId("no-such-graph")
    await app.publish_task(ghost)
    await app.run_until_idle(timeout=10)
    assert broker.counts().dead_lettered == 1

    report = await dlq(broker, graphs=app.graphs).replay()

    assert report.replayed == []
    assert "no-such-graph" in (report.skipped[0].detail or "")
    assert "not stored" in (report.skipped[0].detail or "")


def test_dead_letter_records_round_trip_through_to_dict() -> None:
    message = ReceivedMessage(
        body=b"{}",
        message_id="m-1",
        sequence_number=7,
        delivery_count=2,
        enqueued_time=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
        application_properties={
            ORIGINAL_MESSAGE_ID: "first",
            ORIGINAL_SEQUENCE_NUMBER: "3",
            REPLAY_COUNT: 4,
            REPLAYED_AT: "2025-01-01T00:00:00+00:00",
        },
        dead_letter_reason="MaxDeliveryCountExceeded",
    )

    letter = DeadLetter.from_message(message)
    doc = letter.to_dict()

    assert letter.task is None
    assert letter.lineage is not None
    assert letter.lineage.original_sequence_number == 3
    assert letter.lineage.replay_count == 4
    assert doc["enqueued_time"] == "2025-01-02T03:04:05+00:00"
    assert doc["lineage"]["replayed_at"] == "2025-01-01T00:00:00+00:00"
    assert doc["reason"] == "MaxDeliveryCountExceeded"

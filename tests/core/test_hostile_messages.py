"""Whatever lands on the queue, every message ends in exactly one of two ways.

Property-based (hypothesis) on the in-memory broker and store: bodies of
arbitrary bytes, JSON of any shape, and task documents with hostile fields
(ids with path characters, extreme numbers, unicode edge cases, deep
nesting, unknown and dotted function names, graph ids of graphs that do not
exist). Each message must either have run (once: nothing here is delivered
twice) and been completed, or be dead-lettered on its first delivery with a
documented reason and a description naming the cause. The worker never
exits, and no blob is written outside ``task-results/``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from boilermaker import Boilermaker, RetryException, RetryPolicy, Task
from boilermaker.broker import OutgoingMessage
from boilermaker.memory import InMemoryBroker, InMemoryResultsStore
from boilermaker.reasons import REASONS

RESULT_NAME = re.compile(
    r"task-results/[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*\.json"
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(codec=None), max_size=20)  # surrogates included
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
hostile_ids = st.one_of(
    st.sampled_from(["../../other/evil", "a/b", "..", ".x", "", "x" * 300, "ok-id", "t\u00e9"]),
    st.text(max_size=40),
)
function_names = st.one_of(
    st.sampled_from(["echo", "fails", "retries", "missing", "os.system", "a.b.c", ""]),
    st.text(max_size=30),
)


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@st.composite
def task_documents(draw: st.DrawFn) -> bytes:
    """A task body (flat or wrapped) with some fields made hostile."""
    doc: dict[str, Any] = json.loads(
        Task.si("echo", 1).model_dump_json(exclude={"sequence_number"})
    )
    if draw(st.booleans()):
        doc["function_name"] = draw(function_names)
    if draw(st.booleans()):
        doc["task_id"] = draw(hostile_ids)
    if draw(st.integers(0, 3)) == 0:
        doc["graph_id"] = draw(hostile_ids)
    if draw(st.booleans()):
        doc["payload"] = {
            "args": draw(st.lists(json_values, max_size=3)),
            "kwargs": draw(st.dictionaries(st.text(max_size=6), json_values, max_size=2)),
        }
    if draw(st.integers(0, 5)) == 0:
        doc["payload"] = {"args": [nested(draw(st.sampled_from([10, 70, 900])))], "kwargs": {}}
    if draw(st.integers(0, 4)) == 0:
        doc["policy"] = {
            "max_tries": draw(st.integers(-5, 1000)),
            "delay": draw(st.integers(-1, 10**13)),
            "delay_max": draw(st.integers(-1, 10**13)),
            "retry_mode": draw(st.integers(-1, 5)),
        }
    if draw(st.integers(0, 4)) == 0:
        doc["attempts"] = {
            "attempts": draw(st.integers(-3, 10**6)),
            "last_retry": draw(st.text(max_size=30)),
        }
    if draw(st.integers(0, 5)) == 0:
        doc[draw(st.text(max_size=10))] = draw(json_values)
    if draw(st.integers(0, 5)) == 0:
        doc["on_success"] = draw(st.one_of(json_values, st.just({"function_name": "echo"})))
    wrapped = draw(st.booleans())
    body = {"boilermaker": draw(st.sampled_from(["2.0", "2.9", "3.0", 2, "x"])), **doc}
    if wrapped:
        body = {"boilermaker": body.pop("boilermaker"), "task": doc}
    return json.dumps(body).encode()


bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    task_documents(),
)


async def echo(state: Counter[str], *args: Any, **kwargs: Any) -> None:
    state["ran"] += 1


async def fails(state: Counter[str], *args: Any, **kwargs: Any) -> None:
    state["ran"] += 1
    raise ValueError("fails on purpose")


async def retries(state: Counter[str], *args: Any, **kwargs: Any) -> None:
    state["ran"] += 1
    raise RetryException("again")


class RetriesDueNow(InMemoryBroker):
    """Scheduled messages (retries) become due at once.

    A hostile body may carry its own retry policy (a delay of days, say), which the
    worker honours; here every retry is delivered without that wait, so each one is
    run and settled within the test instead of left scheduled.
    """

    async def send(self, messages: Sequence[OutgoingMessage]) -> list[int | None]:
        now = datetime.now(UTC)
        return await super().send(
            [
                dataclasses.replace(m, scheduled_enqueue_time=now)
                if m.scheduled_enqueue_time
                else m
                for m in messages
            ]
        )


async def run_messages(raw: list[bytes]) -> dict[str, tuple[str | None, str]]:
    broker = RetriesDueNow(max_delivery_count=5)
    store = InMemoryResultsStore()
    state: Counter[str] = Counter()
    app = Boilermaker(state, broker, results_storage=store)
    for fn in (echo, fails, retries):
        app.register_async(fn, policy=RetryPolicy(max_tries=2, delay=0))
    ids = [f"m-{i}" for i in range(len(raw))]
    await broker.send(
        [OutgoingMessage(body=b, message_id=m) for b, m in zip(raw, ids, strict=True)]
    )
    worker = await app.run_until_idle(timeout=30, concurrency=4)

    letters = {m.message_id: m for m in broker.dead_letters()}
    counts = broker.counts()
    assert counts.active == counts.scheduled == counts.locked == 0, counts
    for message_id in ids:
        letter = letters.get(message_id)
        if letter is None:
            continue  # completed (a retry, if any, has its own id and was handled too)
        assert letter.dead_letter_reason in REASONS, letter.dead_letter_reason
        assert letter.dead_letter_description, "a dead letter without a description"
        assert letter.delivery_count <= 1, "dead-lettered only after redeliveries"
    for letter in letters.values():
        assert letter.dead_letter_reason in REASONS, (letter.message_id, letter.dead_letter_reason)
    # Nothing ran twice: every run was settled once (retries are new messages).
    assert worker.stats.abandoned == 0
    assert worker.stats.locks_lost == 0
    assert state["ran"] <= worker.stats.received
    for name in await store.list_names(""):
        assert RESULT_NAME.fullmatch(name), f"blob outside task-results/: {name!r}"
    return {
        m: (letters[m].dead_letter_reason, letters[m].dead_letter_description or "")
        for m in letters
    }


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(bodies, min_size=1, max_size=12))
# A task whose own policy (the default one: a delay of minutes) has its retries scheduled.
@example(
    [
        json.dumps(
            {"boilermaker": 2, "task": json.loads(Task.si("retries").model_dump_json())}
        ).encode()
    ]
)
def test_every_message_runs_and_is_settled_or_is_dead_lettered_with_a_reason(
    raw: list[bytes],
) -> None:
    asyncio.run(run_messages(raw))


def test_the_hostile_cases_named_in_the_docs_are_covered() -> None:
    # The generated cases include these; running them by name keeps them covered
    # whatever hypothesis draws.
    doc = json.loads(Task.si("echo", 1).model_dump_json(exclude={"sequence_number"}))
    cases = [
        b"\x00\xff",
        b"42",
        json.dumps({**doc, "task_id": "../../other/evil"}).encode(),
        json.dumps({**doc, "graph_id": "../../other/task-results/x"}).encode(),
        json.dumps({**doc, "function_name": "os.system"}).encode(),
        json.dumps({**doc, "policy": {**doc["policy"], "delay": 10**12}}).encode(),
        json.dumps({**doc, "payload": {"args": ["\ud800"], "kwargs": {}}}).encode(),
        json.dumps({**doc, "payload": {"args": [nested(800)], "kwargs": {}}}).encode(),
        json.dumps({**doc, "graph_id": "no-such-graph"}).encode(),
    ]
    letters = asyncio.run(run_messages(cases))
    expected = [
        ("InvalidTaskFormat", "not UTF-8"),
        ("InvalidTaskFormat", "JSON int"),
        ("InvalidTaskFormat", "task_id '../../other/evil' is not a valid id"),
        ("InvalidTaskFormat", "graph_id '../../other/task-results/x' is not a valid id"),
        ("ExpectationFailed", "'os.system' is not registered"),
        ("InvalidTaskFormat", "policy.delay"),
        ("InvalidTaskFormat", "lone surrogate"),
        ("InvalidTaskFormat", "nested more than 64 levels"),
        ("ExpectationFailed", "graph no-such-graph"),
    ]
    for i, (reason, cause) in enumerate(expected):
        got = letters[f"m-{i}"]
        assert got[0] == reason, (i, got)
        assert cause in got[1], (i, got)

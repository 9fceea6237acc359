"""UUID7 task and graph ids: version 7, time-ordered, unique."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from boilermaker import ids
from boilermaker.ids import InvalidId, check_id, new_graph_id, new_task_id, uuid7


def test_uuid7_has_version_7_and_the_rfc_variant() -> None:
    for _ in range(100):
        value = uuid7()
        assert value.version == 7
        assert value.variant == uuid.RFC_4122


def test_uuid7_carries_the_creation_time_in_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    value = uuid7()
    after = time.time_ns() // 1_000_000
    stamp = value.int >> 80
    # A burst within one millisecond may carry the stamp a little forward.
    assert before <= stamp <= after + 5


def test_ids_are_time_ordered_as_numbers_and_as_strings() -> None:
    values = [uuid7() for _ in range(20_000)]
    assert values == sorted(values, key=lambda v: v.int)
    assert len({v.int for v in values}) == len(values)
    texts = [str(v) for v in values]
    assert texts == sorted(texts)


def test_ids_created_later_sort_later() -> None:
    first = new_task_id()
    time.sleep(0.002)
    second = new_task_id()
    assert first < second


def test_unique_over_100k() -> None:
    made = [new_task_id() for _ in range(100_000)]
    assert len(set(made)) == len(made)


def test_task_and_graph_ids_are_uuid7_strings() -> None:
    for made in (new_task_id(), new_graph_id()):
        assert isinstance(made, str)
        assert uuid.UUID(made).version == 7
        assert len(made) == 36


class _FrozenClock:
    def __init__(self, ns: int) -> None:
        self.ns = ns

    def time_ns(self) -> int:
        return self.ns


def test_ids_stay_increasing_within_one_millisecond_past_the_counter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = _FrozenClock(time.time_ns())
    monkeypatch.setattr(ids, "time", clock)
    values = [uuid7().int for _ in range(10_000)]  # more than the 12-bit counter holds
    assert values == sorted(values)
    assert len(set(values)) == len(values)


def test_ids_stay_increasing_when_the_clock_steps_back(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _FrozenClock(time.time_ns())
    monkeypatch.setattr(ids, "time", clock)
    before = uuid7().int
    clock.ns -= 5_000_000_000  # five seconds back
    after = [uuid7().int for _ in range(100)]
    assert all(before < value for value in after)
    assert after == sorted(after)


# -- ids are safe blob names ---------------------------------------------------------------


BAD_IDS = ["", "../x", "a/b", "..", ".hidden", "a..b", "x" * 129, "a b", "t\x00", "é", "a\\b"]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_ids_that_could_escape_their_folder_are_refused(bad: str) -> None:
    with pytest.raises(InvalidId, match="not a valid id"):
        check_id(bad, "task id")


@pytest.mark.parametrize("good", ["01a2-b3", "t-1", "a.b_c", "x" * 128, "0"])
def test_safe_ids_are_kept(good: str) -> None:
    assert check_id(good) == good


@pytest.mark.parametrize("field", ["task_id", "graph_id"])
def test_a_message_with_a_path_in_an_id_is_invalid_task_format(field: str) -> None:
    from boilermaker.envelope import decode_task, encode_task
    from boilermaker.exceptions import InvalidTaskFormat
    from boilermaker.task import Task

    doc = json.loads(encode_task(Task.si("f")))
    doc[field] = "../../other/evil"
    with pytest.raises(InvalidTaskFormat, match=f"{field}.*not a valid id"):
        decode_task(json.dumps(doc).encode())


async def test_no_blob_name_is_built_from_a_bad_id() -> None:
    from boilermaker import Boilermaker
    from boilermaker.memory import InMemoryBroker, InMemoryResultsStore
    from boilermaker.results import graph_blob, node_blob, standalone_blob
    from boilermaker.task import TaskGraphBuilder

    for build in (
        lambda: graph_blob("../x"),
        lambda: node_blob("g", "../../other/evil"),
        lambda: standalone_blob("a/b"),
        lambda: TaskGraphBuilder(graph_id="../g"),  # type: ignore[arg-type]
    ):
        with pytest.raises(InvalidId):
            build()
    store = InMemoryResultsStore()
    app = Boilermaker({}, InMemoryBroker(), results_storage=store)
    with pytest.raises(InvalidId):
        await app.get_result("../../other/task-results/x")
    assert await store.list_names("") == []

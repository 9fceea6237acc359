"""The wire contract: flat and wrapped bodies, legacy 1.x bodies, and every rejection."""

from __future__ import annotations

import json
from typing import Any

import pytest

from boilermaker.envelope import (
    CONTENT_TYPE,
    ENVELOPE_KEY,
    ENVELOPE_VERSION,
    decode_task,
    encode_task,
    is_wrapped,
)
from boilermaker.exceptions import InvalidTaskFormat
from boilermaker.retries import RetryMode, RetryPolicy
from boilermaker.task import Task


def envelope(task: dict[str, Any], version: Any = ENVELOPE_VERSION) -> bytes:
    return json.dumps({ENVELOPE_KEY: version, "task": task}).encode()


def test_encoded_task_has_its_fields_at_the_top_level_and_a_version() -> None:
    task = Task.si("process_data", "data_123", priority="high")
    doc = json.loads(encode_task(task))
    assert doc[ENVELOPE_KEY] == ENVELOPE_VERSION == "2.0"
    assert doc["function_name"] == "process_data"
    assert doc["task_id"] == task.task_id
    assert doc["payload"] == {"args": ["data_123"], "kwargs": {"priority": "high"}}
    assert doc["policy"] == {"max_tries": 5, "delay": 120, "delay_max": 120, "retry_mode": 0}
    assert set(doc["attempts"]) == {"attempts", "last_retry"}
    assert "sequence_number" not in doc
    assert "task" not in doc
    assert not is_wrapped(encode_task(task))
    assert CONTENT_TYPE == "application/json"


def test_wrapped_task_nests_its_fields_under_task() -> None:
    task = Task.si("node", 1)
    body = encode_task(task, wrapped=True)
    doc = json.loads(body)
    assert set(doc) == {ENVELOPE_KEY, "task"}
    assert doc["task"]["function_name"] == "node"
    assert is_wrapped(body)
    assert decode_task(body) == task
    assert not is_wrapped(b"not json")


def test_round_trip_keeps_every_field() -> None:
    policy = RetryPolicy(max_tries=7, delay=3, delay_max=90, retry_mode=RetryMode.Exponential)
    task = Task.si(
        "work",
        1,
        2.5,
        None,
        True,
        [1, [2, {"deep": "x"}]],
        should_dead_letter=False,
        acks_late=False,
        policy=policy,
        key={"nested": [None, False]},
    )
    task.attempts.inc()
    task.graph_id = "graph-1"  # type: ignore[assignment]
    task.diagnostic_id = "00-abc-def-01"
    task.sequence_number = 42
    again = decode_task(encode_task(task))
    assert again == task == decode_task(encode_task(task, wrapped=True))
    assert again.task_id == task.task_id
    assert again.policy == policy
    assert again.attempts.attempts == 1
    assert again.attempts.last_retry == task.attempts.last_retry
    assert again.args == [1, 2.5, None, True, [1, [2, {"deep": "x"}]]]
    assert again.kwargs == {"key": {"nested": [None, False]}}
    assert (again.should_dead_letter, again.acks_late) == (False, False)
    assert again.graph_id == "graph-1"
    assert again.diagnostic_id == "00-abc-def-01"
    # The sequence number belongs to a message, not to the task on the wire.
    assert again.sequence_number is None


def test_round_trip_of_chained_callbacks() -> None:
    first, second, third, handler = (Task.si(n, i) for i, n in enumerate("abch"))
    first >> second >> third
    first.on_failure = handler
    second.on_failure = handler
    again = decode_task(encode_task(first))
    assert again.on_success is not None
    assert again.on_success.task_id == second.task_id
    assert again.on_success.on_success is not None
    assert again.on_success.on_success.task_id == third.task_id
    assert again.on_failure is not None
    assert again.on_failure.task_id == handler.task_id
    assert again.on_success.on_failure is not None
    assert again.on_success.on_failure.function_name == "h"
    assert again == first


def test_round_trip_of_unicode() -> None:
    task = Task.si("ünïcode_fn", "日本語 ✓ 🎉", emoji="🐍", **{"ключ": "значение"})
    body = encode_task(task)
    assert "日本語".encode() in body  # raw UTF-8, not \\u escapes
    again = decode_task(body)
    assert again.args == ["日本語 ✓ 🎉"]
    assert again.kwargs == {"emoji": "🐍", "ключ": "значение"}
    assert again.function_name == "ünïcode_fn"


def test_decode_accepts_str_bytearray_and_memoryview() -> None:
    task = Task.si("f", 1)
    body = encode_task(task)
    for form in (body.decode(), bytearray(body), memoryview(body)):
        assert decode_task(form) == task


def test_newer_minor_versions_are_read_ignoring_unknown_fields() -> None:
    task = Task.si("f", 1)
    doc = json.loads(encode_task(task, wrapped=True))["task"]
    doc["priority"] = "high"
    doc["policy"]["jitter"] = "full"
    doc["attempts"]["first_try"] = "2030-01-01T00:00:00Z"
    doc["on_success"] = json.loads(encode_task(Task.si("g"), wrapped=True))["task"] | {"new": 1}
    for body in (envelope(doc, version="2.7"), json.dumps({**doc, ENVELOPE_KEY: "2.7"}).encode()):
        again = decode_task(body)
        assert again.task_id == task.task_id
        assert again.policy == task.policy
        assert again.on_success is not None
        assert again.on_success.function_name == "g"


def test_version_may_be_an_integer_major() -> None:
    task = Task.si("f")
    doc = json.loads(encode_task(task, wrapped=True))["task"]
    assert decode_task(envelope(doc, version=2)) == task


# -- legacy 1.x bodies ----------------------------------------------------------------------

LEGACY_1_4 = {
    "task_id": "0193b0a1-9a7e-7c3e-8f00-0123456789ab",
    "should_dead_letter": True,
    "acks_late": True,
    "function_name": "process_data",
    "attempts": {"attempts": 2, "last_retry": "2024-12-10T15:46:54.123456Z"},
    "policy": {"max_tries": 5, "delay": 120, "delay_max": 120, "retry_mode": 0},
    "payload": {"args": ["data_456"], "kwargs": {"priority": "high"}},
    "graph_id": None,
    "on_success": None,
    "on_failure": None,
}


def test_legacy_1x_bare_task_is_read() -> None:
    task = decode_task(json.dumps(LEGACY_1_4).encode())
    assert task.task_id == LEGACY_1_4["task_id"]
    assert task.function_name == "process_data"
    assert task.args == ["data_456"]
    assert task.kwargs == {"priority": "high"}
    assert task.attempts.attempts == 2
    assert task.policy == RetryPolicy.default()


def test_legacy_1x_chained_task_is_read() -> None:
    doc = dict(LEGACY_1_4)
    doc["on_success"] = dict(LEGACY_1_4, task_id="0193b0a1-9a7e-7c3e-8f00-0000000000ff")
    doc["on_failure"] = dict(LEGACY_1_4, function_name="cleanup", task_id="x-1")
    task = decode_task(json.dumps(doc).encode())
    assert task.on_success is not None
    assert task.on_success.task_id == "0193b0a1-9a7e-7c3e-8f00-0000000000ff"
    assert task.on_failure is not None
    assert task.on_failure.function_name == "cleanup"


def test_early_1x_task_without_task_id_or_arguments_is_read() -> None:
    early = {
        "should_dead_letter": True,
        "acks_late": True,
        "function_name": "nightly",
        "attempts": {"attempts": 0, "last_retry": "2024-01-02T03:04:05Z"},
        "policy": {"max_tries": 5, "delay": 120, "delay_max": 120, "retry_mode": 1},
        "payload": {},
        "diagnostic_id": None,
    }
    task = decode_task(json.dumps(early).encode())
    assert task.function_name == "nightly"
    assert task.task_id  # one was assigned
    assert task.args == []
    assert task.kwargs == {}
    assert task.policy.retry_mode is RetryMode.Exponential


# -- rejections ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"\xff\xfe\x00garbage", "not UTF-8"),
        (b"", "not JSON"),
        (b"{not json", "not JSON"),
        (b"ready", "not JSON"),
        (b'{"a": NaN}', "NaN"),
        (b'{"a": Infinity}', "Infinity"),
        (b"[1, 2, 3]", "JSON list, not an envelope"),
        (b'"a string"', "JSON str, not an envelope"),
        (b"42", "JSON int, not an envelope"),
        (b"null", "JSON NoneType, not an envelope"),
        (b"{}", "not a Boilermaker task"),
        (b'{"function_name": "f", "payload": {}}', "a task without attempts, policy"),
        (b'{"hello": "world"}', "not a Boilermaker task"),
        (b'{"boilermaker": "3.0", "function_name": "f"}', "'3.0' is not supported"),
        (b'{"boilermaker": "3.0", "task": {}}', "'3.0' is not supported"),
        (b'{"boilermaker": 0, "task": {}}', "0 is not supported"),
        (b'{"boilermaker": "x.y", "task": {}}', "not a version number"),
        (b'{"boilermaker": true, "task": {}}', "not a version number"),
        (b'{"boilermaker": null, "task": {}}', "not a version number"),
        (b'{"boilermaker": "2.0"}', "neither task fields nor a 'task' object"),
        (b'{"boilermaker": "2.0", "task": [1]}', "neither task fields nor a 'task' object"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
    ],
)
def test_undecodable_bodies_raise_invalid_task_format(body: bytes, match: str) -> None:
    with pytest.raises(InvalidTaskFormat, match=match):
        decode_task(body)


@pytest.mark.parametrize(
    ("task", "field"),
    [
        ({}, "function_name"),
        ({"function_name": ""}, "function_name"),
        ({"function_name": 3}, "function_name"),
        ({"function_name": "f", "task_id": ""}, "task_id"),
        ({"function_name": "f", "task_id": 12}, "task_id"),
        ({"function_name": "f", "payload": {"args": 5}}, "payload"),
        ({"function_name": "f", "payload": {"args": "abc"}}, "payload"),
        ({"function_name": "f", "payload": {"kwargs": [1]}}, "payload"),
        ({"function_name": "f", "payload": []}, "payload"),
        ({"function_name": "f", "policy": {"max_tries": 1000}}, "policy.max_tries"),
        ({"function_name": "f", "policy": {"delay": -5}}, "policy.delay"),
        ({"function_name": "f", "policy": {"retry_mode": 9}}, "policy.retry_mode"),
        ({"function_name": "f", "attempts": {"attempts": -1}}, "attempts.attempts"),
        ({"function_name": "f", "attempts": {"last_retry": "yesterday"}}, "attempts.last_retry"),
        ({"function_name": "f", "should_dead_letter": "maybe"}, "should_dead_letter"),
        ({"function_name": "f", "on_success": {"payload": {}}}, "on_success.function_name"),
        ({"function_name": "f", "on_failure": "cleanup"}, "on_failure"),
    ],
)
def test_bad_task_fields_raise_invalid_task_format(task: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidTaskFormat, match=f"invalid: {field}"):
        decode_task(envelope(task))
    if "function_name" in task:
        with pytest.raises(InvalidTaskFormat, match=f"invalid: {field}"):
            decode_task(json.dumps({ENVELOPE_KEY: "2.0", **task}).encode())


def test_bad_legacy_task_fields_raise_invalid_task_format() -> None:
    doc = dict(LEGACY_1_4, payload={"args": {"not": "a list"}})
    with pytest.raises(InvalidTaskFormat, match="payload"):
        decode_task(json.dumps(doc).encode())


def test_deeply_nested_chain_is_refused_not_crashing() -> None:
    depth = 2_000
    body = (
        b'{"boilermaker":"2.0","task":'
        + b'{"function_name":"f","on_success":' * depth
        + b"null"
        + b"}" * (depth + 1)
    )
    with pytest.raises(InvalidTaskFormat):
        decode_task(body)


def test_huge_integers_are_refused() -> None:
    body = b'{"boilermaker":"2.0","task":{"function_name":"f","payload":{"args":[' + b"9" * 5000
    with pytest.raises(InvalidTaskFormat, match="not JSON"):
        decode_task(body + b"]}}}")


def test_invalid_task_format_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        decode_task(b"nope")

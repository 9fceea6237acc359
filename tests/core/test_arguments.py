"""Task arguments must be JSON: refused with the argument's path, before anything is sent."""

from __future__ import annotations

import datetime
import decimal
import enum
import math
import re
import uuid
from typing import Any

import pytest

from boilermaker import Boilermaker, RetryPolicy
from boilermaker.exceptions import ArgumentNotSerializable, BoilermakerAppException
from boilermaker.memory import InMemoryBroker
from boilermaker.task import Task
from boilermaker.task.serialize import check_arguments


async def schedule(state: Any, *args: Any, **kwargs: Any) -> None:
    return None


class Color(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


@pytest.fixture
def broker() -> InMemoryBroker:
    return InMemoryBroker()


@pytest.fixture
def app(broker: InMemoryBroker) -> Boilermaker:
    app = Boilermaker({}, broker)
    app.register_async(schedule)
    return app


def self_containing_list() -> list[Any]:
    loop: list[Any] = [1]
    loop.append(loop)
    return loop


BAD_ARGUMENTS: list[tuple[tuple[Any, ...], dict[str, Any], str, str]] = [
    ((), {"when": datetime.datetime(2024, 1, 1)}, "kwargs['when']", "datetime"),
    ((datetime.date(2024, 1, 1),), {}, "args[0]", "date"),
    ((1, float("nan")), {}, "args[1]", "NaN"),
    ((), {"x": float("inf")}, "kwargs['x']", "infinity"),
    ((), {"x": -math.inf}, "kwargs['x']", "infinity"),
    (({1, 2},), {}, "args[0]", "set"),
    ((frozenset(),), {}, "args[0]", "frozenset"),
    (({1: "a"},), {}, "args[0][1]", "keys must be strings"),
    ((), {"opts": {"ok": [1, {("t",): 2}]}}, "kwargs['opts']['ok'][1][('t',)]", "keys must be"),
    ((), {"opts": {"ok": [1, {"bad": b"raw"}]}}, "kwargs['opts']['ok'][1]['bad']", "bytes"),
    ((decimal.Decimal("1.5"),), {}, "args[0]", "Decimal"),
    ((uuid.uuid4(),), {}, "args[0]", "UUID"),
    ((Color.RED,), {}, "args[0]", "Color"),
    ((object(),), {}, "args[0]", "object"),
    ((schedule,), {}, "args[0]", "function"),
    ((self_containing_list(),), {}, "args[0][1]", "circular"),
]


@pytest.mark.parametrize(("args", "kwargs", "path", "hint"), BAD_ARGUMENTS)
def test_check_arguments_names_the_bad_argument(
    args: tuple[Any, ...], kwargs: dict[str, Any], path: str, hint: str
) -> None:
    with pytest.raises(ArgumentNotSerializable) as info:
        check_arguments("schedule", args, kwargs)
    assert info.value.argument == path
    assert info.value.function_name == "schedule"
    message = str(info.value)
    assert f"argument {path} of task 'schedule'" in message
    assert hint in message


@pytest.mark.parametrize(("args", "kwargs", "path", "hint"), BAD_ARGUMENTS)
async def test_apply_async_refuses_before_sending(
    app: Boilermaker,
    broker: InMemoryBroker,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    path: str,
    hint: str,
) -> None:
    with pytest.raises(ArgumentNotSerializable, match=re.escape(path)):
        await app.apply_async(schedule, *args, **kwargs)
    assert broker.send_calls == 0
    assert broker.counts().active == 0


def test_create_task_and_si_refuse_too(app: Boilermaker) -> None:
    with pytest.raises(ArgumentNotSerializable, match=r"kwargs\['when'\]"):
        app.create_task(schedule, when=datetime.datetime.now())
    with pytest.raises(ArgumentNotSerializable, match=r"args\[0\]"):
        Task.si(schedule, {1, 2})


def test_argument_errors_are_type_errors_and_app_exceptions() -> None:
    with pytest.raises(TypeError):
        check_arguments("f", [set()], {})
    with pytest.raises(BoilermakerAppException):
        check_arguments("f", [set()], {})


def test_deeply_nested_arguments_are_refused_cleanly() -> None:
    deep: list[Any] = []
    for _ in range(10_000):
        deep = [deep]
    with pytest.raises(ArgumentNotSerializable, match="nested more than 64 levels deep"):
        check_arguments("f", [], {"deep": deep})


def test_json_values_are_accepted() -> None:
    shared: list[int] = [1]
    check_arguments(
        "f",
        [None, True, 0, -1, 2**80, 1.5, "text ✓", [], {}, (1, 2), [shared, shared]],
        {"nested": {"a": [{"b": None}]}, "level": Level.HIGH},
    )


async def test_publish_task_refuses_a_hand_built_task(
    app: Boilermaker, broker: InMemoryBroker
) -> None:
    with pytest.raises(ValueError, match=r"args\[0\] cannot travel as JSON"):
        Task(function_name="schedule", payload={"args": [datetime.date.today()], "kwargs": {}})
    changed = app.create_task(schedule, 1)
    changed.payload["kwargs"]["at"] = {1, 2}
    with pytest.raises(ArgumentNotSerializable, match=r"kwargs\['at'\]"):
        await app.publish_task(changed)
    chained = app.create_task(schedule, 1)
    chained.on_failure = Task(function_name="schedule", payload={"args": [1]})
    chained.on_failure.payload["args"][0] = float("nan")
    with pytest.raises(ArgumentNotSerializable, match="NaN"):
        await app.publish_task(chained)
    assert broker.send_calls == 0


@pytest.mark.parametrize(
    ("args", "kwargs", "path", "why"),
    [
        (["ok", "bad \ud800"], {}, r"args\[1\]", "lone surrogate"),
        ([], {"k": {"x\udfff": 1}}, r"kwargs\['k'\]", "lone surrogate"),
        ([], {"\ud800": 1}, r"kwargs", "lone surrogate"),
    ],
)
def test_arguments_utf8_cannot_encode_are_refused(
    args: list[Any], kwargs: dict[str, Any], path: str, why: str
) -> None:
    with pytest.raises(ArgumentNotSerializable, match=f"{path}.*{why}"):
        Task.si("f", *args, **kwargs)


def test_a_message_whose_arguments_cannot_travel_is_invalid_task_format() -> None:
    from boilermaker.envelope import decode_task
    from boilermaker.exceptions import InvalidTaskFormat

    body = (
        b'{"boilermaker":"2.0","function_name":"f","task_id":"t-1",'
        b'"attempts":{"attempts":0,"last_retry":"2026-01-01T00:00:00Z"},'
        b'"policy":{"max_tries":1,"delay":0,"delay_max":0,"retry_mode":0},'
        b'"payload":{"args":["\\ud800"],"kwargs":{}}}'
    )
    with pytest.raises(InvalidTaskFormat, match="lone surrogate"):
        decode_task(body)
    deep = b"[" * 100 + b"]" * 100
    with pytest.raises(InvalidTaskFormat, match="nested more than"):
        decode_task(body.replace(b'["\\ud800"]', b"[" + deep + b"]"))


@pytest.mark.parametrize("delay", [10**12, float("nan"), float("inf"), "5", True])
async def test_delays_out_of_range_are_refused_before_sending(
    app: Boilermaker, broker: InMemoryBroker, delay: Any
) -> None:
    with pytest.raises(BoilermakerAppException, match="delay must be a number of seconds"):
        await app.apply_async(schedule, 1, delay=delay)
    assert broker.send_calls == 0


def test_policies_are_bounded_where_they_enter() -> None:
    from pydantic import ValidationError

    from boilermaker.retries import MAX_DELAY_SECONDS

    with pytest.raises(ValidationError, match="less than or equal to 2592000"):
        RetryPolicy(delay=10**12)
    with pytest.raises(ValidationError):
        RetryPolicy(delay_max=MAX_DELAY_SECONDS + 1)
    assert RetryPolicy(delay=MAX_DELAY_SECONDS, delay_max=MAX_DELAY_SECONDS).delay == 2592000

"""The worker's log lines (the published library's three) and the opt-in JSON formatter."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from boilermaker import Boilermaker
from boilermaker.log_format import JsonFormatter, configure_json_logging
from boilermaker.memory import InMemoryBroker


def app_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "boilermaker.app"]


async def test_seed_log_lines_for_registration_begin_and_completion(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="boilermaker.app")
    app = Boilermaker({}, InMemoryBroker())

    async def process_data(state: Any) -> None:
        return None

    app.register_async(process_data)
    first = await app.apply_async(process_data)
    second = await app.apply_async(process_data)
    await app.run_until_idle(timeout=5)

    messages = app_messages(caplog)
    assert "Registered background function fn=process_data" in messages
    for task in (first, second):
        assert task.sequence_number is not None
        assert f"[process_data] Begin Task sequence_number={task.sequence_number}" in messages
        completed = re.compile(
            rf"\[process_data\] Completed Task sequence_number={task.sequence_number} "
            r"in \d+\.\d+s$"
        )
        assert any(completed.match(m) for m in messages), messages


async def test_failure_is_logged_with_task_id_attempt_and_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="boilermaker.app")
    app = Boilermaker({}, InMemoryBroker())

    @app.task()
    async def breaks(state: Any) -> None:
        raise ValueError("the reason")

    task = await app.apply_async(breaks)
    await app.run_until_idle(timeout=5)

    failures = [r for r in caplog.records if r.levelno == logging.ERROR and "failed" in r.msg]
    assert len(failures) == 1
    record = failures[0]
    assert task.task_id in record.getMessage()
    assert "ValueError: the reason" in record.getMessage()
    assert record.__dict__["task_id"] == task.task_id
    assert record.__dict__["attempt"] == 1
    # No "Completed" line for a failed task.
    assert not any("Completed Task" in m for m in app_messages(caplog))


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    logger = logging.getLogger("boilermaker")
    level = logger.level
    handler = configure_json_logging(logging.INFO, stream)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def test_json_formatter_prints_the_published_shape(json_log: io.StringIO) -> None:
    app = Boilermaker({}, InMemoryBroker())

    @app.task()
    async def process_data(state: Any) -> None:
        return None

    @app.task()
    async def breaks(state: Any) -> None:
        raise RuntimeError("nope")

    ok = await app.apply_async(process_data)
    bad = await app.apply_async(breaks)
    await app.run_until_idle(timeout=5)

    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    begin = [d for d in lines if d["event"].startswith("[process_data] Begin Task")]
    assert begin == [
        {
            "event": f"[process_data] Begin Task sequence_number={ok.sequence_number}",
            "level": "info",
            "logger": "boilermaker.app",
            "timestamp": begin[0]["timestamp"],
        }
    ]
    assert re.fullmatch(r"\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2}", begin[0]["timestamp"])
    for doc in lines:
        assert {"event", "level", "logger", "timestamp"} <= doc.keys()
    (failure,) = [d for d in lines if d["level"] == "error" and "failed on attempt" in d["event"]]
    assert failure["task_id"] == bad.task_id
    assert failure["attempt"] == 1


def test_json_formatter_includes_exceptions_and_stringifies_extras() -> None:
    logger = logging.getLogger("boilermaker.app")
    try:
        raise KeyError("k")
    except KeyError:
        record = logger.makeRecord(
            logger.name,
            logging.ERROR,
            __file__,
            1,
            "went %s",
            ("wrong",),
            exc_info=sys.exc_info(),
            extra={"obj": object(), "n": 3},
        )
    doc = json.loads(JsonFormatter().format(record))
    assert doc["event"] == "went wrong"
    assert doc["level"] == "error"
    assert doc["n"] == 3
    assert doc["obj"].startswith("<object object")
    assert "KeyError" in doc["exception"]

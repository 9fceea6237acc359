"""How ``dlq list`` and ``dlq show`` render dead letters (no broker needed)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from boilermaker import Task
from boilermaker.broker import ReceivedMessage
from boilermaker.cli.dlq import describe, letters_table
from boilermaker.dead_letters import (
    DEAD_LETTER_REASON,
    ORIGINAL_MESSAGE_ID,
    ORIGINAL_SEQUENCE_NUMBER,
    REPLAY_COUNT,
    REPLAYED_AT,
    DeadLetter,
)
from boilermaker.envelope import encode_task

ENQUEUED = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)


def replayed_failure() -> DeadLetter:
    task = Task.si("charge", "o-9", amount=12)
    return DeadLetter.from_message(
        ReceivedMessage(
            body=encode_task(task),
            message_id=f"{task.task_id}:replay:2",
            sequence_number=41,
            delivery_count=0,
            enqueued_time=ENQUEUED,
            application_properties={
                "boilermaker_function": "charge",
                ORIGINAL_MESSAGE_ID: str(task.task_id),
                ORIGINAL_SEQUENCE_NUMBER: 7,
                DEAD_LETTER_REASON: "TaskFailed",
                REPLAY_COUNT: 2,
                REPLAYED_AT: "2025-03-04T05:00:00+00:00",
            },
            dead_letter_reason="TaskFailed",
            dead_letter_description="ValueError: card declined\nsecond line " + "x" * 300,
        )
    )


def junk() -> DeadLetter:
    return DeadLetter.from_message(
        ReceivedMessage(
            body=b"\xff\xfe",
            message_id="junk",
            sequence_number=42,
            delivery_count=3,
            enqueued_time=None,
            dead_letter_reason="InvalidTaskFormat",
            dead_letter_description="message body is not UTF-8 text",
        )
    )


def test_the_table_has_one_line_per_dead_letter_with_the_description_cut(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    lines = letters_table([replayed_failure(), junk()]).splitlines()

    assert len(lines) == 3
    assert lines[0].split()[:4] == ["SEQ", "ENQUEUED", "(UTC)", "REASON"]
    assert lines[1].split()[:6] == ["41", "2025-03-04", "05:06:07", "TaskFailed", "charge", "1"]
    assert "ValueError: card declined second" in lines[1]
    assert lines[1].endswith("...")
    assert len(lines[1]) <= 100
    assert lines[2].split()[:5] == ["42", "-", "InvalidTaskFormat", "-", "-"]


def test_show_describes_the_task_the_lineage_and_the_body() -> None:
    text = describe(replayed_failure())

    assert "Sequence number:" in text
    assert "Replayed:" in text
    assert "2 time(s), last at 2025-03-04 05:00:00" in text
    assert "(sequence 7)" in text
    assert "Reason before replay:" in text
    assert '["o-9"]' in text
    assert '{"amount": 12}' in text
    assert "  boilermaker_function: charge" in text
    assert '"function_name":"charge"' in text


def test_show_of_an_undecodable_body_says_why_and_prints_it_safely() -> None:
    text = describe(junk())

    assert "Not a task:" in text
    assert "not UTF-8" in text
    assert "Body (2 bytes):" in text

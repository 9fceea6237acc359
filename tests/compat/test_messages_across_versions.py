"""Task messages cross between the published 1.4.1 and this version, in both directions.

Each direction publishes the workload of ``drivers/workload.py`` (6 plain
tasks, 2 that ask for one retry each, 1 that fails, a chain ``a >> b``) with
one version and works it off with the other, on the emulator. The drivers
run unchanged under both interpreters; only the clients' construction
differs.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from boilermaker.emulator import QueueSettings, ServiceBusEmulator
from tests.compat.conftest import QueueContents, queue_contents, run_driver

PLAIN, FLAKY = 6, 2
#: Runs per function once the workload is done: each flaky task runs twice.
EXPECTED_RUNS = {"plain": PLAIN, "flaky": 2 * FLAKY, "broken": 1, "chain_head": 1, "chain_tail": 1}
#: Task messages each publisher sends (the chain's tail is published by the worker).
EXPECTED_PUBLISHED = {"plain": PLAIN, "flaky": FLAKY, "broken": 1, "chain_head": 1}
#: The body 1.4.1's sender pool publishes on each new connection: its debug task.
READINESS_FUNCTION = "debug_task"


def _cross(
    emulator: ServiceBusEmulator, publisher_python: Path, worker_python: Path, stem: str
) -> dict[str, Any]:
    queue = f"compat-{stem}"
    emulator.create_queue(QueueSettings(name=queue))
    try:
        args = (
            "--connection-string",
            emulator.connection_string,
            "--queue",
            queue,
            "--plain",
            str(PLAIN),
            "--flaky",
            str(FLAKY),
        )
        published = run_driver(publisher_python, "publisher.py", *args)
        after_publish = asyncio.run(queue_contents(emulator, queue))
        worked = run_driver(worker_python, "worker.py", *args, "--timeout", "30", timeout=90)
        contents = asyncio.run(queue_contents(emulator, queue))
    finally:
        emulator.delete_queue(queue)
    return {
        "published": published,
        "after_publish": after_publish,
        "worked": worked,
        "contents": contents,
    }


def _without_readiness(counts: Counter[str]) -> dict[str, int]:
    return {name: n for name, n in counts.items() if name != READINESS_FUNCTION}


def _record(record: Callable[..., Path], direction: str, run: dict[str, Any]) -> dict[str, Any]:
    contents: QueueContents = run["contents"]
    after: QueueContents = run["after_publish"]
    doc = {
        "publisher": run["published"]["library"],
        "worker": run["worked"]["library"],
        "tasks_published": sum(run["published"]["published"].values()),
        "messages_after_publish": after.active + after.scheduled,
        "readiness_messages_published": after.left_functions[READINESS_FUNCTION],
        "runs": run["worked"]["runs"],
        "tasks_run": sum(run["worked"]["runs"].values()),
        "expected_runs": sum(EXPECTED_RUNS.values()),
        "dead_lettered": sum(contents.dead_letter_reasons.values()),
        "dead_letter_reasons": dict(contents.dead_letter_reasons),
        "dead_letters": contents.dead_letters,
        "left_in_queue": contents.left,
        "left_by_function": dict(contents.left_functions),
        "worker_seconds": run["worked"]["seconds"],
    }
    record(direction, **doc)
    return doc


@pytest.fixture(scope="module")
def ours_to_published(
    servicebus_emulator: ServiceBusEmulator, our_python: Path, published_python: Path
) -> dict[str, Any]:
    return _cross(servicebus_emulator, our_python, published_python, "ours-to-141")


@pytest.fixture(scope="module")
def published_to_ours(
    servicebus_emulator: ServiceBusEmulator, our_python: Path, published_python: Path
) -> dict[str, Any]:
    return _cross(servicebus_emulator, published_python, our_python, "141-to-ours")


def test_a_published_worker_runs_every_task_a_new_publisher_sends(
    ours_to_published: dict[str, Any], record_counts: Callable[..., Path]
) -> None:
    run = ours_to_published
    seen = _record(record_counts, "new publisher -> 1.4.1 worker", run)
    contents: QueueContents = run["contents"]
    assert seen["publisher"] != "1.4.1"
    assert seen["worker"] == "1.4.1"
    # Our publisher sends the tasks and nothing else (no readiness messages).
    assert dict(run["after_publish"].left_functions) == EXPECTED_PUBLISHED
    # None lost as InvalidTaskFormat: 1.4.1 decoded every body and ran it.
    assert contents.dead_letter_reasons.get("InvalidTaskFormat", 0) == 0, seen
    assert run["worked"]["runs"] == EXPECTED_RUNS, (seen, run["worked"]["_stderr"][-3000:])
    # The failing task, and only it, is dead-lettered, with 1.4.1's reason.
    assert contents.dead_letters == [("TaskFailed", "broken")], seen
    # 1.4.1's own sender may leave a readiness message of its own behind; no task is left.
    assert _without_readiness(contents.left_functions) == {}, seen


def test_a_new_worker_runs_every_task_a_published_publisher_sends(
    published_to_ours: dict[str, Any], record_counts: Callable[..., Path]
) -> None:
    run = published_to_ours
    seen = _record(record_counts, "1.4.1 publisher -> new worker", run)
    contents: QueueContents = run["contents"]
    assert seen["publisher"] == "1.4.1"
    assert seen["worker"] != "1.4.1"
    # The ten tasks, beside the readiness message(s) of 1.4.1's sender pool.
    assert _without_readiness(run["after_publish"].left_functions) == EXPECTED_PUBLISHED
    assert run["worked"]["runs"] == EXPECTED_RUNS, (seen, run["worked"]["_stderr"][-3000:])
    task_dead_letters = [d for d in contents.dead_letters if d[1] != READINESS_FUNCTION]
    assert task_dead_letters == [("TaskFailed", "broken")], seen
    assert _without_readiness(contents.left_functions) == {}, seen


def test_a_new_worker_settles_the_published_readiness_messages_silently(
    published_to_ours: dict[str, Any], record_counts: Callable[..., Path]
) -> None:
    contents: QueueContents = published_to_ours["contents"]
    sent = published_to_ours["after_publish"].left_functions[READINESS_FUNCTION]
    dead = [d for d in contents.dead_letters if d[1] == READINESS_FUNCTION]
    left = contents.left_functions[READINESS_FUNCTION]
    record_counts(
        "1.4.1 readiness messages -> new worker",
        readiness_messages_published=sent,
        readiness_messages_dead_lettered=len(dead),
        readiness_messages_left=left,
        dead_letters=dead,
    )
    assert sent >= 1, "1.4.1 published no readiness message: nothing to check"
    assert left == 0, f"{left} readiness message(s) never reached the worker"
    assert dead == [], f"1.4.1's readiness messages dead-lettered: {dead}"

"""Fixtures for the compatibility tests: the published 1.4.1 beside this project.

1.4.1 runs only as a separate interpreter (``.compat/boilermaker-1.4.1``, see
``published_env.py``); the drivers in ``drivers/`` run unchanged under it or
under this project's interpreter. Every test records the counts it saw
(published, run, dead-lettered) as JSON under the session's temporary folder
and prints them; ``python -m tests.compat.report`` tabulates them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from azure.servicebus import ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient

from boilermaker.emulator import ServiceBusEmulator
from tests.compat import published_env

DRIVERS = Path(__file__).resolve().parent / "drivers"
#: Where each test's counts go, under the session's base temporary folder.
COUNTS_DIR = "compat-counts"
#: The counts file a test wrote, so its outcome can be added to it.
COUNTS_FILE = pytest.StashKey[Path]()


@pytest.fixture(scope="session")
def published_python() -> Path:
    """The 1.4.1 interpreter; fails (never installs) when ``make install`` has not run."""
    try:
        return published_env.require()
    except published_env.PublishedEnvMissing as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def our_python() -> Path:
    """This project's interpreter (the one running the tests)."""
    return Path(sys.executable)


def _driver_env() -> dict[str, str]:
    """The environment for a driver: nothing that points an interpreter at the project."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def run_driver(python: Path, script: str, *args: str, timeout: float = 60) -> dict[str, Any]:
    """Run ``drivers/<script>`` under ``python``; its JSON result line.

    A driver that crashes, hangs or prints no result raises RuntimeError with
    its output, so a broken harness is never mistaken for an expected failure
    (the expected failures expect an AssertionError).
    """
    command = [str(python), str(DRIVERS / script), *args]
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_driver_env(),
            cwd=DRIVERS,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        stderr = (
            exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr
        )
        raise RuntimeError(f"{script} under {python} ran past {timeout}s:\n{stderr}") from None
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"{script} under {python} exited {done.returncode} without a result:\n"
            f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
        )
    result: dict[str, Any] = json.loads(lines[-1])
    result["_stderr"] = done.stderr
    return result


@dataclass
class QueueContents:
    """What is left in a queue: messages by state, dead letters by reason and function."""

    active: int
    scheduled: int
    locked: int
    dead_lettered: int
    dead_letter_reasons: Counter[str] = field(default_factory=Counter)
    dead_letters: list[tuple[str, str]] = field(default_factory=list)
    #: Messages still in the queue (active or scheduled), by function name.
    left_functions: Counter[str] = field(default_factory=Counter)

    @property
    def left(self) -> int:
        return self.active + self.scheduled + self.locked


def _function_of(body: str) -> str:
    try:
        doc = json.loads(body)
    except ValueError:
        return f"<not JSON: {body[:40]!r}>"
    if isinstance(doc, dict) and isinstance(doc.get("task"), dict):
        doc = doc["task"]
    name = doc.get("function_name") if isinstance(doc, dict) else None
    return str(name) if name is not None else f"<no function_name: {body[:40]!r}>"


def _text(message: Any) -> str:
    body = message.body
    if not isinstance(body, bytes | bytearray):
        body = b"".join(bytes(part) for part in body)
    return bytes(body).decode("utf-8", errors="replace")


async def queue_contents(emulator: ServiceBusEmulator, queue: str) -> QueueContents:
    """Counts from the emulator, and the dead-letter queue read through the SDK (peeked)."""
    counts = emulator.counts(queue)
    contents = QueueContents(counts.active, counts.scheduled, counts.locked, counts.dead_lettered)
    async with ServiceBusClient.from_connection_string(emulator.connection_string) as client:
        async with client.get_queue_receiver(
            queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER
        ) as dlq:
            for message in await dlq.peek_messages(max_message_count=250):
                reason = message.dead_letter_reason or "<none>"
                contents.dead_letter_reasons[reason] += 1
                contents.dead_letters.append((reason, _function_of(_text(message))))
        if contents.active or contents.scheduled or contents.locked:
            async with client.get_queue_receiver(queue) as receiver:
                for message in await receiver.peek_messages(max_message_count=250):
                    contents.left_functions[_function_of(_text(message))] += 1
    contents.dead_letters.sort()
    return contents


@pytest.fixture
def record_counts(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., Path]:
    """``record_counts(direction, **counts)``: write the counts as JSON and print them."""
    folder = tmp_path_factory.getbasetemp() / COUNTS_DIR
    folder.mkdir(exist_ok=True)

    def record(direction: str, **counts: Any) -> Path:
        doc = {"test": request.node.nodeid, "direction": direction, **counts}
        path = folder / (request.node.name.replace("/", "_") + ".json")
        path.write_text(json.dumps(doc, indent=1, sort_keys=True, default=str) + "\n")
        print(f"\nCOMPAT COUNTS {json.dumps(doc, sort_keys=True, default=str)}")
        request.node.stash[COUNTS_FILE] = path
        return path

    return record


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Add the test's outcome (passed, xfailed, failed) to the counts it recorded."""
    report = yield
    path = item.stash.get(COUNTS_FILE, None)
    if path is not None and report.when == "call":
        outcome = "xfailed" if report.skipped and hasattr(report, "wasxfail") else report.outcome
        doc = json.loads(path.read_text())
        doc["outcome"] = outcome
        path.write_text(json.dumps(doc, indent=1, sort_keys=True, default=str) + "\n")
    return report

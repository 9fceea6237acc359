"""``boilermaker worker`` in a child process on the emulator, stopped by SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from boilermaker import Boilermaker, Task
from boilermaker.emulator import ServiceBusEmulator
from boilermaker.service_bus import AzureServiceBus

APP_MODULE = """
import asyncio
import os
from pathlib import Path

from boilermaker import Boilermaker

app = Boilermaker({"marker_dir": Path(os.environ["MARKER_DIR"])})


@app.task()
async def touch(state, name: str) -> str:
    (state["marker_dir"] / name).write_text("done")
    return name


@app.task()
async def linger(state, name: str) -> None:
    (state["marker_dir"] / name).write_text("started")
    await asyncio.sleep(60)
"""


def environment_without_settings() -> dict[str, str]:
    """This process's environment less any Service Bus or Boilermaker setting."""
    settings = ("SERVICE_BUS_", "BOILERMAKER_")
    return {k: v for k, v in os.environ.items() if not k.startswith(settings)}


def wait_for(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path.name} did not appear within {timeout}s")
        time.sleep(0.05)


def test_worker_runs_an_app_module_and_stops_on_sigterm(
    tmp_path: Path, servicebus_emulator: ServiceBusEmulator, servicebus_queue: str
) -> None:
    (tmp_path / "cli_worker_app.py").write_text(textwrap.dedent(APP_MODULE))
    markers = tmp_path / "markers"
    markers.mkdir()
    connection_string = servicebus_emulator.connection_string

    async def publish() -> None:
        broker = AzureServiceBus.from_connection_string(connection_string, servicebus_queue)
        app = Boilermaker(None, broker)
        try:
            await app.publish_many([Task.si("touch", "first"), Task.si("linger", "slow")])
        finally:
            await app.close()

    asyncio.run(publish())
    env = environment_without_settings()
    env["MARKER_DIR"] = str(markers)
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "boilermaker.cli",
            "worker",
            "cli_worker_app:app",
            "--app-dir",
            str(tmp_path),
            "--connection-string",
            connection_string,
            "--queue",
            servicebus_queue,
            "--concurrency",
            "2",
            "--shutdown-grace",
            "0.5s",
            "--json-logs",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(markers / "first", timeout=30)
        wait_for(markers / "slow", timeout=30)
        worker.send_signal(signal.SIGTERM)
        _stdout, stderr = worker.communicate(timeout=20)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()

    assert worker.returncode == 0, stderr
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    messages = [event["event"] for event in events]
    assert any(m.startswith("Starting worker for cli_worker_app:app") for m in messages), stderr
    assert any(m.startswith("[touch] Completed Task") for m in messages), stderr
    assert any(m.startswith("Received SIGTERM: stopping") for m in messages), stderr
    assert any(m.startswith("Worker stopped") for m in messages), stderr
    assert all(event["logger"].startswith("boilermaker") for event in events)
    # The lingering task was cut off by the shutdown and its message abandoned, not lost.
    counts = servicebus_emulator.counts(servicebus_queue)
    assert counts.active == 1
    assert counts.dead_lettered == 0


IDLE_APP = """
from boilermaker import Boilermaker
from boilermaker.memory import InMemoryBroker

app = Boilermaker(None, InMemoryBroker())
"""


@pytest.mark.parametrize(
    ("log_format", "flags"),
    [("text", []), ("json", []), ("json", ["--json-logs"]), ("text", ["--json-logs"])],
)
def test_each_log_line_is_written_once(tmp_path: Path, log_format: str, flags: list[str]) -> None:
    """BOILERMAKER_LOG_FORMAT (read when the app is made) and the CLI's own logging
    set-up, together, still give one line per record."""
    (tmp_path / "idle_app.py").write_text(textwrap.dedent(IDLE_APP))
    env = environment_without_settings()
    env["BOILERMAKER_LOG_FORMAT"] = log_format
    command = [sys.executable, "-m", "boilermaker.cli", "worker", "idle_app:app"]
    worker = subprocess.Popen(
        [*command, "--app-dir", str(tmp_path), *flags],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert worker.stderr is not None
        seen: list[str] = []
        deadline = time.monotonic() + 30
        while not any("Starting worker" in line for line in seen):
            assert time.monotonic() < deadline, seen
            seen.append(worker.stderr.readline())
        time.sleep(2)  # its signal handlers go in just after that line
        worker.send_signal(signal.SIGTERM)
        _, rest = worker.communicate(timeout=20)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    lines = [line for line in [*seen, *rest.splitlines()] if line.strip()]
    assert worker.returncode == 0, lines
    starting = [line for line in lines if "Starting worker" in line]
    stopped = [line for line in lines if "Worker stopped" in line]
    assert len(starting) == 1, lines
    assert len(stopped) == 1, lines
    as_json = log_format == "json" or "--json-logs" in flags
    assert all(line.startswith("{") == as_json for line in starting + stopped), lines

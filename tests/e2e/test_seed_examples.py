"""The seed README's examples, run as written in separate processes against the emulator.

The publisher and worker scripts below are the README's "Basic Usage" and
"Running Workers" blocks; only the environment differs: the connection
string points at the local emulator, and ``BOILERMAKER_LOG_FORMAT=json``
asks for the JSON log lines the README shows.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SETUP = textwrap.dedent(
    '''
    import asyncio
    from boilermaker import Boilermaker, retries
    from boilermaker.config import Config
    from boilermaker.service_bus import AzureServiceBus

    # Configure Azure ServiceBus
    config = Config()  # Loads from environment variables
    service_bus = AzureServiceBus.from_config(config)

    # Create application with shared state
    class AppState:
        def __init__(self):
            self.data = {"processed_count": 0}

    # Initialize Boilermaker
    app = Boilermaker(AppState(), service_bus)

    # Define a background task
    async def process_data(state, data_id, priority="normal"):
        """Process data in the background."""
        print(f"Processing data {data_id} with priority {priority}")

        # Access shared state
        state.data["processed_count"] += 1

        # Simulate processing
        await asyncio.sleep(1)
        return f"Processed {data_id}"

    # Register the task with retry policy
    app.register_async(process_data, policy=retries.RetryPolicy.default())
    '''
)

PUBLISHER = SETUP + textwrap.dedent(
    """
    # Publish tasks
    async def publish_tasks():
        # Simple task
        await app.apply_async(process_data, "data_123")

        # Task with keywords
        await app.apply_async(process_data, "data_456", priority="high")

    # Run publisher
    if __name__ == "__main__":
        asyncio.run(publish_tasks())
    """
)

WORKER = SETUP + textwrap.dedent(
    """
    # Start the worker
    async def run_worker():
        await app.run()  # Runs indefinitely

    if __name__ == "__main__":
        asyncio.run(run_worker())
    """
)

CHAIN_PUBLISHER = SETUP + textwrap.dedent(
    """
    async def publish_chain():
        first = app.create_task(process_data, "chain_1")
        second = app.create_task(process_data, "chain_2")
        third = app.create_task(process_data, "chain_3", priority="low")
        first >> second >> third
        await app.publish_task(first)

    if __name__ == "__main__":
        asyncio.run(publish_chain())
    """
)


def _env(connection_string: str, queue: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        SERVICE_BUS_CONNECTION_STRING=connection_string,
        SERVICE_BUS_QUEUE_NAME=queue,
        BOILERMAKER_LOG_FORMAT="json",
        PYTHONUNBUFFERED="1",
    )
    env.pop("SERVICE_BUS_NAMESPACE_URL", None)
    return env


def _run_worker_until(
    script: Path, env: dict[str, str], done: int, timeout: float = 60.0
) -> tuple[list[dict[str, object]], str, int]:
    """Run the worker until ``done`` tasks completed, then SIGTERM it; its JSON log and stdout."""
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    events: list[dict[str, object]] = []
    deadline = time.monotonic() + timeout
    assert proc.stderr is not None
    try:
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
            completed = [e for e in events if "Completed Task" in str(e.get("event"))]
            if len(completed) >= done:
                break
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for line in err.splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events, out, proc.returncode


def test_seed_publisher_and_worker_run_as_written(
    servicebus_emulator, servicebus_queue: str, tmp_path: Path
) -> None:
    env = _env(servicebus_emulator.connection_string, servicebus_queue)
    publisher = tmp_path / "publisher.py"
    publisher.write_text(PUBLISHER)
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)

    subprocess.run([sys.executable, str(publisher)], env=env, check=True, timeout=60)
    assert servicebus_emulator.counts(servicebus_queue).active == 2

    events, out, code = _run_worker_until(worker, env, done=2)

    assert code == 0, "the worker should exit cleanly on SIGTERM"
    texts = [str(e["event"]) for e in events]
    assert "Registered background function fn=process_data" in texts
    begins = [t for t in texts if t.startswith("[process_data] Begin Task sequence_number=")]
    completes = [t for t in texts if t.startswith("[process_data] Completed Task sequence_number=")]
    assert len(begins) == 2
    assert len(completes) == 2
    for event in events:
        if "Task sequence_number" in str(event["event"]):
            assert event["level"] == "info"
            assert event["logger"] == "boilermaker.app"
            assert time.strptime(str(event["timestamp"]), "%Y/%m/%d %H:%M:%S")
    assert "Processing data data_123 with priority normal" in out
    assert "Processing data data_456 with priority high" in out
    counts = servicebus_emulator.counts(servicebus_queue)
    assert counts.active == 0
    assert counts.dead_lettered == 0


def test_seed_chain_runs_in_order_across_processes(
    servicebus_emulator, servicebus_queue: str, tmp_path: Path
) -> None:
    env = _env(servicebus_emulator.connection_string, servicebus_queue)
    publisher = tmp_path / "chain.py"
    publisher.write_text(CHAIN_PUBLISHER)
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)

    subprocess.run([sys.executable, str(publisher)], env=env, check=True, timeout=60)
    _events, out, code = _run_worker_until(worker, env, done=3)

    assert code == 0
    order = [line for line in out.splitlines() if line.startswith("Processing data chain_")]
    assert order == [
        "Processing data chain_1 with priority normal",
        "Processing data chain_2 with priority normal",
        "Processing data chain_3 with priority low",
    ]
    assert servicebus_emulator.counts(servicebus_queue).active == 0

"""``boilermaker worker APP --processes N``: N worker processes under one command."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from boilermaker import Boilermaker, Task
from boilermaker.emulator import ServiceBusEmulator
from boilermaker.service_bus import AzureServiceBus

pytestmark = pytest.mark.slow

APP_MODULE = """
import asyncio
import os
from pathlib import Path

from boilermaker import Boilermaker

app = Boilermaker({"marker_dir": Path(os.environ["MARKER_DIR"])})


@app.task()
async def crunch(state, n: int) -> None:
    await asyncio.sleep(0.2)
    (state["marker_dir"] / f"{n}-{os.getpid()}").write_text(os.environ["BOILERMAKER_WORKER_INDEX"])
"""


def test_processes_share_the_queue_and_stop_together(
    tmp_path: Path, servicebus_emulator: ServiceBusEmulator, servicebus_queue: str
) -> None:
    (tmp_path / "processes_app.py").write_text(textwrap.dedent(APP_MODULE))
    markers = tmp_path / "markers"
    markers.mkdir()
    connection_string = servicebus_emulator.connection_string

    async def publish() -> None:
        app = Boilermaker(
            None, AzureServiceBus.from_connection_string(connection_string, servicebus_queue)
        )
        try:
            await app.publish_many([Task.si("crunch", n) for n in range(20)])
        finally:
            await app.close()

    asyncio.run(publish())
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SERVICE_BUS_", "BOILERMAKER_"))
    }
    env["MARKER_DIR"] = str(markers)
    command = [
        sys.executable, "-m", "boilermaker.cli", "worker", "processes_app:app",
        "--app-dir", str(tmp_path), "--connection-string", connection_string,
        "--queue", servicebus_queue, "--processes", "2", "--concurrency", "1",
        "--prefetch", "1", "--log-level", "warning",
    ]  # fmt: skip
    with subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) as parent:
        children: list[psutil.Process] = []
        try:
            deadline = time.monotonic() + 90
            while len(list(markers.iterdir())) < 20:
                assert parent.poll() is None, parent.stderr.read() if parent.stderr else ""
                assert time.monotonic() < deadline, f"only {len(list(markers.iterdir()))} ran"
                time.sleep(0.1)
            children = psutil.Process(parent.pid).children()
            parent.send_signal(signal.SIGTERM)
            code = parent.wait(timeout=60)
        finally:
            if parent.poll() is None:
                parent.kill()

    assert code == 0
    assert len(children) == 2
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive
    pids = {name.split("-")[1] for name in os.listdir(markers)}
    indexes = {path.read_text() for path in markers.iterdir()}
    assert len(pids) == 2, "both worker processes should have run tasks"
    assert indexes == {"0", "1"}
    assert servicebus_emulator.counts(servicebus_queue).active == 0

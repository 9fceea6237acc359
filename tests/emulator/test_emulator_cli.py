"""The ``boilermaker-emulator`` command: start-up line, config file, clean stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient

from boilermaker.emulator import DEFAULT_KEY, DEFAULT_KEY_NAME


def _start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "boilermaker.emulator", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _connection_string(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    return line


@pytest.fixture
def cli_process() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


async def test_cli_prints_connection_string_and_stops_on_sigterm(
    cli_process: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "UserConfig": {
                    "Namespaces": [
                        {
                            "Name": "sbemulatorns",
                            "Queues": [
                                {
                                    "Name": "from-config",
                                    "Properties": {
                                        "LockDuration": "PT30S",
                                        "MaxDeliveryCount": 3,
                                        "RequiresDuplicateDetection": True,
                                        "DuplicateDetectionHistoryTimeWindow": "PT1M",
                                    },
                                }
                            ],
                        }
                    ],
                    "Logging": {"Type": "File"},
                }
            }
        )
    )
    process = _start("--config", str(config), "--queue", "extra", "--no-auto-create")
    cli_process.append(process)
    line = _connection_string(process)
    assert line.startswith("Endpoint=sb://localhost:")
    assert f"SharedAccessKeyName={DEFAULT_KEY_NAME};SharedAccessKey={DEFAULT_KEY};" in line
    assert line.endswith(";UseDevelopmentEmulator=true")
    async with (
        ServiceBusClient.from_connection_string(line) as client,
        client.get_queue_sender("from-config") as sender,
    ):
        await sender.send_messages(ServiceBusMessage("one", message_id="same"))
        await sender.send_messages(ServiceBusMessage("two", message_id="same"))
        async with client.get_queue_receiver("from-config") as receiver:
            peeked = await receiver.peek_messages(max_message_count=5)
            assert [str(m) for m in peeked] == ["one"], "duplicate detection came from the config"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0
    assert "stopped" in stderr
    assert "Traceback" not in stderr


def test_cli_stops_on_sigint(cli_process: list[subprocess.Popen[str]]) -> None:
    process = _start()
    cli_process.append(process)
    assert _connection_string(process).startswith("Endpoint=sb://")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0
    assert "Traceback" not in stderr


def test_cli_refuses_non_loopback_host_without_allow_remote() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "boilermaker.emulator", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--allow-remote" in result.stderr
    assert result.stdout == ""


def test_cli_reports_a_bad_config_file(tmp_path: Path) -> None:
    config = tmp_path / "bad.json"
    config.write_text('{"UserConfig": {"Namespaces": [{"Queues": [{"Properties": {}}]}]}}')
    result = subprocess.run(
        [sys.executable, "-m", "boilermaker.emulator", "--port", "0", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "each queue needs a Name" in result.stderr


def test_cli_reports_a_port_in_use(cli_process: list[subprocess.Popen[str]]) -> None:
    first = _start()
    cli_process.append(first)
    port = _connection_string(first).split(";")[0].rsplit(":", 1)[1]
    result = subprocess.run(
        [sys.executable, "-m", "boilermaker.emulator", "--port", port],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ},
    )
    assert result.returncode == 1
    assert "cannot start" in result.stderr

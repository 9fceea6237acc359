"""No secret reaches output: the CLI and a worker, run with distinctive keys (wrong,
unreachable and valid), never print or log them (the demo's output is checked the same
way in tests/cli/test_demo.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from boilermaker.emulator import ServiceBusEmulator

pytestmark = pytest.mark.slow

#: Valid for the emulator started here; the wrong and unreachable ones are made up.
VALID_KEY = "VmFsaWRLZXlGb3JCb2lsZXJtYWtlclNlY3JldHNUZXN0MDE="
WRONG_KEY = "V3JvbmdLZXlGb3JCb2lsZXJtYWtlclNlY3JldHNUZXN0MDI="
UNREACHABLE_KEY = "VW5yZWFjaGFibGVLZXlCb2lsZXJtYWtlclNlY3JldHMwMw=="
ACCOUNT_KEY = "QWNjb3VudEtleUZvckJvaWxlcm1ha2VyU2VjcmV0c1Rlc3Q0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ=="
SAS_SIGNATURE = "U2FzU2lnbmF0dXJlRm9yQm9pbGVybWFrZXI1NTU1"
SECRETS = (VALID_KEY, WRONG_KEY, UNREACHABLE_KEY, ACCOUNT_KEY, SAS_SIGNATURE)


def assert_clean(output: str, what: str) -> None:
    for secret in SECRETS:
        assert secret not in output, f"{what} printed a secret:\n{output[-3000:]}"
    assert "sig=" + SAS_SIGNATURE[:8] not in output


@pytest.fixture(scope="module")
def emulator() -> ServiceBusEmulator:
    emu = ServiceBusEmulator(host="127.0.0.1", port=0, key=VALID_KEY, mode="process")
    emu.start()
    yield emu
    emu.stop()


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("SERVICE_BUS_", "BOILER"))}
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "boilermaker.cli", "-v", *args],
        capture_output=True,
        text=True,
        env=full,
        timeout=120,
    )


def sb(port: int, key: str) -> str:
    return (
        f"Endpoint=sb://127.0.0.1:{port};SharedAccessKeyName=RootManageSharedAccessKey;"
        f"SharedAccessKey={key};UseDevelopmentEmulator=true"
    )


def test_the_cli_never_prints_a_key(emulator: ServiceBusEmulator) -> None:
    runs = {
        "valid key": cli(
            "dlq", "list", "--connection-string", sb(emulator.port, VALID_KEY), "--queue", "secrets"
        ),
        "wrong key": cli(
            "dlq", "list", "--connection-string", sb(emulator.port, WRONG_KEY), "--queue", "secrets"
        ),
        "unreachable": cli(
            "dlq", "list", "--connection-string", sb(1, UNREACHABLE_KEY), "--queue", "secrets"
        ),
        "bad storage key": cli(
            "inspect",
            "--graph",
            "g-1",
            env={
                "BOILERMAKER_STORAGE_CONNECTION_STRING": (
                    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
                    f"AccountKey={ACCOUNT_KEY};BlobEndpoint=http://127.0.0.1:1/devstoreaccount1"
                ),
                "BOILERMAKER_CONTAINER": "results",
            },
        ),
        "sas url": cli(
            "--storage-url",
            f"https://127.0.0.1:1/?sv=2024-11-04&ss=b&srt=co&sp=rl&sig={SAS_SIGNATURE}",
            "--container",
            "results",
            "inspect",
            "--graph",
            "g-1",
        ),
    }
    assert runs["valid key"].returncode == 0, runs["valid key"].stderr
    for name, result in runs.items():
        assert_clean(result.stdout + result.stderr, f"the CLI ({name})")
    for name in ("wrong key", "unreachable", "bad storage key", "sas url"):
        assert runs[name].returncode != 0, (name, runs[name].stdout)
        assert runs[name].stderr.strip(), f"{name}: no error shown"


def run_worker(tmp_path: Path, connection_string: str, seconds: float) -> str:
    (tmp_path / "secret_app.py").write_text(
        textwrap.dedent(
            """
            from boilermaker import Boilermaker
            from boilermaker.config import Config
            from boilermaker.service_bus import AzureServiceBus

            app = Boilermaker({}, AzureServiceBus.from_config(Config()))

            @app.task()
            async def noop(state):
                return None
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SERVICE_BUS_", "BOILER"))}
    env.update(
        SERVICE_BUS_CONNECTION_STRING=connection_string,
        SERVICE_BUS_QUEUE_NAME="secrets",
        BOILERMAKER_LOG_FORMAT="text",
        BOILERMAKER_LOG_LEVEL="DEBUG",
        PYTHONPATH=str(tmp_path),
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "boilermaker.cli",
            "-v",
            "worker",
            "secret_app:app",
            "--log-level",
            "debug",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    deadline = time.monotonic() + seconds
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    return out


@pytest.mark.parametrize("which", ["valid", "wrong", "unreachable"])
def test_a_worker_never_logs_a_key(
    emulator: ServiceBusEmulator, tmp_path: Path, which: str
) -> None:
    connection = {
        "valid": sb(emulator.port, VALID_KEY),
        "wrong": sb(emulator.port, WRONG_KEY),
        "unreachable": sb(1, UNREACHABLE_KEY),
    }[which]
    output = run_worker(tmp_path, connection, seconds=4)
    assert output.strip(), "the worker printed nothing"
    assert_clean(output, f"the worker ({which} key)")

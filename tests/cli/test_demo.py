"""`boilermaker demo` (what `make demo` runs) completes its workload and stops what it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from boilermaker.storage.azurite import Azurite

pytestmark = pytest.mark.slow

DEMO = [sys.executable, "-m", "boilermaker.cli", "demo"]


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.fixture(autouse=True)
def _needs_azurite() -> None:
    if not Azurite.available():
        pytest.skip("Azurite is not installed: run `npm ci`")


def test_demo_runs_the_workload_and_reports_each_part() -> None:
    result = subprocess.run(
        [*DEMO, "--thumbnails", "8"], capture_output=True, text=True, timeout=240
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "Published 25 tasks" in out
    assert "make_thumbnail       8" in out
    assert "sync_inventory       3" in out  # two retries, then success
    assert "chain order: download >> transcode >> notify" in out
    assert "charge_card: TaskFailed - ValueError: card declined" in out
    assert "poll_partner_feed: ProcessingError - retries exhausted after 2 attempt(s)" in out
    assert "graph 'sales report'" in out
    assert "succeeded, complete=True" in out
    assert "graph 'customer import'" in out
    assert "failed, complete=True" in out
    assert "load_import          skipped (never ran)" in out
    assert "page_on_call         success" in out
    assert out.rstrip().endswith("Stopped the emulator and Azurite.")
    # No key of its own emulator or Azurite is shown.
    from boilermaker.emulator.config import DEFAULT_KEY

    everything = out + result.stderr
    assert DEFAULT_KEY not in everything
    assert "AccountKey=Eby8" not in everything


def test_demo_stops_everything_it_started_on_ctrl_c() -> None:
    started: list[psutil.Process] = []
    with subprocess.Popen(
        [*DEMO, "--thumbnails", "400"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    ) as proc:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        for line in proc.stdout:
            if line.startswith("Published"):
                started = _descendants(proc.pid)
                # Ctrl-C in a terminal signals the whole foreground process group.
                os.killpg(proc.pid, signal.SIGINT)
                break
            assert time.monotonic() < deadline, "the demo never published its workload"
        rest = proc.stdout.read()
        code = proc.wait(timeout=60)
    assert started, "the demo should have started the emulator and Azurite"
    assert code == 130, rest
    assert "Stopped the emulator and Azurite." in rest
    _gone, alive = psutil.wait_procs(started, timeout=15)
    assert not alive, f"still running after Ctrl-C: {[p.cmdline() for p in alive]}"

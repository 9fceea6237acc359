"""Every program in ``examples/`` runs, as a reader would run it, in its own process.

Found automatically: every ``examples/*.py`` except modules starting with
``_``. How one is run comes from a comment line of its own::

    # docs-test: needs servicebus, azurite; runs until stopped

- ``needs servicebus``: SERVICE_BUS_CONNECTION_STRING and SERVICE_BUS_QUEUE_NAME
  point at the session's emulator (a fresh queue per program);
  ``needs azurite``: BOILERMAKER_RESULTS_CONNECTION_STRING and
  BOILERMAKER_RESULTS_CONTAINER point at Azurite (a fresh container).
- ``runs until stopped``: a worker; it must still be running a few seconds
  after its first output, then stop cleanly (exit 0) on SIGTERM.
- ``test_*.py`` files are pytest modules and run under pytest.
- Anything else must exit 0 on its own within a minute.

The quickstart's publisher and worker also run together below, so the page's
promise (two tasks published, then processed) is checked end to end.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.docs.markdown_examples import ROOT

EXAMPLES = ROOT / "examples"
DIRECTIVE = re.compile(r"^#\s*docs-test:\s*(.+)$", re.MULTILINE)
SERVICES = frozenset({"servicebus", "azurite"})


@dataclass(frozen=True)
class ExampleSpec:
    path: Path
    needs: frozenset[str]
    until_stopped: bool

    @property
    def is_pytest(self) -> bool:
        return self.path.name.startswith("test_")

    @classmethod
    def read(cls, path: Path) -> ExampleSpec:
        needs: set[str] = set()
        until_stopped = False
        for directive in DIRECTIVE.findall(path.read_text()):
            for part in (p.strip() for p in directive.split(";")):
                if part.startswith("needs "):
                    needs.update(n.strip() for n in part[len("needs ") :].split(","))
                elif part == "runs until stopped":
                    until_stopped = True
                else:
                    raise ValueError(f"{path.name}: unknown docs-test directive {part!r}")
        unknown = needs - SERVICES
        if unknown:
            raise ValueError(f"{path.name}: unknown services {sorted(unknown)}")
        return cls(path, frozenset(needs), until_stopped)


def discover() -> list[ExampleSpec]:
    found = sorted(EXAMPLES.glob("*.py"))
    return [ExampleSpec.read(p) for p in found if not p.name.startswith("_")]


def _env(request: pytest.FixtureRequest, spec: ExampleSpec) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SERVICE_BUS_", "PYTEST_"))}
    env["PYTHONUNBUFFERED"] = "1"
    if "servicebus" in spec.needs:
        emulator = request.getfixturevalue("servicebus_emulator")
        env["SERVICE_BUS_CONNECTION_STRING"] = emulator.connection_string
        env["SERVICE_BUS_QUEUE_NAME"] = request.getfixturevalue("servicebus_queue")
    if "azurite" in spec.needs:
        azurite = request.getfixturevalue("azurite")
        env["BOILERMAKER_RESULTS_CONNECTION_STRING"] = azurite.connection_string
        env["BOILERMAKER_RESULTS_CONTAINER"] = f"example-{uuid.uuid4().hex[:16]}"
    return env


def _run_to_completion(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, cwd=EXAMPLES, env=env, capture_output=True, text=True, timeout=120)
    shown = f"{' '.join(args)} exited {done.returncode}\n{done.stdout}{done.stderr}"
    assert done.returncode == 0, shown
    return done


def _run_until(
    script: Path, env: dict[str, str], until: str | None, settle: float = 2.0, timeout: float = 60
) -> tuple[int, str]:
    """Start ``script``; ``settle`` seconds after its output shows ``until`` (after it
    started, if None), SIGTERM it; return its exit status and output."""
    # Unbuffered bytes, read straight from the pipe: a buffered reader could hold a
    # line that the selector never reports again (nor communicate() reads).
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=EXAMPLES,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        bufsize=0,
    )
    assert proc.stdout is not None
    output: list[str] = []
    seen_at: float | None = time.monotonic() if until is None else None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        try:
            while time.monotonic() < deadline:
                if seen_at is not None and time.monotonic() - seen_at >= settle:
                    break
                if not selector.select(timeout=0.1):
                    continue
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break  # it exited
                output.append(chunk.decode("utf-8", "replace"))
                if seen_at is None and until is not None and until in "".join(output):
                    seen_at = time.monotonic()
            assert proc.poll() is None, f"{script.name} exited early\n{''.join(output)}"
            proc.send_signal(signal.SIGTERM)
            rest, _ = proc.communicate(timeout=30)
            output.append(rest.decode("utf-8", "replace"))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return proc.returncode, "".join(output)


@pytest.mark.parametrize("spec", discover(), ids=lambda s: s.path.name)
def test_example_runs(spec: ExampleSpec, request: pytest.FixtureRequest) -> None:
    env = _env(request, spec)
    if spec.is_pytest:
        _run_to_completion(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", spec.path.name], env
        )
    elif spec.until_stopped:
        code, output = _run_until(spec.path, env, until=None, settle=3.0)
        assert code == 0, f"{spec.path.name} did not stop cleanly on SIGTERM ({code})\n{output}"
    else:
        _run_to_completion([sys.executable, spec.path.name], env)


def test_quickstart_publisher_then_worker(servicebus_emulator, servicebus_queue: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVICE_BUS_")}
    env.update(
        SERVICE_BUS_CONNECTION_STRING=servicebus_emulator.connection_string,
        SERVICE_BUS_QUEUE_NAME=servicebus_queue,
        PYTHONUNBUFFERED="1",
    )
    published = _run_to_completion([sys.executable, "publisher.py"], env)
    assert published.stdout.count("published process_data as task ") == 2
    assert servicebus_emulator.counts(servicebus_queue).active == 2

    code, output = _run_until(
        EXAMPLES / "worker.py", env, until="Processing data data_456", settle=1.5
    )
    assert code == 0, output
    assert "Processing data data_123 with priority normal" in output
    assert "Processing data data_456 with priority high" in output
    counts = servicebus_emulator.counts(servicebus_queue)
    assert (counts.active, counts.dead_lettered) == (0, 0)

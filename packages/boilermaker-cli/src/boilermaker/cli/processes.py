"""Running several worker processes under one command, for CPU-bound tasks.

``boilermaker worker APP --processes N`` starts N child processes, each a
plain ``boilermaker worker APP`` with the same options, and stays in the
foreground: SIGINT/SIGTERM are passed on to every child (a second signal
again, so children stop at once), and it exits when all have exited. If a
child exits on its own, the others are stopped too and its exit status is
returned: a supervisor above (systemd, Kubernetes) restarts the whole group.
Connection settings reach the children through the environment, never the
command line, so secrets do not show in process listings.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from types import FrameType

logger = logging.getLogger("boilermaker.cli")

POLL = 0.2


def run_worker_processes(count: int, worker_args: Sequence[str], env: Mapping[str, str]) -> int:
    """Run ``count`` workers with ``worker_args`` until they all exit; their worst status."""
    children: list[subprocess.Popen[bytes]] = []
    signals_seen: list[int] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        signals_seen.append(signum)
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for index in range(count):
            child_env = dict(env, BOILERMAKER_WORKER_INDEX=str(index))
            command = [sys.executable, "-m", "boilermaker.cli", "worker", *worker_args]
            children.append(subprocess.Popen(command, env=child_env))
        logger.info("Started %d worker processes: %s", count, [c.pid for c in children])
        while any(child.poll() is None for child in children):
            early = [c for c in children if c.returncode is not None]
            if early and not signals_seen:
                first = early[0]
                logger.error(
                    "Worker process %d exited with status %s; stopping the others",
                    first.pid,
                    first.returncode,
                )
                forward(signal.SIGTERM, None)
            time.sleep(POLL)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    return max((abs(c.returncode or 0) for c in children), default=0)


def child_environment(overrides: Mapping[str, str | None]) -> dict[str, str]:
    """This process's environment with ``overrides`` set (None values left out)."""
    env = dict(os.environ)
    env.update({k: v for k, v in overrides.items() if v is not None})
    return env

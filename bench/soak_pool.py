"""The soak's worker processes and the ledger of what they ran.

:class:`WorkerPool` runs ``python -m bench.soak_worker`` processes, kills one
with SIGKILL and starts its replacement, and stops them all with SIGTERM.
Every process writes its own event file (``bench/soak_worker.py`` says what
the lines mean); :class:`Ledger` reads those files as they grow and answers
what the soak asks: which tasks finished, how many times each started, and
whether every extra run is explained by a run that was in flight when its
process was killed (started, never settled).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench.soak_worker import DELIVERY, READY, RETURNED, SETTLED, STARTED

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Environment variables a worker must not inherit (they would change its logging).
DROPPED_ENV = ("BOILERMAKER_LOG_FORMAT", "BOILERMAKER_LOG_LEVEL")


@dataclass
class WorkerProcess:
    """One worker process: its slot in the pool, its generation, its files."""

    slot: int
    generation: int
    process: subprocess.Popen[bytes]
    events: Path
    log: Path
    killed: bool = False


class WorkerPool:
    """``size`` worker processes on one queue; a killed one is replaced at once."""

    def __init__(self, size: int, env: Mapping[str, str], directory: Path) -> None:
        self.size = size
        self.env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV} | dict(env)
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.running: dict[int, WorkerProcess] = {}
        self.every: list[WorkerProcess] = []
        self.kills = 0

    def start(self) -> WorkerPool:
        for slot in range(self.size):
            self._spawn(slot)
        return self

    def _spawn(self, slot: int) -> WorkerProcess:
        generation = sum(1 for w in self.every if w.slot == slot)
        name = f"worker{slot}-{generation}"
        events = self.directory / f"{name}.events"
        log = self.directory / f"{name}.log"
        with log.open("wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "bench.soak_worker"],
                cwd=REPO_ROOT,
                env={**self.env, "SOAK_EVENTS": str(events)},
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
            )
        worker = WorkerProcess(slot, generation, process, events, log)
        self.running[slot] = worker
        self.every.append(worker)
        return worker

    def kill_one(self, rng: random.Random, ready: Collection[Path] = ()) -> WorkerProcess:
        """SIGKILL a random running worker, wait for it to die, start its replacement.

        The victim is chosen among the workers whose event file is in ``ready``
        (they have started receiving), or among all when none is: a process
        still importing its modules has nothing in flight to lose.
        """
        slots = sorted(s for s, w in self.running.items() if w.events in ready)
        slot = rng.choice(slots or sorted(self.running))
        victim = self.running.pop(slot)
        victim.killed = True
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait()
        self.kills += 1
        self._spawn(slot)
        return victim

    def check_alive(self) -> None:
        """Raise if a worker exited on its own (its log says why)."""
        for worker in self.running.values():
            code = worker.process.poll()
            if code is not None:
                tail = worker.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(
                    f"worker {worker.slot}-{worker.generation} exited with {code}:\n{tail}"
                )

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM every running worker (a graceful stop), then SIGKILL what lingers."""
        workers = list(self.running.values())
        self.running.clear()
        for worker in workers:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for worker in workers:
            try:
                worker.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()

    def files(self) -> list[tuple[Path, bool]]:
        """Every event file so far, and whether its process was killed."""
        return [(w.events, w.killed) for w in self.every]

    def __enter__(self) -> WorkerPool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class FileEvents:
    """The events of one file read so far, counted by kind and key."""

    offset: int = 0
    partial: bytes = b""
    counts: dict[str, Counter[str]] = field(
        default_factory=lambda: {
            k: Counter() for k in (STARTED, RETURNED, SETTLED, READY, DELIVERY)
        }
    )


@dataclass(frozen=True)
class Delivery:
    """One delivery that ran its task: where, which message, how stale its lock was."""

    file: Path
    sequence_number: int
    delivery_count: int
    lock_left: float | None

    def describe(self) -> str:
        left = "?" if self.lock_left is None else f"{self.lock_left:+.1f} s"
        return (
            f"{self.file.stem}: sequence number {self.sequence_number}, delivery "
            f"{self.delivery_count}, lock left when taken {left}"
        )


@dataclass(frozen=True)
class Duplicates:
    """Tasks that started more than once, and whether the extra runs are explained."""

    tasks: int
    extra_runs: int
    unexplained: dict[str, int]


class Ledger:
    """Reads the workers' event files incrementally; answers for the soak."""

    def __init__(self) -> None:
        self._files: dict[Path, FileEvents] = {}
        self.finished: set[str] = set()
        self.ready: set[Path] = set()
        self.deliveries: dict[str, list[Delivery]] = {}

    def read(self, paths: Iterable[Path]) -> None:
        """Read what was appended to ``paths`` since the last call."""
        for path in paths:
            events = self._files.setdefault(path, FileEvents())
            try:
                with path.open("rb") as f:
                    f.seek(events.offset)
                    chunk = f.read()
            except FileNotFoundError:
                continue
            events.offset += len(chunk)
            data = events.partial + chunk
            lines = data.split(b"\n")
            events.partial = lines.pop()
            for line in lines:
                kind, _, key = line.decode().partition(" ")
                if kind == DELIVERY:
                    key, seq, count, left = key.split("|")
                    self.deliveries.setdefault(key, []).append(
                        Delivery(path, int(seq), int(count), float(left) if left else None)
                    )
                events.counts[kind][key] += 1
                if kind == RETURNED:
                    self.finished.add(key)
                elif kind == READY:
                    self.ready.add(path)

    def runs(self) -> Counter[str]:
        """How many times each key's function started, over every process."""
        total: Counter[str] = Counter()
        for events in self._files.values():
            total.update(events.counts[STARTED])
        return total

    def lapsed(self) -> int:
        """Deliveries that ran although their lock had lapsed before the worker took them."""
        return sum(
            1
            for runs in self.deliveries.values()
            for d in runs
            if d.lock_left is not None and d.lock_left <= 0
        )

    def in_flight(self, path: Path) -> int:
        """Runs in ``path`` that started and were never settled."""
        events = self._files.get(path)
        if events is None:
            return 0
        started, settled = events.counts[STARTED], events.counts[SETTLED]
        return sum(max(0, n - settled[key]) for key, n in started.items())

    def duplicates(self, killed: Iterable[Path] | None) -> Duplicates:
        """Keys that started more than once.

        An extra run is explained by a run that started and was never settled
        (its message came back): in a process in ``killed``, or in any process
        when ``killed`` is None (faults of the broker rather than kills).
        """
        runs = self.runs()
        chosen = set(self._files) if killed is None else set(killed)
        unsettled: Counter[str] = Counter()
        for path in chosen:
            events = self._files.get(path)
            if events is None:
                continue
            for key, started in events.counts[STARTED].items():
                left = started - events.counts[SETTLED][key]
                if left > 0:
                    unsettled[key] += left
        repeated = {key: n for key, n in runs.items() if n > 1}
        unexplained = {
            key: n - 1 - unsettled[key] for key, n in repeated.items() if n - 1 > unsettled[key]
        }
        return Duplicates(
            tasks=len(repeated),
            extra_runs=sum(n - 1 for n in repeated.values()),
            unexplained=unexplained,
        )

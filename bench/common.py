"""Helpers shared by the benchmarks: an emulator to run against, RSS sampling, tables.

Nothing here asserts a speed: benchmarks measure and print, people judge.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psutil

from boilermaker.emulator import QueueSettings, ServiceBusEmulator


@contextmanager
def emulator(queues: Sequence[str] = (), mode: str = "process") -> Iterator[ServiceBusEmulator]:
    """A local Service Bus emulator (a child process by default) with these queues."""
    emu = ServiceBusEmulator(port=0, queues=[QueueSettings(q) for q in queues], mode=mode)  # type: ignore[arg-type]
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds used so far by process ``pid`` (this one by default)."""
    times = psutil.Process(pid or os.getpid()).cpu_times()
    return float(times.user + times.system)


def machine_load() -> str:
    """The 1-minute load average and core count, for the table's caption."""
    one, _five, _fifteen = os.getloadavg()
    return f"load {one:.2f} on {os.cpu_count()} cores"


@dataclass
class RssSampler:
    """Samples a process's resident set size on a background thread.

    ``mark(name)`` records the RSS at a point of interest (e.g. after the
    first 5,000 tasks); ``peak`` is the largest sample seen.
    """

    pid: int | None = None
    interval: float = 0.05
    peak: int = 0
    marks: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self._process = psutil.Process(self.pid or os.getpid())

    def sample(self) -> int:
        rss = int(self._process.memory_info().rss)
        self.peak = max(self.peak, rss)
        return rss

    def mark(self, name: str) -> int:
        rss = self.sample()
        self.marks[name] = rss
        return rss

    def start(self) -> RssSampler:
        self.sample()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except psutil.Error:
                return


class Stopwatch:
    """Wall time and this process's CPU time between ``start`` and ``stop``."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0
        self._wall0 = self._cpu0 = 0.0

    def start(self) -> Stopwatch:
        self._wall0, self._cpu0 = time.perf_counter(), time.process_time()
        return self

    def stop(self) -> Stopwatch:
        self.wall = time.perf_counter() - self._wall0
        self.cpu = time.process_time() - self._cpu0
        return self


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> str:
    """A plain-text table; the first column is left-aligned, the others right-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], len(value))

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.ljust(widths[i]) if i == 0 else v.rjust(widths[i]) for i, v in enumerate(values)
        ).rstrip()

    out = [title] if title else []
    out += [line(headers), line(["-" * w for w in widths])]
    out += [line(row) for row in cells]
    return "\n".join(out)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        if value >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def mib(value: int | float) -> float:
    """Bytes to MiB."""
    return value / (1024 * 1024)

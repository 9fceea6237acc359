"""The worker engine on the in-memory broker: tasks per second and overhead per task.

    uv run python -m bench.worker_bench [--noop N] [--repeat R] [--quick]

Measured in one process, so the figures are ratios to compare, not absolutes:

- baseline: the bare broker, one message at a time: ``receive(1)`` then
  ``complete``, with nothing else (no decoding, no task, no worker);
- no-op tasks at concurrency 1, 10 and 100 (``--noop`` tasks per run);
- tasks sleeping 10 ms at concurrency 1, 10 and 100, beside the ideal rate
  ``concurrency / 10 ms``;
- the worker's overhead per task: no-op wall time per task at concurrency 1
  minus the baseline's time per message.

Each figure is the best of ``--repeat`` runs. Logging stays unconfigured, so
the per-task INFO lines cost only a level check.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from boilermaker import Boilermaker, Task
from boilermaker.broker import OutgoingMessage
from boilermaker.envelope import encode_task
from boilermaker.memory import InMemoryBroker

CONCURRENCIES = (1, 10, 100)
SLEEP = 0.010


@dataclass(frozen=True, slots=True)
class Run:
    """One measured workload."""

    workload: str
    concurrency: int
    tasks: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds

    @property
    def per_task_us(self) -> float:
        return self.seconds / self.tasks * 1e6


async def bare_receive_complete(n: int) -> float:
    """Seconds for the bare broker to hand out and complete ``n`` messages one by one."""
    broker = InMemoryBroker()
    body = encode_task(Task.si("noop"))
    await broker.send([OutgoingMessage(body=body, message_id=str(i)) for i in range(n)])
    async with broker.receiver() as receiver:
        started = time.perf_counter()
        done = 0
        while done < n:
            for message in await receiver.receive(1, 1.0):
                await receiver.complete(message)
                done += 1
        elapsed = time.perf_counter() - started
    assert broker.is_idle()
    return elapsed


async def worker_run(n: int, concurrency: int, sleep: float) -> float:
    """Seconds for one worker to run ``n`` tasks (publishing not included)."""
    finished = asyncio.Event()
    state = {"done": 0}
    broker = InMemoryBroker()
    app = Boilermaker(state, broker)

    async def task(state: dict[str, int]) -> None:
        if sleep:
            await asyncio.sleep(sleep)
        state["done"] += 1
        if state["done"] == n:
            finished.set()

    app.register_async(task)
    await app.publish_many([app.create_task(task) for _ in range(n)])
    worker = app.worker(install_signal_handlers=False, concurrency=concurrency, receive_wait=0.05)
    started = time.perf_counter()
    runner = asyncio.create_task(worker.run())
    await asyncio.wait_for(finished.wait(), 120)
    elapsed = time.perf_counter() - started
    worker.stop()
    await runner
    assert worker.stats.succeeded == n, worker.stats
    assert broker.is_idle()
    return elapsed


async def best_of(repeat: int, make: Any) -> float:
    return min([await make() for _ in range(repeat)])


def sleep_tasks(concurrency: int) -> int:
    """Enough 10 ms tasks for about 0.2-1 s of work at this concurrency."""
    return max(100, 20 * concurrency)


async def measure(noop: int, repeat: int) -> tuple[float, list[Run]]:
    baseline = await best_of(repeat, lambda: bare_receive_complete(noop)) / noop
    runs: list[Run] = []
    for concurrency in CONCURRENCIES:
        seconds = await best_of(repeat, lambda c=concurrency: worker_run(noop, c, 0.0))
        runs.append(Run("no-op", concurrency, noop, seconds))
    for concurrency in CONCURRENCIES:
        n = sleep_tasks(concurrency)
        seconds = await best_of(repeat, lambda c=concurrency, n=n: worker_run(n, c, SLEEP))
        runs.append(Run("sleep 10 ms", concurrency, n, seconds))
    return baseline, runs


def report(baseline: float, runs: Sequence[Run]) -> str:
    baseline_rate = 1 / baseline
    lines = [
        "Worker benchmark, in-memory broker (best of runs; ratios matter, not absolutes)",
        f"baseline: bare receive(1) + complete = {baseline * 1e6:.1f} us/msg "
        f"({baseline_rate:,.0f} msg/s)",
        "",
        f"{'workload':<12} {'conc':>5} {'tasks':>6} {'wall s':>7} {'tasks/s':>9} "
        f"{'us/task':>8} {'x baseline':>10} {'ideal/s':>8} {'of ideal':>8}",
    ]
    for run in runs:
        ideal = run.concurrency / SLEEP if run.workload != "no-op" else None
        lines.append(
            f"{run.workload:<12} {run.concurrency:>5} {run.tasks:>6} {run.seconds:>7.3f} "
            f"{run.rate:>9,.0f} {run.per_task_us:>8.1f} {run.rate / baseline_rate:>10.3f} "
            + (f"{ideal:>8,.0f} {run.rate / ideal:>8.0%}" if ideal else f"{'-':>8} {'-':>8}")
        )
    noop_1 = next(r for r in runs if r.workload == "no-op" and r.concurrency == 1)
    overhead = noop_1.per_task_us - baseline * 1e6
    lines += [
        "",
        f"worker overhead per task (no-op at concurrency 1 minus baseline): {overhead:.1f} us "
        f"({noop_1.per_task_us / (baseline * 1e6):.1f}x the bare receive + complete)",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--noop", type=int, default=3000, help="no-op tasks per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (best kept)")
    parser.add_argument("--quick", action="store_true", help="--noop 1000 --repeat 1")
    args = parser.parse_args(argv)
    if args.quick:
        args.noop, args.repeat = 1000, 1
    started = time.perf_counter()
    baseline, runs = asyncio.run(measure(args.noop, args.repeat))
    print(report(baseline, runs))
    print(f"\n(total {time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()

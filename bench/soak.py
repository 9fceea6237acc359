"""Soak: real worker processes on the emulator and Azurite, under faults (``make soak``).

    uv run python -m bench.soak [--quick] [--only kills,drops,restart,storage] [--keep DIR]

Every scenario runs ``python -m bench.soak_worker`` processes (``app.run()``)
on a fresh emulator queue (lock duration 5 s, duplicate detection on). Each
run of a task writes ``S`` when it starts, ``R`` when it finished and ``C``
once its message is settled, one line per event to a file of its process
that survives SIGKILL (``bench/soak_worker.py``). From those files:

- **runs**: function starts, over every process;
- **duplicates**: tasks that started more than once; each extra run must be
  explained by a run that started and was never settled (its message came
  back): in a killed process for the kills scenario, in any process for the
  broker's faults. Extra runs without such a run are **unexplained** and
  fail the scenario;
- **lost**: published, and never finished in any process. Must be 0.

Scenarios:

1. ``kills``: 3 workers, 30,000 tasks, a random worker SIGKILLed every 2 s
   and replaced at once.
2. ``drops``: 3 workers, 10,000 tasks; the emulator cuts every connection
   (``drop_connections()``) 5 times, spread over the run.
3. ``restart``: 3 workers, 10,000 tasks; the emulator keeps its messages in a
   SQLite file and is stopped and started again on the same port, twice, 3 s
   down each time. The file store keeps no locks, so messages locked at a
   restart are delivered again: duplicates are expected there.
4. ``storage``: 3 workers, 20 graphs of 10-18 nodes (fan-out/fan-in, chains,
   parallel chains, a fan-out with a failing node and its handler); Azurite,
   on disk, is stopped for 20 s while they run, and started again on the same
   port with the same data. Half of the graphs are published before the stop,
   the rest during it (publishing is retried until the store is back). Every
   graph must finish and no node may run twice: the workers retry their own
   bookkeeping in-process while the store is down (``bookkeeping_patience``).

``--quick``: 2,000 / 1,000 / 1,000 tasks and 6 graphs with a 15 s outage (longer
than the blob client's own retries, about 9-12 s, so the workers' patience is used).
The exit status is non-zero if any scenario lost anything or broke its rule.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import format_table, machine_load
from bench.soak_azurite import DiskAzurite
from bench.soak_graphs import check_graphs, plan_graph, publish_until_stored, wait_for_graphs
from bench.soak_pool import Ledger, WorkerPool
from bench.soak_worker import build_app, soak_task
from boilermaker.emulator import QueueSettings, ServiceBusEmulator
from boilermaker.service_bus import AzureServiceBus
from boilermaker.storage import BlobClientStorage

QUEUE = "soak"
LOCK_DURATION = 5.0
WORKERS = 3
SCENARIOS = ("kills", "drops", "restart", "storage")


@dataclass(frozen=True)
class Sizes:
    """How big each scenario is."""

    kill_tasks: int = 30_000
    #: How long each small task sleeps, so that a fault finds some in flight.
    task_sleep: float = 0.1
    kill_every: float = 2.0
    drop_tasks: int = 10_000
    drops: int = 5
    restart_tasks: int = 10_000
    restarts: int = 2
    restart_down: float = 3.0
    graphs: int = 20
    outage: float = 20.0
    node_sleep: float = 0.3

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            kill_tasks=2_000,
            task_sleep=0.25,
            drop_tasks=1_000,
            drops=3,
            restart_tasks=1_000,
            restarts=1,
            restart_down=2.0,
            graphs=6,
            outage=15.0,
            node_sleep=0.1,
        )


@dataclass
class Figures:
    """What one scenario printed, and whether it held."""

    scenario: str
    tasks: int
    kills: int = 0
    faults: str = ""
    runs: int = 0
    duplicates: int = 0
    extra_runs: int = 0
    unexplained: int = 0
    lost: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.unexplained == 0 and not self.problems

    def report(self) -> str:
        lines = [
            f"{self.scenario}: tasks {self.tasks:,}, kills {self.kills}, {self.faults}, "
            f"runs {self.runs:,}, duplicates {self.duplicates} ({self.extra_runs} extra runs, "
            f"{self.unexplained} unexplained), lost {self.lost}, time {self.seconds:.1f} s "
            f"-> {'ok' if self.ok else 'FAILED'}"
        ]
        lines += [f"  {note}" for note in self.notes]
        lines += [f"  PROBLEM: {problem}" for problem in self.problems]
        return "\n".join(lines)


def queue_settings() -> QueueSettings:
    return QueueSettings(name=QUEUE, lock_duration=LOCK_DURATION, requires_duplicate_detection=True)


def start_emulator(store_path: Path | None = None, port: int = 0) -> ServiceBusEmulator:
    return ServiceBusEmulator(
        port=port, queues=[queue_settings()], mode="process", store_path=store_path
    ).start()


def worker_env(emulator: ServiceBusEmulator, azurite: DiskAzurite | None = None) -> dict[str, str]:
    env = {"SOAK_SB_CONNECTION_STRING": emulator.connection_string, "SOAK_QUEUE": QUEUE}
    if azurite is not None:
        env |= {"SOAK_BLOB_CONNECTION_STRING": azurite.connection_string, "SOAK_CONTAINER": QUEUE}
    return env


async def until(condition: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Wait until ``condition()`` holds (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)
    return True


async def drained(emulator: ServiceBusEmulator, timeout: float) -> bool:
    """Wait until the queue holds nothing active, scheduled or locked."""

    def empty() -> bool:
        c = emulator.counts(QUEUE)
        return c.active + c.scheduled + c.locked == 0

    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(empty):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.25)
    return True


# -- scenarios 1-3: many small tasks under faults -------------------------------------------


@dataclass
class TaskRun:
    """What a fault injector can see and touch while tasks run."""

    emulator: ServiceBusEmulator
    pool: WorkerPool
    ledger: Ledger
    tasks: int
    done: asyncio.Event = field(default_factory=asyncio.Event)
    faults: int = 0

    @property
    def progress(self) -> float:
        return len(self.ledger.finished) / self.tasks

    async def reached(self, share: float) -> bool:
        """Wait until ``share`` of the tasks finished; False if the run ended first."""
        await until(lambda: self.progress >= share or self.done.is_set(), 3600)
        return not self.done.is_set()


Injector = Callable[[TaskRun], Coroutine[Any, Any, str]]


async def publish_tasks(connection_string: str, tasks: int, sleep: float) -> None:
    broker = AzureServiceBus.from_connection_string(connection_string, QUEUE)
    app = build_app(broker)
    try:
        for start in range(0, tasks, 2_000):
            batch = [
                app.create_task(soak_task, n, sleep=sleep)
                for n in range(start, min(tasks, start + 2_000))
            ]
            await app.publish_many(batch, publish_attempts=3)
    finally:
        await app.close()


async def task_scenario(
    name: str,
    tasks: int,
    sleep: float,
    workdir: Path,
    inject: Injector,
    *,
    store_path: Path | None = None,
    kills_explain: bool = False,
) -> Figures:
    """Publish ``tasks`` tasks, run the workers with ``inject`` working, count."""
    figures = Figures(name, tasks)
    emulator = start_emulator(store_path)
    pool: WorkerPool | None = None
    run: TaskRun | None = None
    try:
        began = time.perf_counter()
        await publish_tasks(emulator.connection_string, tasks, sleep)
        figures.notes.append(f"published in {time.perf_counter() - began:.1f} s")
        pool = WorkerPool(WORKERS, worker_env(emulator), workdir / name).start()
        ledger = Ledger()
        run = TaskRun(emulator, pool, ledger, tasks)
        began = time.perf_counter()
        injector = asyncio.create_task(inject(run))
        timeout = 120 + tasks * 0.05
        finished = True
        try:
            deadline = time.monotonic() + timeout
            while len(ledger.finished) < tasks:
                failed = injector.done() and injector.exception() is not None
                if time.monotonic() > deadline or failed:
                    finished = False
                    break
                await asyncio.sleep(0.2)
                ledger.read(p for p, _ in pool.files())
                pool.check_alive()
        finally:
            run.done.set()
            figures.faults = await injector
        if not finished:
            figures.problems.append(f"not every task finished within {timeout:.0f} s")
        elif not await drained(run.emulator, 60):
            figures.problems.append("the queue did not drain within 60 s")
        figures.seconds = time.perf_counter() - began
        counts = run.emulator.counts(QUEUE)
        pool.stop()
        ledger.read(p for p, _ in pool.files())
        figures.kills = pool.kills
        figures.runs = sum(ledger.runs().values())
        killed = [p for p, k in pool.files() if k] if kills_explain else None
        dup = ledger.duplicates(killed)
        figures.duplicates, figures.extra_runs = dup.tasks, dup.extra_runs
        figures.unexplained = sum(dup.unexplained.values())
        if dup.unexplained:
            sample = ", ".join(f"{k} x{n}" for k, n in sorted(dup.unexplained.items())[:10])
            figures.problems.append(f"extra runs not in flight at a fault: {sample}")
        figures.lost = len({str(n) for n in range(tasks)} - ledger.finished)
        if pool.kills:
            victims = [w for w in pool.every if w.killed]
            caught = [ledger.in_flight(w.events) for w in victims]
            figures.notes.append(
                f"kills that found runs in flight: {sum(1 for c in caught if c)} of {len(victims)}"
                f" ({sum(caught)} runs); kills before the worker was ready: "
                f"{sum(1 for w in victims if w.events not in ledger.ready)}"
            )
        figures.notes.append(
            f"runs of a message whose lock had lapsed before the worker took it: {ledger.lapsed()}"
        )
        figures.notes.append(
            f"{len(pool.every)} worker processes in all; queue at the end: "
            f"active {counts.active}, locked {counts.locked}, dead-lettered {counts.dead_lettered}"
        )
        return figures
    finally:
        if pool is not None:
            pool.stop()
        # A restart replaces the emulator: stop the one running now.
        (run.emulator if run is not None else emulator).stop()


async def kills(sizes: Sizes, workdir: Path, seed: int = 1) -> Figures:
    """Scenario 1: a random worker SIGKILLed every ``kill_every`` s and replaced."""
    rng = random.Random(seed)

    async def inject(run: TaskRun) -> str:
        while not run.done.is_set():
            try:
                await asyncio.wait_for(run.done.wait(), sizes.kill_every)
            except TimeoutError:
                run.ledger.read(p for p, _ in run.pool.files())
                run.pool.kill_one(rng, run.ledger.ready)
        return f"a worker SIGKILLed every {sizes.kill_every:g} s"

    return await task_scenario(
        "kills", sizes.kill_tasks, sizes.task_sleep, workdir, inject, kills_explain=True
    )


async def drops(sizes: Sizes, workdir: Path) -> Figures:
    """Scenario 2: the emulator cuts every connection ``drops`` times, spread over the run."""

    async def inject(run: TaskRun) -> str:
        cut = 0
        for i in range(1, sizes.drops + 1):
            if not await run.reached(i / (sizes.drops + 1)):
                break
            cut += await asyncio.to_thread(run.emulator.drop_connections)
            run.faults += 1
        return f"drops {run.faults} ({cut} connections cut)"

    return await task_scenario("drops", sizes.drop_tasks, sizes.task_sleep, workdir, inject)


async def restart(sizes: Sizes, workdir: Path) -> Figures:
    """Scenario 3: the emulator, on its SQLite store, stopped and started on the same port."""
    store = workdir / "restart" / "emulator.sqlite"
    store.parent.mkdir(parents=True, exist_ok=True)

    async def inject(run: TaskRun) -> str:
        for i in range(1, sizes.restarts + 1):
            if not await run.reached(i / (sizes.restarts + 1)):
                break
            port = run.emulator.port
            await asyncio.to_thread(run.emulator.stop)
            await asyncio.sleep(sizes.restart_down)
            run.emulator = await asyncio.to_thread(start_emulator, store, port)
            run.faults += 1
        return f"restarts {run.faults} ({sizes.restart_down:g} s down each)"

    return await task_scenario(
        "restart", sizes.restart_tasks, sizes.task_sleep, workdir, inject, store_path=store
    )


# -- scenario 4: graphs through a storage outage --------------------------------------------


async def storage(sizes: Sizes, workdir: Path) -> Figures:
    """Scenario 4: Azurite stopped for ``outage`` s while graphs run; restarted on disk."""
    base = workdir / "storage"
    azurite = DiskAzurite(base / "azurite").start()
    emulator = start_emulator()
    pool: WorkerPool | None = None
    store = BlobClientStorage.from_connection_string(
        azurite.connection_string, QUEUE, create_container=True
    )
    app = build_app(
        AzureServiceBus.from_connection_string(emulator.connection_string, QUEUE), store
    )
    try:
        await store.ensure_container()
        plans = [plan_graph(app, i, sizes.node_sleep) for i in range(sizes.graphs)]
        figures = Figures("storage", sum(len(p.expected) for p in plans))
        ledger = Ledger()
        pool = WorkerPool(WORKERS, worker_env(emulator, azurite), base).start()
        began = time.perf_counter()
        half = (len(plans) + 1) // 2
        for plan in plans[:half]:
            await app.publish_graph(plan.graph)
        before_nodes = sum(len(p.expected) for p in plans[:half])

        def read() -> int:
            ledger.read(p for p, _ in pool.files())
            return sum(ledger.runs().values())

        await until(lambda: read() >= before_nodes // 4, 60)
        started_before = read()
        await asyncio.to_thread(azurite.stop)
        stopped_at = time.monotonic()  # the process has exited: nothing answers any more
        late = [asyncio.create_task(publish_until_stored(app, p.graph, 120)) for p in plans[half:]]
        await asyncio.sleep(max(0.0, sizes.outage - (time.monotonic() - stopped_at)))
        started_during = read() - started_before
        await asyncio.to_thread(azurite.start)
        figures.faults = f"Azurite down {time.monotonic() - stopped_at:.1f} s"
        restarted = time.monotonic()
        failed_tries = sum(await asyncio.gather(*late))
        figures.notes.append(
            f"the graphs published during the outage were stored "
            f"{time.monotonic() - restarted:.1f} s after the restart"
        )
        figures.notes.append(
            f"{half} graphs published before the stop, {len(plans) - half} during it "
            f"({failed_tries} publish tries failed while the store was down); "
            f"{started_before} node runs before the stop, {started_during} during it"
        )
        back = time.monotonic()
        complete = await wait_for_graphs(app, plans, timeout=180)
        if complete < len(plans):
            figures.problems.append(f"only {complete} of {len(plans)} graphs finished")
        ended = time.monotonic()
        if not await drained(emulator, 60):
            figures.problems.append("the queue did not drain within 60 s")
        figures.notes.append(
            f"late publishes done and the graphs finished {ended - back:.1f} s after that; "
            f"the queue drained {time.monotonic() - ended:.1f} s later"
        )
        figures.seconds = time.perf_counter() - began
        problems = await check_graphs(app, plans)
        pool.stop()
        read()
        runs = ledger.runs()
        figures.runs = sum(runs.values())
        expected = {name: plan.runs_expected(name) for plan in plans for name in plan.expected}
        twice = {name: n for name, n in runs.items() if n > 1}
        figures.duplicates = len(twice)
        figures.extra_runs = sum(n - 1 for n in twice.values())
        figures.unexplained = figures.extra_runs  # no process dies here: none is explained
        if twice:
            sample = ", ".join(f"{k} x{n}" for k, n in sorted(twice.items())[:10])
            figures.problems.append(f"nodes that ran more than once: {sample}")
            for name in sorted(twice)[:10]:
                runs_of = "; ".join(d.describe() for d in ledger.deliveries.get(name, []))
                figures.problems.append(f"{name} ran as: {runs_of}")
        figures.notes.append(
            f"runs of a message whose lock had lapsed before the worker took it: {ledger.lapsed()}"
        )
        unexpected = sorted(name for name, n in runs.items() if n and not expected.get(name))
        if unexpected:
            figures.problems.append(f"nodes that should not have run: {', '.join(unexpected)}")
        figures.lost = sum(1 for name, n in expected.items() if n and name not in ledger.finished)
        figures.problems += problems
        patient, gave_back = worker_log_count(
            pool, "trying again for up to", "giving the message back"
        )
        figures.notes.append(
            f"worker bookkeeping retried in-process for {patient} messages; "
            f"messages given back after a bookkeeping failure: {gave_back}"
        )
        figures.notes.append(
            f"graphs complete {complete}/{len(plans)}; nodes expected to run "
            f"{sum(expected.values())}, skipped by design {len(expected) - sum(expected.values())}"
        )
        return figures
    finally:
        if pool is not None:
            pool.stop()
        await app.close()
        emulator.stop()
        azurite.stop()


def worker_log_count(pool: WorkerPool, *phrases: str) -> list[int]:
    """How many lines of the workers' logs contain each phrase."""
    counts = [0] * len(phrases)
    for worker in pool.every:
        for line in worker.log.read_text(errors="replace").splitlines():
            for i, phrase in enumerate(phrases):
                counts[i] += phrase in line
    return counts


# -- the command ----------------------------------------------------------------------------


def summary(results: Sequence[Figures]) -> str:
    rows = [
        (
            f.scenario,
            f.tasks,
            f.kills,
            f.faults,
            f.runs,
            f.duplicates,
            f.unexplained,
            f.lost,
            f.seconds,
            "ok" if f.ok else "FAILED",
        )
        for f in results
    ]
    headers = (
        *("scenario", "tasks", "kills", "faults", "runs", "duplicates", "unexplained", "lost"),
        *("time s", ""),
    )
    return format_table(headers, rows)


async def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a small version of every scenario")
    parser.add_argument("--only", default="", help=f"comma-separated, of {', '.join(SCENARIOS)}")
    parser.add_argument("--keep", metavar="DIR", help="keep the workers' files in DIR")
    parser.add_argument("--seed", type=int, default=1, help="which workers get killed")
    args = parser.parse_args(argv)
    wanted = [s.strip() for s in args.only.split(",") if s.strip()] or list(SCENARIOS)
    unknown = sorted(set(wanted) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    sizes = Sizes.quick() if args.quick else Sizes()
    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="boilermaker-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(
        f"Soak{' (quick)' if args.quick else ''}: {WORKERS} worker processes, "
        f"lock duration {LOCK_DURATION:g} s; {machine_load()}",
        flush=True,
    )
    runners: dict[str, Callable[[], Awaitable[Figures]]] = {
        "kills": lambda: kills(sizes, workdir, args.seed),
        "drops": lambda: drops(sizes, workdir),
        "restart": lambda: restart(sizes, workdir),
        "storage": lambda: storage(sizes, workdir),
    }
    results: list[Figures] = []
    for name in wanted:
        try:
            figures = await runners[name]()
        except Exception as exc:
            figures = Figures(name, 0, problems=[f"{type(exc).__name__}: {exc}"])
            figures.lost = -1
        results.append(figures)
        print(figures.report(), flush=True)
    print()
    print(summary(results))
    failed = [f for f in results if not f.ok]
    if failed or args.keep:
        print(f"\nworkers' event files and logs: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

"""Service Bus transport on the emulator: our worker and publisher against the raw SDK and 1.4.1.

    uv run python -m bench.servicebus_bench [--quick] [--n N] [--memory-n N] [--skip-v141]

Everything runs on one process-mode emulator in one run, so the figures are
comparable with each other; the ratios are what to read:

1. the raw SDK ceiling: a plain ``azure.servicebus.aio`` peek-lock receiver
   (prefetch 100, and the prefetch our worker uses at each concurrency,
   2 x concurrency) receiving and completing pre-sent messages, completes
   awaited one after another;
2. our worker on no-op tasks and 10 ms tasks at concurrency 1, 16 and 64
   (pre-published with ``apply_many``, so the receive side is measured alone);
3. the published ``boilermaker-servicebus==1.4.1``, run as a subprocess on the
   same workloads from the pinned environment the compatibility tests use
   (``tests/compat/published_env.py``; it runs one task at a time, whatever
   the concurrency);
4. publishing: sequential ``apply_async``, and the batch publish
   (``apply_many``), against 1.4.1's sequential ``apply_async``;
5. concurrent publishing: ``asyncio.gather`` of 50 ``apply_async`` at a time,
   counting exceptions, and duplicates and losses among the bodies that land;
6. memory: worker RSS over 50,000 no-op tasks at concurrency 64, after the
   first 5,000 and at its peak, ours and 1.4.1's (each in a fresh process).

Rates are measured from the first task starting to the last message settled
(raw SDK: first message received to last completed). The receive workloads
run in rounds (two, one with ``--quick``), each round every implementation in
turn, and each figure is the best of its rounds: another process busy at one
moment should not decide a ratio. CPU columns are this
client's process time and the emulator process's CPU time per message, over
the same window: when the emulator's figure is the larger, the emulator is
the bottleneck, not the client. No figure is asserted; the targets of the
issue are reported as met or not met.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from azure.servicebus import ServiceBusMessage, ServiceBusReceiveMode
from azure.servicebus.aio import ServiceBusClient
from tests.compat import published_env

from bench.common import (
    RssSampler,
    Stopwatch,
    cpu_seconds,
    emulator,
    format_table,
    machine_load,
    mib,
)
from boilermaker import Boilermaker
from boilermaker.emulator import QueueSettings, ServiceBusEmulator
from boilermaker.service_bus import AzureServiceBus

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / ".bench"
V141_SCRIPT = BENCH_DIR / "v141_child.py"

CONCURRENCIES = (1, 16, 64)
SLEEP = 0.010
WAVE = 50
MEMORY_MARK = 5000
#: The raw SDK's prefetch: the issue's 100, and our worker's (2 x concurrency) at each concurrency.
RAW_PREFETCHES = (100, *(2 * c for c in CONCURRENCIES))


@dataclass(frozen=True, slots=True)
class Sizes:
    """How many messages each workload uses."""

    noop: int
    sleep_c1: int
    sleep: int
    v141_sleep: int
    publish: int
    batch: int
    concurrent: int
    memory: int
    v141_memory: int

    @classmethod
    def pick(cls, args: argparse.Namespace) -> Sizes:
        n = args.n or (1000 if args.quick else 5000)
        memory = args.memory_n or (15_000 if args.quick else 50_000)
        return cls(
            noop=n,
            # 10 ms tasks one at a time take 10 ms each, whoever runs them.
            sleep_c1=max(50, n // 20),
            sleep=n,
            v141_sleep=max(100, n // 5),
            publish=max(200, n // 5),
            batch=n,
            concurrent=args.concurrent_n or (500 if args.quick else 2000),
            memory=memory,
            v141_memory=args.v141_memory_n or memory,
        )


@dataclass(slots=True)
class Row:
    """One measured workload."""

    section: str
    workload: str
    implementation: str
    concurrency: int | str | None
    n: int
    seconds: float
    client_cpu: float = 0.0
    emulator_cpu: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else 0.0

    @property
    def client_ms(self) -> float:
        return self.client_cpu / self.n * 1000

    @property
    def emulator_ms(self) -> float:
        return self.emulator_cpu / self.n * 1000


# -- messages on the wire ---------------------------------------------------------------


async def send_raw(connection_string: str, queue: str, bodies: Sequence[str | bytes]) -> None:
    """Send bodies with the plain SDK, in as few batches as fit."""
    async with (
        ServiceBusClient.from_connection_string(connection_string) as client,
        client.get_queue_sender(queue) as sender,
    ):
        await send_in_batches(sender, bodies)


async def send_in_batches(sender: Any, bodies: Sequence[str | bytes]) -> None:
    """Send bodies on an open SDK sender, in as few batches as fit."""
    batch = await sender.create_message_batch()
    for body in bodies:
        message = ServiceBusMessage(body)
        try:
            batch.add_message(message)
        except ValueError:
            await sender.send_messages(batch)
            batch = await sender.create_message_batch()
            batch.add_message(message)
    if len(batch):
        await sender.send_messages(batch)


async def drain(connection_string: str, queue: str, expected: int) -> list[bytes]:
    """Receive-and-delete every message of ``queue`` (stops once nothing more arrives)."""
    bodies: list[bytes] = []
    async with (
        ServiceBusClient.from_connection_string(connection_string) as client,
        client.get_queue_receiver(
            queue, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE, prefetch_count=500
        ) as receiver,
    ):
        while True:
            wait = 0.5 if len(bodies) >= expected else 3.0
            got = await receiver.receive_messages(max_message_count=500, max_wait_time=wait)
            if not got:
                return bodies
            for message in got:
                body = message.body
                if not isinstance(body, bytes | bytearray):
                    body = b"".join(bytes(part) for part in body)
                bodies.append(bytes(body))


def _emulator_cpu(emu: ServiceBusEmulator) -> float:
    return cpu_seconds(emu.pid)


# -- 1. the raw SDK ceiling ---------------------------------------------------------------


async def raw_ceiling(emu: ServiceBusEmulator, queue: str, n: int, prefetch: int) -> Row:
    """Receive and complete ``n`` pre-sent messages with a plain SDK receiver."""
    conn = emu.connection_string
    await send_raw(conn, queue, [b'{"noop": true}'] * n)
    done = 0
    watch = Stopwatch()
    emu_cpu = 0.0
    async with (
        ServiceBusClient.from_connection_string(conn) as client,
        client.get_queue_receiver(queue, prefetch_count=prefetch) as receiver,
    ):
        while done < n:
            # Never more than is left: a last call asking for a full prefetch
            # would wait out max_wait_time for messages that do not exist.
            got = await receiver.receive_messages(
                max_message_count=min(prefetch, n - done), max_wait_time=5
            )
            if not got:
                raise RuntimeError(f"raw receiver: only {done} of {n} messages arrived")
            if done == 0:
                watch.start()
                emu_cpu = _emulator_cpu(emu)
            for message in got:
                await receiver.complete_message(message)
                done += 1
        watch.stop()
        emu_cpu = _emulator_cpu(emu) - emu_cpu
    return Row(
        "receive",
        "no-op",
        f"raw SDK (prefetch {prefetch})",
        1,
        n,
        watch.wall,
        watch.cpu,
        emu_cpu,
    )


# -- 2. our worker --------------------------------------------------------------------------


class RunState:
    """Counts finished tasks; records when the first one started."""

    def __init__(self, n: int, mark_at: int = 0, sampler: RssSampler | None = None) -> None:
        self.n = n
        self.done = 0
        self.started = False
        self.all_ran = asyncio.Event()
        self.watch = Stopwatch()
        self.emu_cpu0 = 0.0
        self.emu_pid: int | None = None
        self.mark_at = mark_at
        self.sampler = sampler

    def begin(self) -> None:
        if not self.started:
            self.started = True
            self.watch.start()
            if self.emu_pid:
                self.emu_cpu0 = cpu_seconds(self.emu_pid)

    def finished(self) -> None:
        self.done += 1
        if self.sampler is not None and self.done == self.mark_at:
            self.sampler.mark("after_mark")
        if self.done == self.n:
            self.all_ran.set()


def our_app(conn: str, queue: str, state: RunState) -> Boilermaker:
    """An application with the two benchmark tasks, ``noop`` and ``nap``."""
    app = Boilermaker(state, AzureServiceBus.from_connection_string(conn, queue))

    async def noop(state: RunState, i: int = 0) -> None:
        state.begin()
        state.finished()

    async def nap(state: RunState, i: int = 0) -> None:
        state.begin()
        await asyncio.sleep(SLEEP)
        state.finished()

    app.register_async(noop, acks_late=True)
    app.register_async(nap, acks_late=True)
    return app


async def run_our_worker(
    conn: str,
    queue: str,
    state: RunState,
    concurrency: int,
    timeout: float = 600,
    **settings: Any,
) -> tuple[float, float, dict[str, Any]]:
    """Run a worker until ``state.n`` tasks ran and settled; (seconds, cpu, worker stats).

    ``settings`` are further ``WorkerSettings`` fields."""
    app = our_app(conn, queue, state)
    worker = app.worker(concurrency=concurrency, install_signal_handlers=False, **settings)
    runner = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(state.all_ran.wait(), timeout)
        while worker.in_flight:  # the last settlements  # noqa: ASYNC110
            await asyncio.sleep(0.001)
        state.watch.stop()
    finally:
        worker.stop()
        await runner
        await app.close()
    return state.watch.wall, state.watch.cpu, worker.stats.as_dict()


async def publish_for_ours(conn: str, queue: str, fn: str, n: int) -> None:
    """Pre-publish ``n`` tasks with ``apply_many`` (not timed)."""
    app = our_app(conn, queue, RunState(0))
    try:
        for start in range(0, n, 10_000):
            await app.apply_many(fn, [(i,) for i in range(start, min(n, start + 10_000))])
    finally:
        await app.close()


async def our_worker_row(
    emu: ServiceBusEmulator,
    queue: str,
    workload: str,
    n: int,
    concurrency: int,
    **settings: Any,
) -> Row:
    fn = "noop" if workload == "no-op" else "nap"
    await publish_for_ours(emu.connection_string, queue, fn, n)
    state = RunState(n)
    state.emu_pid = emu.pid
    seconds, cpu, stats = await run_our_worker(
        emu.connection_string, queue, state, concurrency, **settings
    )
    emu_cpu = cpu_seconds(emu.pid) - state.emu_cpu0
    return Row("receive", workload, "ours", concurrency, n, seconds, cpu, emu_cpu, stats)


# -- 3. the published 1.4.1, in its own venv -------------------------------------------------

V141_CHILD = r'''
"""Runs boilermaker-servicebus 1.4.1 for bench/servicebus_bench.py (written by it)."""
import argparse, asyncio, json, os, sys, threading, time

import psutil
from aio_azure_clients_toolbox import ManagedAzureServiceBusSender
from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient, ServiceBusReceiver
from boilermaker.app import Boilermaker

SLEEP = 0.010


class State:
    """Held weakly by 1.4.1's app: main() keeps the strong reference."""

    def __init__(self, n, mark_at):
        self.n, self.mark_at, self.done = n, mark_at, 0
        self.t0 = self.cpu0 = self.emu0 = None
        self.rss_mark = None


def emu_cpu(pid):
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def make_app(args, state):
    sender = ManagedAzureServiceBusSender(
        "sb://localhost", args.queue, connection_string=args.conn
    )
    app = Boilermaker(state, sender)

    async def noop(state, i=0):
        if state.t0 is None:
            state.t0, state.cpu0 = time.perf_counter(), time.process_time()
            state.emu0 = emu_cpu(args.emu_pid)

    async def nap(state, i=0):
        if state.t0 is None:
            state.t0, state.cpu0 = time.perf_counter(), time.process_time()
            state.emu0 = emu_cpu(args.emu_pid)
        await asyncio.sleep(SLEEP)

    app.register_async(noop)
    app.register_async(nap)
    return app, {"noop": noop, "nap": nap}


async def prepare(args):
    state = State(0, 0)
    app, fns = make_app(args, state)
    bodies = [app.create_task(fns[args.fn], i).model_dump_json() for i in range(args.n)]
    async with ServiceBusClient.from_connection_string(args.conn) as client:
        async with client.get_queue_sender(args.queue) as sender:
            batch = await sender.create_message_batch()
            for body in bodies:
                try:
                    batch.add_message(ServiceBusMessage(body))
                except ValueError:
                    await sender.send_messages(batch)
                    batch = await sender.create_message_batch()
                    batch.add_message(ServiceBusMessage(body))
            if len(batch):
                await sender.send_messages(batch)
    return {"prepared": args.n}


async def work(args):
    state = State(args.n, args.mark_at)
    app, _ = make_app(args, state)
    proc = psutil.Process()
    peak = [proc.memory_info().rss]
    stop = threading.Event()

    def sample():
        while not stop.wait(0.05):
            peak[0] = max(peak[0], proc.memory_info().rss)

    threading.Thread(target=sample, daemon=True).start()
    all_done = asyncio.Event()
    finish = {}
    original = ServiceBusReceiver.complete_message

    async def counted(self, message):
        await original(self, message)
        state.done += 1
        if state.done == state.mark_at:
            state.rss_mark = proc.memory_info().rss
        if state.done == state.n:
            finish["t"], finish["cpu"] = time.perf_counter(), time.process_time()
            finish["emu"] = emu_cpu(args.emu_pid)
            all_done.set()

    ServiceBusReceiver.complete_message = counted
    runner = asyncio.create_task(app.run())
    waiter = asyncio.create_task(all_done.wait())
    done, _ = await asyncio.wait(
        {runner, waiter}, timeout=args.timeout, return_when=asyncio.FIRST_COMPLETED
    )
    stop.set()
    peak[0] = max(peak[0], proc.memory_info().rss)
    runner.cancel()
    try:
        await asyncio.wait_for(runner, 15)
    except BaseException:
        pass
    try:
        await asyncio.wait_for(app.close(), 15)
    except BaseException:
        pass
    if waiter not in done:
        return {"error": f"only {state.done} of {state.n} completed"}
    return {
        "seconds": finish["t"] - state.t0,
        "cpu": finish["cpu"] - state.cpu0,
        "emulator_cpu": finish["emu"] - state.emu0,
        "rss_mark": state.rss_mark,
        "rss_peak": peak[0],
    }


async def publish(args):
    state = State(0, 0)
    app, fns = make_app(args, state)
    await app.apply_async(fns["noop"], -1)  # opens the pooled connection
    t0, cpu0, emu0 = time.perf_counter(), time.process_time(), emu_cpu(args.emu_pid)
    failures = 0
    if args.wave <= 1:
        for i in range(args.n):
            try:
                await app.apply_async(fns["noop"], i)
            except Exception:
                failures += 1
    else:
        errors = []
        for start in range(0, args.n, args.wave):
            wave = range(start, min(args.n, start + args.wave))
            got = await asyncio.gather(
                *(app.apply_async(fns["noop"], i) for i in wave),
                return_exceptions=True,
            )
            for i, result in zip(wave, got):
                if isinstance(result, BaseException):
                    failures += 1
                    errors.append([i, type(result).__name__, str(result)[:200]])
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    emu = emu_cpu(args.emu_pid) - emu0
    try:
        await asyncio.wait_for(app.close(), 15)
    except BaseException:
        pass
    out = {"seconds": seconds, "cpu": cpu, "emulator_cpu": emu, "failures": failures}
    if args.wave > 1:
        out["failed_indices"] = [e[0] for e in errors]
        out["error_kinds"] = sorted({e[1] + ": " + e[2][:80] for e in errors})[:5]
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["prepare", "work", "publish"])
    p.add_argument("--conn", required=True)
    p.add_argument("--queue", required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--fn", default="noop")
    p.add_argument("--emu-pid", type=int, required=True)
    p.add_argument("--mark-at", type=int, default=0)
    p.add_argument("--wave", type=int, default=1)
    p.add_argument("--timeout", type=float, default=900)
    args = p.parse_args()
    result = asyncio.run({"prepare": prepare, "work": work, "publish": publish}[args.mode](args))
    print("RESULT " + json.dumps(result), flush=True)


main()
'''


def ensure_v141() -> Path:
    """The pinned 1.4.1 environment (installed once, shared with the compatibility tests,
    psutil included), with its runner script written; its python."""
    python = published_env.ensure()
    BENCH_DIR.mkdir(exist_ok=True)
    V141_SCRIPT.write_text(V141_CHILD)
    return python


async def run_child(command: list[str], timeout: float = 900) -> dict[str, Any]:
    """Run a benchmark child process; its last ``RESULT {json}`` line."""
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise RuntimeError(f"benchmark child timed out: {command[:4]}") from None
    for line in reversed(out.decode().splitlines()):
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            if "error" in result:
                raise RuntimeError(f"benchmark child failed: {result['error']}")
            return result
    raise RuntimeError(
        f"benchmark child gave no result (exit {process.returncode}):\n"
        + err.decode(errors="replace")[-3000:]
    )


async def v141(
    python: Path, emu: ServiceBusEmulator, mode: str, queue: str, n: int, **kw: Any
) -> dict[str, Any]:
    command = [
        str(python),
        str(V141_SCRIPT),
        mode,
        "--conn",
        emu.connection_string,
        "--queue",
        queue,
        "--n",
        str(n),
        "--emu-pid",
        str(emu.pid),
    ]
    for key, value in kw.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    return await run_child(command)


async def v141_worker_row(
    python: Path, emu: ServiceBusEmulator, queue: str, workload: str, n: int
) -> Row:
    fn = "noop" if workload == "no-op" else "nap"
    await v141(python, emu, "prepare", queue, n, fn=fn)
    got = await v141(python, emu, "work", queue, n)
    return Row(
        "receive",
        workload,
        "1.4.1",
        "1 (fixed)",
        n,
        got["seconds"],
        got["cpu"],
        got["emulator_cpu"],
    )


# -- 4 and 5. publishing ------------------------------------------------------------------------


async def our_publish(emu: ServiceBusEmulator, queue: str, n: int, how: str) -> Row:
    """``how``: ``sequential`` (apply_async), ``batch`` (apply_many) or ``concurrent``."""
    state = RunState(0)
    app = our_app(emu.connection_string, queue, state)
    failures = 0
    failed: list[int] = []
    try:
        await app.apply_async("noop", -1)  # opens the pooled connection
        emu0 = cpu_seconds(emu.pid)
        watch = Stopwatch().start()
        if how == "sequential":
            for i in range(n):
                try:
                    await app.apply_async("noop", i)
                except Exception:
                    failures += 1
        elif how == "batch":
            await app.apply_many("noop", [(i,) for i in range(n)])
        else:
            for start in range(0, n, WAVE):
                indices = range(start, min(n, start + WAVE))
                got = await asyncio.gather(
                    *(app.apply_async("noop", i) for i in indices), return_exceptions=True
                )
                for i, result in zip(indices, got, strict=True):
                    if isinstance(result, BaseException):
                        failures += 1
                        failed.append(i)
        watch.stop()
        emu_cpu = cpu_seconds(emu.pid) - emu0
    finally:
        await app.close()
    workload = {
        "sequential": "sequential apply_async",
        "batch": "apply_many (batch)",
        "concurrent": f"gather of {WAVE} apply_async",
    }[how]
    row = Row("publish", workload, "ours", None, n, watch.wall, watch.cpu, emu_cpu)
    row.extra = {"failures": failures, "failed_indices": failed}
    return row


def landed_by_index(bodies: Sequence[bytes]) -> tuple[Counter[int], Counter[str], int]:
    """Argument index -> copies landed, task id -> copies, and non-task (junk) messages."""
    by_index: Counter[int] = Counter()
    by_id: Counter[str] = Counter()
    junk = 0
    for body in bodies:
        try:
            doc = json.loads(body)
        except ValueError:
            junk += 1
            continue
        task = doc.get("task", doc) if isinstance(doc, dict) else None
        if not isinstance(task, dict) or "task_id" not in task:
            junk += 1
            continue
        args = (task.get("payload") or {}).get("args") or [None]
        by_index[int(args[0])] += 1
        by_id[str(task["task_id"])] += 1
    return by_index, by_id, junk


async def check_landed(emu: ServiceBusEmulator, queue: str, row: Row) -> None:
    """Drain the queue and count duplicates and losses among what was published."""
    n = row.n
    bodies = await drain(emu.connection_string, queue, n + 1)
    by_index, by_id, junk = landed_by_index(bodies)
    failed = set(row.extra.get("failed_indices", []))
    row.extra.update(
        duplicates=sum(c - 1 for c in by_id.values() if c > 1)
        + sum(c - 1 for i, c in by_index.items() if c > 1 and i >= 0),
        lost=sum(1 for i in range(n) if i not in failed and by_index[i] == 0),
        landed_despite_failure=sum(1 for i in failed if by_index[i] > 0),
        junk=junk,
    )


# -- 6. memory --------------------------------------------------------------------------------


async def our_memory_child(args: argparse.Namespace) -> dict[str, Any]:
    """(In a fresh process) run the worker on ``args.n`` pre-published no-op tasks."""
    sampler = RssSampler().start()
    state = RunState(args.n, mark_at=MEMORY_MARK, sampler=sampler)
    state.emu_pid = args.emu_pid
    seconds, cpu, _stats = await run_our_worker(
        args.conn, args.queue, state, args.concurrency, timeout=1800
    )
    emu = cpu_seconds(args.emu_pid) - state.emu_cpu0
    sampler.stop()
    return {
        "seconds": seconds,
        "cpu": cpu,
        "emulator_cpu": emu,
        "rss_mark": sampler.marks.get("after_mark"),
        "rss_peak": sampler.peak,
    }


async def memory_rows(
    emu: ServiceBusEmulator, sizes: Sizes, python: Path | None
) -> list[dict[str, Any]]:
    rows = []
    emu.create_queue(QueueSettings("mem-ours"))
    await publish_for_ours(emu.connection_string, "mem-ours", "noop", sizes.memory)
    got = await run_child(
        [
            sys.executable,
            "-m",
            "bench.servicebus_bench",
            "--child-memory",
            "--conn",
            emu.connection_string,
            "--queue",
            "mem-ours",
            "--n",
            str(sizes.memory),
            "--emu-pid",
            str(emu.pid),
        ],
        timeout=1800,
    )
    rows.append({"implementation": "ours (concurrency 64)", "n": sizes.memory, **got})
    if python is not None:
        emu.create_queue(QueueSettings("mem-v141"))
        await v141(python, emu, "prepare", "mem-v141", sizes.v141_memory, fn="noop")
        got = await v141(
            python, emu, "work", "mem-v141", sizes.v141_memory, mark_at=MEMORY_MARK, timeout=1800
        )
        rows.append({"implementation": "1.4.1 (one at a time)", "n": sizes.v141_memory, **got})
    return rows


# -- running it all ------------------------------------------------------------------------------


@dataclass
class Results:
    sizes: Sizes
    load_before: str = ""
    rounds: int = 1
    load_after: str = ""
    receive: list[Row] = field(default_factory=list)
    publish: list[Row] = field(default_factory=list)
    memory: list[dict[str, Any]] = field(default_factory=list)
    control: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def keep_best(kept: list[Row], rows: Sequence[Row]) -> None:
    """Merge a round's rows into ``kept``, keeping the faster run of each workload."""
    for row in rows:
        key = (row.workload, row.implementation, row.concurrency)
        for i, old in enumerate(kept):
            if (old.workload, old.implementation, old.concurrency) == key:
                if row.rate > old.rate:
                    kept[i] = row
                break
        else:
            kept.append(row)


def progress(text: str) -> None:
    print(f"  {text} ...", file=sys.stderr, flush=True)


async def run_all(args: argparse.Namespace) -> Results:
    sizes = Sizes.pick(args)
    results = Results(sizes, load_before=machine_load(), rounds=args.rounds)
    started = time.perf_counter()
    python = None if args.skip_v141 else ensure_v141()
    counter = iter(range(1000))

    def fresh(emu: ServiceBusEmulator, stem: str) -> str:
        name = f"{stem}-{next(counter)}"
        emu.create_queue(QueueSettings(name))
        return name

    with emulator() as emu:
        # 1-3, in rounds so that each figure gets more than one moment of the
        # machine's load; the best run of each is kept.
        for round_ in range(1, args.rounds + 1):
            tag = f"round {round_}/{args.rounds}: "
            rows: list[Row] = []
            for prefetch in RAW_PREFETCHES:
                progress(f"{tag}raw SDK, prefetch {prefetch}, {sizes.noop} messages")
                rows.append(await raw_ceiling(emu, fresh(emu, "raw"), sizes.noop, prefetch))
            for workload in ("no-op", "sleep 10 ms"):
                for concurrency in CONCURRENCIES:
                    n = sizes.noop if workload == "no-op" else sizes.sleep
                    if workload != "no-op" and concurrency == 1:
                        n = sizes.sleep_c1
                    progress(f"{tag}our worker, {workload}, concurrency {concurrency}, {n} tasks")
                    rows.append(
                        await our_worker_row(emu, fresh(emu, "ours"), workload, n, concurrency)
                    )
            if python is not None:
                for workload, n in (("no-op", sizes.noop), ("sleep 10 ms", sizes.v141_sleep)):
                    progress(f"{tag}1.4.1 worker, {workload}, {n} tasks")
                    rows.append(await v141_worker_row(python, emu, fresh(emu, "v141"), workload, n))
            keep_best(results.receive, rows)
        # 4. publishing
        for how, n in (("sequential", sizes.publish), ("batch", sizes.batch)):
            progress(f"our publisher, {how}, {n} messages")
            queue = fresh(emu, "pub")
            results.publish.append(await our_publish(emu, queue, n, how))
            emu.purge_queue(queue)
        if python is not None:
            progress(f"1.4.1 publisher, sequential, {sizes.publish} messages")
            queue = fresh(emu, "pub141")
            got = await v141(python, emu, "publish", queue, sizes.publish)
            row = Row(
                "publish",
                "sequential apply_async",
                "1.4.1",
                None,
                sizes.publish,
                got["seconds"],
                got["cpu"],
                got["emulator_cpu"],
                {"failures": got["failures"]},
            )
            results.publish.append(row)
            # Our worker on the queue 1.4.1 published to: its pool's readiness
            # messages must be completed silently, not run or dead-lettered.
            progress("our worker on the queue 1.4.1 published to")
            state = RunState(sizes.publish + 1)
            _s, _c, stats = await run_our_worker(emu.connection_string, queue, state, 16)
            counts = emu.counts(queue)
            results.control = {
                "tasks_run": state.done,
                "control_messages": stats["control_messages"],
                "dead_lettered": counts.dead_lettered,
                "left": counts.active + counts.locked + counts.scheduled,
            }
        # 5. concurrent publishing
        progress(f"our publisher, gather of {WAVE}, {sizes.concurrent} messages")
        queue = fresh(emu, "conc")
        row = await our_publish(emu, queue, sizes.concurrent, "concurrent")
        await check_landed(emu, queue, row)
        results.publish.append(row)
        if python is not None:
            progress(f"1.4.1 publisher, gather of {WAVE}, {sizes.concurrent} messages")
            queue = fresh(emu, "conc141")
            got = await v141(python, emu, "publish", queue, sizes.concurrent, wave=WAVE)
            row = Row(
                "publish",
                f"gather of {WAVE} apply_async",
                "1.4.1",
                None,
                sizes.concurrent,
                got["seconds"],
                got["cpu"],
                got["emulator_cpu"],
                {
                    "failures": got["failures"],
                    "failed_indices": got.get("failed_indices", []),
                    "error_kinds": got.get("error_kinds", []),
                },
            )
            await check_landed(emu, queue, row)
            results.publish.append(row)
        # 6. memory
        if not args.skip_memory:
            progress(f"memory: {sizes.memory} no-op tasks (ours) / {sizes.v141_memory} (1.4.1)")
            results.memory = await memory_rows(emu, sizes, python)
    results.seconds = time.perf_counter() - started
    results.load_after = machine_load()
    return results


# -- the report ------------------------------------------------------------------------------------


def _find(
    rows: Sequence[Row], workload: str, implementation: str, concurrency: Any = None
) -> Row | None:
    for row in rows:
        if (
            row.workload == workload
            and row.implementation.startswith(implementation)
            and (concurrency is None or row.concurrency == concurrency)
        ):
            return row
    return None


def _matched_raw(rows: Sequence[Row], row: Row) -> Row | None:
    """The raw SDK row with the prefetch our worker used for ``row``."""
    if row.implementation != "ours" or not isinstance(row.concurrency, int):
        return None
    name = f"raw SDK (prefetch {2 * row.concurrency})"
    return next((r for r in rows if r.implementation == name), None)


def _ratio(a: float | None, b: float | None) -> float | None:
    if not a or not b:
        return None
    return a / b


def report(results: Results) -> str:
    rec, pub = results.receive, results.publish
    raw = max((r for r in rec if r.implementation.startswith("raw")), key=lambda r: r.rate)
    v_noop = _find(rec, "no-op", "1.4.1")
    v_sleep = _find(rec, "sleep 10 ms", "1.4.1")
    lines = [
        "Service Bus benchmark on the process-mode emulator "
        f"(machine: {results.load_before} before, {results.load_after} after; "
        f"{results.seconds:.0f} s in all)",
        f"ceiling = best raw SDK row ({raw.implementation}: {raw.rate:,.0f} msg/s); "
        f"receive figures are the best of {results.rounds} round(s)",
        "",
    ]
    table = []
    for row in rec:
        v141 = v_noop if row.workload == "no-op" else v_sleep
        matched = _matched_raw(rec, row)
        table.append(
            [
                row.workload,
                row.implementation,
                row.concurrency,
                row.n,
                row.seconds,
                row.rate,
                _ratio(row.rate, raw.rate),
                _ratio(row.rate, matched.rate) if matched is not None else None,
                _ratio(row.rate, v141.rate if v141 else None),
                row.client_ms,
                row.emulator_ms,
            ]
        )
    lines.append(
        format_table(
            [
                "receive + settle",
                "implementation",
                "conc",
                "N",
                "seconds",
                "msg/s",
                "x ceiling",
                "x raw same prefetch",
                "x 1.4.1",
                "client CPU ms/msg",
                "emulator CPU ms/msg",
            ],
            table,
            "1-3. Workers (rate from first task started to last message settled)",
        )
    )
    v_seq = _find(pub, "sequential apply_async", "1.4.1")
    table = []
    for row in pub:
        extra = row.extra
        table.append(
            [
                row.workload,
                row.implementation,
                row.n,
                row.seconds,
                row.rate,
                _ratio(row.rate, v_seq.rate if v_seq else None),
                extra.get("failures"),
                extra.get("duplicates"),
                extra.get("lost"),
                extra.get("landed_despite_failure"),
                extra.get("junk"),
                row.client_ms,
                row.emulator_ms,
            ]
        )
    lines += [
        "",
        format_table(
            [
                "publish",
                "implementation",
                "N",
                "seconds",
                "msg/s",
                "x 1.4.1 seq",
                "failed",
                "dups",
                "lost",
                "failed but landed",
                "junk msgs",
                "client CPU ms/msg",
                "emulator CPU ms/msg",
            ],
            table,
            "4-5. Publishing (after one untimed publish that opens the connection)",
        ),
    ]
    for row in pub:
        if row.extra.get("error_kinds"):
            lines.append(f"  {row.implementation} errors: " + " | ".join(row.extra["error_kinds"]))
    if results.control:
        c = results.control
        lines.append(
            f"  our worker on 1.4.1's queue: {c['tasks_run']} tasks run, "
            f"{c['control_messages']} readiness message(s) completed silently "
            f"(WorkerStats.control_messages), {c['dead_lettered']} dead-lettered, "
            f"{c['left']} left"
        )
    if results.memory:
        table = []
        for m in results.memory:
            table.append(
                [
                    m["implementation"],
                    m["n"],
                    m["n"] / m["seconds"],
                    mib(m["rss_mark"]) if m.get("rss_mark") else None,
                    mib(m["rss_peak"]),
                    _ratio(m["rss_peak"], m.get("rss_mark")),
                ]
            )
        lines += [
            "",
            format_table(
                [
                    "memory (no-op tasks)",
                    "N",
                    "tasks/s",
                    f"RSS MiB after {MEMORY_MARK:,}",
                    "peak RSS MiB",
                    "peak / after",
                ],
                table,
                "6. Worker memory (each in a fresh process)",
            ),
        ]
    lines += ["", targets(results, raw, v_noop, v_sleep, v_seq)]
    return "\n".join(lines)


def targets(
    results: Results, raw: Row, v_noop: Row | None, v_sleep: Row | None, v_seq: Row | None
) -> str:
    rec, pub = results.receive, results.publish
    rows: list[list[Any]] = []

    def check(name: str, value: float | None, threshold: float, at_most: bool = False) -> None:
        if value is None:
            rows.append([name, None, threshold, "not measured"])
            return
        met = value <= threshold if at_most else value >= threshold
        rows.append([name, value, f"{'<=' if at_most else '>='} {threshold}", _met(met)])

    noop64 = _find(rec, "no-op", "ours", 64)
    best_noop = max(
        (r for r in rec if r.workload == "no-op" and r.implementation == "ours"),
        key=lambda r: r.rate,
        default=None,
    )
    sleep64 = _find(rec, "sleep 10 ms", "ours", 64)
    check("no-op c=64 / raw ceiling", _ratio(noop64.rate if noop64 else None, raw.rate), 0.8)
    matched = _matched_raw(rec, noop64) if noop64 else None
    check(
        "no-op c=64 / raw at the same prefetch (128)",
        _ratio(noop64.rate if noop64 else None, matched.rate if matched else None),
        0.8,
    )
    check(
        f"best no-op (c={best_noop.concurrency if best_noop else '-'}) / raw ceiling",
        _ratio(best_noop.rate if best_noop else None, raw.rate),
        0.8,
    )
    check(
        "10 ms c=64 / 1.4.1 10 ms",
        _ratio(sleep64.rate if sleep64 else None, v_sleep.rate if v_sleep else None),
        15,
    )
    check("10 ms c=64 / raw ceiling", _ratio(sleep64.rate if sleep64 else None, raw.rate), 0.7)
    seq = _find(pub, "sequential apply_async", "ours")
    check(
        "sequential publish / 1.4.1",
        _ratio(seq.rate if seq else None, v_seq.rate if v_seq else None),
        3,
    )
    conc = _find(pub, f"gather of {WAVE} apply_async", "ours")
    v_conc = _find(pub, f"gather of {WAVE} apply_async", "1.4.1")
    check(
        "concurrent publish / 1.4.1",
        _ratio(conc.rate if conc else None, v_conc.rate if v_conc else None),
        10,
    )
    if conc is not None:
        bad = conc.extra.get("failures", 0) + conc.extra.get("duplicates", 0)
        bad += conc.extra.get("lost", 0)
        rows.append(["concurrent publish failures+dups+lost (ours)", bad, "== 0", _met(bad == 0)])
    batch = _find(pub, "apply_many (batch)", "ours")
    check(
        "batch publish / 1.4.1 apply_async",
        _ratio(batch.rate if batch else None, v_seq.rate if v_seq else None),
        10,
    )
    ours_mem = next((m for m in results.memory if m["implementation"].startswith("ours")), None)
    v_mem = next((m for m in results.memory if m["implementation"].startswith("1.4.1")), None)
    check(
        "our peak RSS / RSS after 5,000",
        _ratio(ours_mem["rss_peak"], ours_mem.get("rss_mark")) if ours_mem else None,
        1.1,
        at_most=True,
    )
    check(
        "our peak RSS / 1.4.1 peak RSS",
        _ratio(ours_mem["rss_peak"], v_mem["rss_peak"]) if ours_mem and v_mem else None,
        1.2,
        at_most=True,
    )
    if results.control:
        ok = results.control["control_messages"] > 0 and results.control["dead_lettered"] == 0
        rows.append(
            [
                "1.4.1 readiness messages completed silently",
                results.control["control_messages"],
                "> 0, none dead-lettered",
                _met(ok),
            ]
        )
    return format_table(["target (issue 5)", "measured", "wanted", "result"], rows, "Targets")


def _met(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="smaller N everywhere (about 2 min)")
    parser.add_argument("--n", type=int, default=0, help="messages per receive workload")
    parser.add_argument("--memory-n", type=int, default=0, help="no-op tasks of the memory run")
    parser.add_argument("--v141-memory-n", type=int, default=0, help="the same for 1.4.1")
    parser.add_argument("--concurrent-n", type=int, default=0, help="concurrent publishes")
    parser.add_argument(
        "--rounds", type=int, default=0, help="runs of each receive workload (best kept)"
    )
    parser.add_argument("--skip-v141", action="store_true", help="do not run the 1.4.1 library")
    parser.add_argument("--skip-memory", action="store_true", help="no memory runs")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    # Internal: the memory run of our worker, in a fresh process.
    parser.add_argument("--child-memory", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--conn", help=argparse.SUPPRESS)
    parser.add_argument("--queue", help=argparse.SUPPRESS)
    parser.add_argument("--emu-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, default=64, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 2)
    if args.child_memory:
        result = asyncio.run(our_memory_child(args))
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    results = asyncio.run(run_all(args))
    print(report(results))
    if args.json:
        with contextlib.suppress(OSError):
            args.json.write_text(
                json.dumps(
                    {
                        "receive": [vars_of(r) for r in results.receive],
                        "publish": [vars_of(r) for r in results.publish],
                        "memory": results.memory,
                        "control": results.control,
                    },
                    indent=1,
                )
            )
    return 0


def vars_of(row: Row) -> dict[str, Any]:
    extra = {k: v for k, v in row.extra.items() if k != "failed_indices"}
    return {
        "workload": row.workload,
        "implementation": row.implementation,
        "concurrency": row.concurrency,
        "n": row.n,
        "seconds": row.seconds,
        "rate": row.rate,
        "client_cpu": row.client_cpu,
        "emulator_cpu": row.emulator_cpu,
        **extra,
    }


if __name__ == "__main__":
    raise SystemExit(main())

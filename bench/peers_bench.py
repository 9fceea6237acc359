"""Peers beside the raw azure-servicebus SDK on one emulator: taskiq-service-bus and FastStream.

    uv run python -m bench.peers_bench [--quick] [--n N] [--publish-n N] [--taskiq-publish-n N]
                                       [--rounds R] [--json FILE]

Two peer libraries, each pinned in an environment of its own
(``bench/peer_envs.py``, installed by ``make install``) and driven through its
own public API by a script its own interpreter runs (``bench/peers/*_child.py``;
they never import boilermaker), next to the raw SDK in this process, all on
one process-mode emulator in one run:

1. **worker throughput**: N messages pre-sent (untimed, in the peer's own
   message format), then consumed by the peer's worker or subscriber with a
   no-op handler at the peer's default settings; the rate runs from the first
   message handled to the last. What is left on the queue afterwards
   (``emu.counts``: active, locked, deferred, scheduled; and dead-lettered) is
   reported, so a peer that does not settle shows. Raw SDK: a peek-lock
   receiver with prefetch 100, ``receive_messages(max_message_count=...,
   max_wait_time=5)`` then ``await complete_message(m)`` one after another,
   timed from the first batch received to the last complete;
2. **sequential publish**: N messages published one after another with
   ``await`` through the peer's normal API (taskiq ``await task.kiq(i)``,
   FastStream ``await broker.publish(i, queue=...)``), timed from creating the
   broker to the last publish returned (its connection open included); also
   the rate after the first publish returned. Raw SDK: ``await
   sender.send_messages(ServiceBusMessage(body))`` one at a time, timed from
   ``ServiceBusClient.from_connection_string`` to the last send. What landed
   on the queue is counted, so lost or extra messages show.

taskiq-service-bus opens a new client and sender for every message it sends
(about a second each on the SDK: ~0.5 s to open, ~0.5 s to close), so its
publish N is capped (``--taskiq-publish-n``, 50; 15 with ``--quick``) and the
raw SDK is also measured at that N, for its "x raw SDK".

Every figure is the best of ``--rounds`` rounds (2; 1 with ``--quick``), each
round every implementation in turn: the machine being busy at one moment
should not decide a ratio. taskiq's publish runs in the first round only.

Peers whose environment is not installed are reported as "not installed (run
make install)"; a peer that fails on the emulator is reported with its error.
Other benchmarks can call :func:`peer_rows` on an emulator they already run.
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient

from bench import peer_envs
from bench.common import emulator, format_table, machine_load
from bench.servicebus_bench import raw_ceiling
from boilermaker.emulator import QueueSettings, ServiceBusEmulator

ROOT = Path(__file__).resolve().parent.parent

WORK = "worker throughput"
PUBLISH = "sequential publish"
RAW = "raw SDK"
#: Peer name -> how it shows in the table.
PEER_LABELS = {
    "taskiq": "taskiq-service-bus 0.3.0",
    "faststream": "faststream-azure-servicebus 0.2.1",
}
NOT_INSTALLED = "not installed (run make install)"
RAW_PREFETCH = 100
TASKIQ_PUBLISH_CAP = 50
TASKIQ_PUBLISH_CAP_QUICK = 15
#: What each row of the table holds (peer_rows' dicts have exactly these keys, in order).
COLUMNS = (
    "path",
    "implementation",
    "N",
    "seconds",
    "msg/s",
    "x raw SDK",
    "msg/s after 1st",
    "client CPU ms/msg",
    "on queue after",
    "dead-lettered",
    "settings / note",
)


def _row(path: str, implementation: str, n: int, **values: Any) -> dict[str, Any]:
    """A table row with every column present (``None`` prints as ``-``)."""
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(path=path, implementation=implementation, N=n)
    for key, value in values.items():
        if key not in row:
            raise KeyError(key)
        row[key] = value
    return row


def _rate(n: int, seconds: float | None) -> float | None:
    return n / seconds if seconds else None


def _cpu_ms(cpu: float | None, n: int) -> float | None:
    return cpu / n * 1000 if cpu is not None and n else None


def fresh_queue(emu: ServiceBusEmulator, stem: str) -> str:
    """A new queue with default settings and a name no other benchmark uses."""
    name = f"peers-{stem}-{uuid.uuid4().hex[:8]}"
    emu.create_queue(QueueSettings(name))
    return name


def _left(emu: ServiceBusEmulator, queue: str) -> tuple[int, int]:
    """(active + locked + deferred + scheduled, dead-lettered) messages of ``queue``."""
    c = emu.counts(queue)
    return c.active + c.locked + c.deferred + c.scheduled, c.dead_lettered


def _progress(text: str) -> None:
    print(f"  {text} ...", file=sys.stderr, flush=True)


# -- the raw SDK -----------------------------------------------------------------------------------


async def raw_receive_row(emu: ServiceBusEmulator, n: int, prefetch: int = RAW_PREFETCH) -> dict:
    """Receive and complete ``n`` pre-sent messages with a plain peek-lock receiver."""
    queue = fresh_queue(emu, "raw-recv")
    measured = await raw_ceiling(emu, queue, n, prefetch)
    seconds, cpu = measured.seconds, measured.client_cpu
    left, dead = _left(emu, queue)
    emu.delete_queue(queue)
    return _row(
        WORK,
        RAW,
        n,
        seconds=seconds,
        **{
            "msg/s": _rate(n, seconds),
            "client CPU ms/msg": _cpu_ms(cpu, n),
            "on queue after": left,
            "dead-lettered": dead,
            "settings / note": f"prefetch {prefetch}, completes awaited one by one",
        },
    )


async def raw_send_row(emu: ServiceBusEmulator, n: int) -> dict:
    """Send ``n`` messages one ``send_messages`` at a time, connection open included."""
    queue = fresh_queue(emu, "raw-send")
    t0, cpu0 = time.perf_counter(), time.process_time()
    first = 0.0
    client = ServiceBusClient.from_connection_string(emu.connection_string)
    try:
        sender = client.get_queue_sender(queue)
        for i in range(n):
            await sender.send_messages(ServiceBusMessage(json.dumps({"i": i})))
            if i == 0:
                first = time.perf_counter()
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        await sender.close()
    finally:
        await client.close()
    on_queue, dead = _left(emu, queue)
    emu.delete_queue(queue)
    return _row(
        PUBLISH,
        RAW,
        n,
        seconds=seconds,
        **{
            "msg/s": _rate(n, seconds),
            "msg/s after 1st": _rate(n - 1, t0 + seconds - first) if n > 1 else None,
            "client CPU ms/msg": _cpu_ms(cpu, n),
            "on queue after": on_queue,
            "dead-lettered": dead,
            "settings / note": "one client + sender; open included, close not",
        },
    )


# -- the peers ------------------------------------------------------------------------------------


async def run_peer_child(
    name: str, mode: str, emu: ServiceBusEmulator, queue: str, n: int, timeout: float
) -> dict[str, Any]:
    """Run peer ``name``'s script in its own environment; its JSON line.

    Never raises for a peer's failure: a missing environment gives
    ``{"missing": why}``, a failed or silent script ``{"error": ...}``.
    """
    try:
        python = peer_envs.require(name)
    except peer_envs.PeerEnvMissing as exc:
        return {"missing": str(exc)}
    command = [
        str(python),
        str(peer_envs.child_script(name)),
        mode,
        "--conn",
        emu.connection_string,
        "--queue",
        queue,
        "--n",
        str(n),
        "--timeout",
        str(max(30.0, timeout - 30)),
    ]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        return {"error": f"{name} {mode} script did not finish within {timeout:.0f} s"}
    for line in reversed(out.decode(errors="replace").splitlines()):
        line = line.strip()
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                result: dict[str, Any] = json.loads(line)
                return result
    tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
    return {"error": f"{name} {mode} script gave no result (exit {process.returncode}): {tail[0]}"}


#: The settings a peer's script reports that the table shows (the notes under it say the rest).
SHOWN_SETTINGS = (
    "processes",
    "max_async_tasks",
    "max_prefetch",
    "sdk_prefetch",
    "max_workers",
    "prefetch_count",
    "ack",
    "ack_policy",
    "client",
)


def _settings(got: dict[str, Any]) -> str:
    """The defaults the peer's script says it ran with, compactly."""
    settings = got.get("settings") or {}
    return " ".join(f"{k}={settings[k]}" for k in SHOWN_SETTINGS if k in settings)


def _failed_row(path: str, name: str, n: int, got: dict[str, Any]) -> dict | None:
    """A row saying why there is no figure, or None when ``got`` has one."""
    if "missing" in got:
        return _row(path, PEER_LABELS[name], n, **{"settings / note": NOT_INSTALLED})
    if got.get("error") and not got.get("seconds"):
        return _row(path, PEER_LABELS[name], n, **{"settings / note": f"error: {got['error']}"})
    return None


async def peer_work_row(emu: ServiceBusEmulator, name: str, n: int) -> dict:
    """Peer ``name``'s worker on ``n`` pre-sent messages (its defaults), and what it left."""
    queue = fresh_queue(emu, f"{name}-work")
    got = await run_peer_child(name, "work", emu, queue, n, timeout=120 + n / 20)
    left, dead = _left(emu, queue)
    emu.delete_queue(queue)
    failed = _failed_row(WORK, name, n, got)
    if failed is not None:
        return failed
    handled = int(got.get("handled", 0))
    note = _settings(got)
    if got.get("error"):  # it stalled part way: the rate covers what was handled
        note = f"error: {got['error']}; {note}"
    return _row(
        WORK,
        PEER_LABELS[name],
        n,
        seconds=got["seconds"],
        **{
            "msg/s": _rate(handled, got["seconds"]),
            "client CPU ms/msg": _cpu_ms(got.get("cpu"), handled),
            "on queue after": left,
            "dead-lettered": dead,
            "settings / note": note,
        },
    )


async def peer_publish_row(emu: ServiceBusEmulator, name: str, n: int) -> dict:
    """Peer ``name`` publishing ``n`` messages one after another, and what landed."""
    queue = fresh_queue(emu, f"{name}-pub")
    got = await run_peer_child(name, "publish", emu, queue, n, timeout=120 + 5 * n)
    on_queue, dead = _left(emu, queue)
    emu.delete_queue(queue)
    failed = _failed_row(PUBLISH, name, n, got)
    if failed is not None:
        return failed
    after = got.get("seconds_after_first")
    note = _settings(got)
    if on_queue != n:
        note = f"{on_queue} landed for {n} published; {note}"
    return _row(
        PUBLISH,
        PEER_LABELS[name],
        n,
        seconds=got["seconds"],
        **{
            "msg/s": _rate(n, got["seconds"]),
            "msg/s after 1st": _rate(n - 1, after) if n > 1 and after else None,
            "client CPU ms/msg": _cpu_ms(got.get("cpu"), n),
            "on queue after": on_queue,
            "dead-lettered": dead,
            "settings / note": note,
        },
    )


def _with_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fill "x raw SDK": each row's rate over the raw SDK's on the same path (and N, publishing)."""
    for row in rows:
        raws = [r for r in rows if r["implementation"] == RAW and r["path"] == row["path"]]
        if row["path"] == PUBLISH:
            raws = [r for r in raws if r["N"] == row["N"]] or raws
        if raws and row["msg/s"] and raws[0]["msg/s"]:
            row["x raw SDK"] = row["msg/s"] / raws[0]["msg/s"]
    return rows


def keep_best(kept: list[dict[str, Any]], rows: Sequence[dict[str, Any]]) -> None:
    """Merge a round's rows into ``kept``: the faster run of each (path, implementation, N).

    What a run left on its queue is never hidden by a faster round: for workers the most
    left (and dead-lettered) of any round is kept, for publishing a count that is not N.
    """
    for row in rows:
        key = (row["path"], row["implementation"], row["N"])
        old = next((r for r in kept if (r["path"], r["implementation"], r["N"]) == key), None)
        if old is None:
            kept.append(dict(row))
            continue
        best = dict(row) if (row["msg/s"] or 0) > (old["msg/s"] or 0) else dict(old)
        counts = [r["on queue after"] for r in (old, row) if r["on queue after"] is not None]
        if counts and row["path"] == WORK:
            best["on queue after"] = max(counts)
            best["dead-lettered"] = max(r["dead-lettered"] or 0 for r in (old, row))
        elif counts:
            best["on queue after"] = next((c for c in counts if c != row["N"]), counts[0])
        kept[kept.index(old)] = best


async def peer_rows(
    emu: ServiceBusEmulator,
    n: int,
    *,
    publish_n: int | None = None,
    taskiq_publish_n: int | None = None,
    rounds: int = 1,
    peers: Sequence[str] = tuple(PEER_LABELS),
) -> list[dict[str, Any]]:
    """Raw SDK baselines and the peers' figures, measured on ``emu`` (already running).

    Args:
        emu: A running emulator; queues are created (uniquely named) and deleted.
        n: Messages for the worker-throughput path.
        publish_n: Messages for sequential publishing (default ``n``).
        taskiq_publish_n: taskiq's publish N, which pays a connection per message
            (default ``min(publish_n, 50)``); the raw SDK is measured at it too.
        rounds: Every measurement this many times, each round every implementation in
            turn, the fastest run of each kept (taskiq's publish only in the first
            round: at about a second per message, it is not noise that decides it).
        peers: Which peers to run (``taskiq``, ``faststream``).

    Returns:
        Rows, each a dict with the keys of :data:`COLUMNS` in that order (ready for
        ``format_table(list(rows[0]), [list(r.values()) for r in rows])``). A peer that
        is not installed, or failed, has a row whose "settings / note" says so.
    """
    publish_n = publish_n or n
    taskiq_publish_n = taskiq_publish_n or min(publish_n, TASKIQ_PUBLISH_CAP)
    publish_ns = {name: taskiq_publish_n if name == "taskiq" else publish_n for name in peers}
    # The raw SDK at each N a peer that can run publishes (and at publish_n in any case).
    sizes = {publish_n} | {publish_ns[name] for name in peers if peer_envs.problem(name) is None}
    kept: list[dict[str, Any]] = []
    for round_ in range(1, rounds + 1):
        tag = f"round {round_}/{rounds}: " if rounds > 1 else ""
        rows: list[dict[str, Any]] = []
        _progress(f"{tag}raw SDK receive + complete, prefetch {RAW_PREFETCH}, {n} messages")
        rows.append(await raw_receive_row(emu, n))
        for name in peers:
            _progress(f"{tag}{name} worker, {n} messages")
            rows.append(await peer_work_row(emu, name, n))
        for size in sorted(sizes, reverse=True):
            _progress(f"{tag}raw SDK sequential send, {size} messages")
            rows.append(await raw_send_row(emu, size))
        for name in peers:
            if name == "taskiq" and round_ > 1:
                continue
            _progress(f"{tag}{name} sequential publish, {publish_ns[name]} messages")
            rows.append(await peer_publish_row(emu, name, publish_ns[name]))
        keep_best(kept, rows)
    return _with_ratios(kept)


# -- the report -----------------------------------------------------------------------------------


def report(rows: Sequence[dict[str, Any]], caption: str) -> str:
    """The table, then what the peers' defaults are and what to read into the figures."""
    lines = [
        format_table(list(COLUMNS), [list(r.values()) for r in rows], caption),
        "",
        "worker: rate from the first message handled to the last (raw SDK: first batch",
        "  received to last complete).",
        "on queue after / dead-lettered: emu.counts of the queue once the run is over",
        "  (worker: 0 = every message settled; publish: N = all landed, nothing extra).",
        "publish: from creating the client/broker to the last publish returned (connection",
        "  open included); 'msg/s after 1st' leaves the first publish out.",
        "taskiq worker: taskiq.api.run_receiver_task in one process at taskiq's defaults",
        "  (max_async_tasks 100, max_prefetch 0, ack when_saved); `taskiq worker` would run",
        "  2 such processes. Its receiver iterates the SDK receiver with prefetch 0 (one",
        "  message per round trip) and registers every message with an AutoLockRenewer.",
        "taskiq publish: kick() opens and closes a ServiceBusClient and sender per message;",
        "  on the SDK that is ~0.5 s to open (it polls readiness every 50 ms, a frame at a",
        "  time) and ~0.5 s to close (it waits for its keep-alive task), about 1 s a message.",
        "Both peers take the emulator's connection string as it is (UseDevelopmentEmulator",
        "  included): each builds its client with ServiceBusClient.from_connection_string.",
        "faststream worker: @broker.subscriber defaults: prefetch_count 1, max_workers 1,",
        "  complete after the handler returns (REJECT_ON_ERROR), lock renewal up to 300 s,",
        "  the broker's INFO log line per message received and processed left on.",
    ]
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> tuple[list[dict[str, Any]], str]:
    """Start one process-mode emulator and measure everything on it."""
    n = args.n or (1000 if args.quick else 5000)
    cap = TASKIQ_PUBLISH_CAP_QUICK if args.quick else TASKIQ_PUBLISH_CAP
    taskiq_n = args.taskiq_publish_n or min(args.publish_n or n, cap)
    rounds = args.rounds or (1 if args.quick else 2)
    load_before = machine_load()
    started = time.perf_counter()
    with emulator() as emu:
        rows = await peer_rows(
            emu, n, publish_n=args.publish_n, taskiq_publish_n=taskiq_n, rounds=rounds
        )
    caption = (
        f"Peers beside the raw SDK on one process-mode emulator, best of {rounds} round(s) "
        f"(machine: {load_before} before, {machine_load()} after; "
        f"{time.perf_counter() - started:.0f} s in all)"
    )
    return rows, caption


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments, measure, print the table (and write JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="N=1,000, taskiq publish N=15")
    parser.add_argument("--n", type=int, default=0, help="messages per worker run (5,000)")
    parser.add_argument("--publish-n", type=int, default=0, help="sequential publishes (N)")
    parser.add_argument(
        "--taskiq-publish-n", type=int, default=0, help="taskiq's sequential publishes (50)"
    )
    parser.add_argument(
        "--rounds", type=int, default=0, help="runs of each measurement, best kept (2; 1 quick)"
    )
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    rows, caption = asyncio.run(run(args))
    print(report(rows, caption))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""How fast the Service Bus emulator serves one SDK client, and what it costs.

    uv run python -m bench.emulator_bench [--quick] [--messages N] [--hold N]

One async ``azure-servicebus`` client talks to a process-mode emulator on
loopback. For each phase the table shows messages per second and the CPU
seconds per message spent by the emulator process and by this (SDK) process:
the emulator must not be the bottleneck, i.e. its CPU per message stays below
the SDK's. Then the emulator's peak RSS while it holds N queued 1 KB messages,
in memory and with the SQLite file store.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient, ServiceBusSender

from boilermaker.emulator import QueueSettings, ServiceBusEmulator

KB = b"x" * 1024


@dataclass
class Phase:
    name: str
    messages: int
    seconds: float
    emulator_cpu: float
    client_cpu: float

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    @property
    def emulator_us(self) -> float:
        return self.emulator_cpu / self.messages * 1e6

    @property
    def client_us(self) -> float:
        return self.client_cpu / self.messages * 1e6


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


async def _measure(
    name: str,
    messages: int,
    emulator: psutil.Process,
    work: Callable[[], Awaitable[None]],
) -> Phase:
    me = psutil.Process(os.getpid())
    emu_before, me_before, started = _cpu(emulator), _cpu(me), time.perf_counter()
    await work()
    seconds = time.perf_counter() - started
    return Phase(name, messages, seconds, _cpu(emulator) - emu_before, _cpu(me) - me_before)


async def _send_batches(sender: ServiceBusSender, count: int, body: bytes) -> None:
    remaining = count
    while remaining:
        batch = await sender.create_message_batch()
        while remaining:
            try:
                batch.add_message(ServiceBusMessage(body))
            except ValueError:
                break
            remaining -= 1
        await sender.send_messages(batch)


async def throughput(emu: ServiceBusEmulator, n: int, batch_n: int) -> list[Phase]:
    """Single sends, batch sends and receive + complete, one client, one queue."""
    emulator = psutil.Process(emu.pid)
    phases: list[Phase] = []
    async with ServiceBusClient.from_connection_string(emu.connection_string) as client:
        async with client.get_queue_sender("bench") as sender:

            async def single() -> None:
                for _ in range(n):
                    await sender.send_messages(ServiceBusMessage(KB))

            phases.append(await _measure("single send (1 KB, awaited)", n, emulator, single))

            async def batched() -> None:
                await _send_batches(sender, batch_n, b"x" * 100)

            phases.append(
                await _measure("batch send (100 B, full batches)", batch_n, emulator, batched)
            )
        total = n + batch_n
        async with client.get_queue_receiver("bench", prefetch_count=100) as receiver:

            async def receive() -> None:
                done = 0
                while done < total:
                    batch = await receiver.receive_messages(max_message_count=100, max_wait_time=5)
                    if not batch:
                        raise RuntimeError(f"queue ran dry after {done} of {total}")
                    for message in batch:
                        await receiver.complete_message(message)
                    done += len(batch)

            phases.append(
                await _measure("receive + complete (prefetch 100)", total, emulator, receive)
            )
    return phases


class _PeakRss:
    """Largest RSS of a process seen by a sampling thread (VmHWM where Linux has it)."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        status = Path(f"/proc/{self.process.pid}/status")
        if status.exists():
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak = max(self.peak, int(line.split()[1]) * 1024)
        return self.peak


async def hold(messages: int, store: Path | None) -> tuple[int, int, float]:
    """Peak RSS of an emulator holding ``messages`` queued 1 KB messages: (idle, peak, secs)."""
    with ServiceBusEmulator(
        queues=[QueueSettings(name="hold")], store_path=store, mode="process"
    ) as emu:
        idle = psutil.Process(emu.pid).memory_info().rss
        sampler = _PeakRss(emu.pid)
        started = time.perf_counter()
        async with (
            ServiceBusClient.from_connection_string(emu.connection_string) as client,
            client.get_queue_sender("hold") as sender,
        ):
            await _send_batches(sender, messages, KB)
        seconds = time.perf_counter() - started
        held = emu.counts("hold").active
        peak = sampler.stop()
        if held != messages:
            raise RuntimeError(f"emulator holds {held} messages, expected {messages}")
        return idle, peak, seconds


def _table(phases: list[Phase], memory: list[tuple[str, int, int, float]], hold_n: int) -> str:
    lines = [
        "Service Bus emulator: one azure-servicebus async client, emulator in a child process",
        f"{'phase':<36}{'msgs':>8}{'msg/s':>10}{'emu CPU/msg':>14}{'SDK CPU/msg':>14}  verdict",
    ]
    for p in phases:
        verdict = "ok" if p.emulator_us < p.client_us else "EMULATOR BOUND"
        lines.append(
            f"{p.name:<36}{p.messages:>8}{p.rate:>10.0f}{p.emulator_us:>11.0f} us"
            f"{p.client_us:>11.0f} us  {verdict}"
        )
    lines.append("")
    lines.append(f"{'memory holding ' + format(hold_n, ',') + ' x 1 KB':<36}"
                 f"{'idle RSS':>12}{'peak RSS':>12}{'load s':>9}  verdict")  # fmt: skip
    for label, idle, peak, seconds in memory:
        limit_ok = peak < 400 * 2**20 if label == "memory" else True
        lines.append(
            f"{label:<36}{idle / 2**20:>9.0f} MB{peak / 2**20:>9.0f} MB{seconds:>9.1f}  "
            f"{'ok' if limit_ok else 'OVER 400 MB'}"
        )
    load = os.getloadavg()[0]
    lines.append(f"(load {load:.2f} on {os.cpu_count()} cores)")
    return "\n".join(lines)


async def main(n: int, batch_n: int, hold_n: int) -> None:
    with ServiceBusEmulator(queues=[QueueSettings(name="bench")], mode="process") as emu:
        phases = await throughput(emu, n, batch_n)
    memory = []
    idle, peak, seconds = await hold(hold_n, None)
    memory.append(("memory", idle, peak, seconds))
    with tempfile.TemporaryDirectory() as tmp:
        idle, peak, seconds = await hold(hold_n, Path(tmp) / "bench.sqlite")
    memory.append(("file store (SQLite)", idle, peak, seconds))
    print(_table(phases, memory, hold_n))


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run (seconds, not minutes)")
    parser.add_argument("--messages", type=int, default=2000, help="single sends (default 2000)")
    parser.add_argument("--batch", type=int, default=8000, help="batched sends (default 8000)")
    parser.add_argument("--hold", type=int, default=100_000, help="messages to hold (100,000)")
    args = parser.parse_args()
    if args.quick:
        args.messages, args.batch, args.hold = 300, 2000, 10_000
    asyncio.run(main(args.messages, args.batch, args.hold))


if __name__ == "__main__":
    cli()

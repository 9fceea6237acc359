"""Emulator abuse: hostile and faulty clients beside a normal SDK client.

Each scenario runs its abuse (raw sockets, in a worker thread) while an
``azure.servicebus.aio`` sender and receiver keep a steady send/receive
cycle going against the same emulator, and measures the emulator process's
CPU time over the abuse window: the abuse must neither stall the SDK client
nor make the emulator spin. The CPU bound (a fraction of wall time) is a
ceiling on busy-looping, not a speed target.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import resource
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psutil
import pytest
from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient
from azure.servicebus.amqp import AmqpMessageBodyType
from azure.servicebus.exceptions import ServiceBusConnectionError
from proton import Connection, Message, Transport
from proton.utils import BlockingConnection

from boilermaker.emulator import (
    DEFAULT_KEY,
    DEFAULT_KEY_NAME,
    ConnectionStats,
    QueueSettings,
    ServiceBusEmulator,
)

SASL_HEADER = b"AMQP\x03\x01\x00\x00"
AMQP_HEADER = b"AMQP\x00\x01\x00\x00"
#: What an SDK heartbeat is on the wire: a frame with no body.
EMPTY_FRAME = struct.pack(">IBBH", 8, 2, 0, 0)
#: The share of wall time the emulator may spend on CPU during an abuse window.
CPU_CEILING = 0.30
#: Bound on how long a connection the emulator should close may stay open.
CLOSE_WITHIN = 5.0


def frame_header(size: int, frame_type: int = 0) -> bytes:
    return struct.pack(">IBBH", size, 2, frame_type, 0)


# -- a peer built on proton's client engine, driven by hand -----------------------------


class EnginePeer:
    """A raw socket plus proton's client engine: sends the AMQP header and ``open``
    (no SASL layer, which the emulator treats as anonymous), then only what the
    test writes. Server bytes are fed to the engine, which decodes them."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=CLOSE_WITHIN)
        self.transport = Transport()
        self.connection = Connection()
        self.connection.container = "abuse-test"
        self.transport.bind(self.connection)
        self.connection.open()
        self._write_engine_output()

    def _write_engine_output(self) -> None:
        pending = self.transport.pending()
        if pending > 0:
            self.sock.sendall(bytes(self.transport.peek(pending)))
            self.transport.pop(pending)

    def read_until_open(self) -> None:
        """Read until the server's ``open`` has arrived."""
        while not self.connection.remote_container:
            data = self.sock.recv(65536)
            assert data, "the emulator closed the connection before its open"
            self.transport.push(data)

    def read_until_closed(self) -> bytes:
        """Read (feeding the engine) until the emulator closes the socket; all bytes read."""
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while data := self.sock.recv(65536):
                received += data
                if self.transport.capacity() > 0:
                    self.transport.push(data)
        return received

    def close(self) -> None:
        self.sock.close()


def wait_closed(sock: socket.socket, within: float = CLOSE_WITHIN) -> float:
    """Seconds until the emulator closes ``sock`` (EOF or reset); fails after ``within``."""
    started = time.monotonic()
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the emulator left a connection open for more than {within} s")
    return time.monotonic() - started


async def settled_stats(
    emulator: ServiceBusEmulator, done: Callable[[ConnectionStats], bool]
) -> ConnectionStats:
    """The emulator's connection stats once ``done`` holds (the SDK closes its sockets
    asynchronously); the last stats seen if it does not within :data:`CLOSE_WITHIN`."""
    deadline = time.monotonic() + CLOSE_WITHIN
    stats = emulator.connection_stats()
    while not done(stats) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        stats = emulator.connection_stats()
    return stats


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=CLOSE_WITHIN)


# -- a normal SDK client, and the emulator's CPU, during the abuse --------------------


@dataclass
class AbuseReport:
    rounds: int
    wall: float
    cpu: float

    @property
    def cpu_share(self) -> float:
        return self.cpu / self.wall


async def steady_traffic(
    connection_string: str, queue_name: str, ready: asyncio.Event, stop: asyncio.Event
) -> int:
    """Send a message, receive that very message, complete it; again until ``stop``.

    Paced (20 ms between rounds) so that the emulator's CPU measures the abuse,
    not the traffic. Returns the rounds done; any failure fails the test.
    """
    rounds = 0
    async with (
        ServiceBusClient.from_connection_string(connection_string) as client,
        client.get_queue_sender(queue_name, keep_alive=0) as sender,
        client.get_queue_receiver(queue_name, keep_alive=0) as receiver,
    ):
        while True:
            body = f"steady-{rounds}"
            await sender.send_messages(ServiceBusMessage(body))
            received = await receiver.receive_messages(max_message_count=1, max_wait_time=10)
            assert [str(m) for m in received] == [body]
            await receiver.complete_message(received[0])
            rounds += 1
            ready.set()
            if stop.is_set():
                return rounds
            await asyncio.sleep(0.02)


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


async def run_abuse(
    connection_string: str, queue_name: str, pid: int, abuse: Callable[[], Any]
) -> AbuseReport:
    """Run ``abuse`` in a thread while the SDK client keeps its cycle going."""
    ready, stop = asyncio.Event(), asyncio.Event()
    traffic = asyncio.create_task(steady_traffic(connection_string, queue_name, ready, stop))
    try:
        await asyncio.wait_for(ready.wait(), 30)
        cpu_before, started = cpu_seconds(pid), time.monotonic()
        await asyncio.to_thread(abuse)
        wall, cpu = time.monotonic() - started, cpu_seconds(pid) - cpu_before
    finally:
        stop.set()
        rounds = await asyncio.wait_for(traffic, 30)
    return AbuseReport(rounds=rounds, wall=wall, cpu=cpu)


def assert_calm(report: AbuseReport) -> None:
    print(
        f"abuse window {report.wall:.2f} s, emulator CPU {report.cpu:.3f} s"
        f" ({report.cpu_share:.1%}), SDK rounds {report.rounds}"
    )
    assert report.rounds >= 2
    assert report.cpu_share < CPU_CEILING


@pytest.fixture
def start_emulator() -> Iterator[Callable[..., ServiceBusEmulator]]:
    """Start process-mode emulators with the given limits and a ``steady`` queue; stopped after."""
    started: list[ServiceBusEmulator] = []

    def start(**limits: Any) -> ServiceBusEmulator:
        emulator = ServiceBusEmulator(
            mode="process", queues=[QueueSettings(name="steady")], **limits
        ).start()
        started.append(emulator)
        return emulator

    yield start
    for emulator in started:
        emulator.stop()


# -- garbage ---------------------------------------------------------------------------


#: How long the garbage scenarios keep at it, in seconds.
ABUSE_WINDOW = 2.0


def garbage_connections(port: int, seconds: float) -> list[float]:
    """Rounds of five kinds of bad input, each on its own socket, for ``seconds``;
    returns how long each socket stayed open once its input was sent."""
    closed_after: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for payload in (
            b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
            os.urandom(512),
            # SASL header, then a frame announcing 4 GB, then 256 KB of filler.
            SASL_HEADER + frame_header(0xFFFFFF00, 1) + bytes(262_144),
            # AMQP header, then a frame beyond the offered 1 MB max-frame-size.
            AMQP_HEADER + frame_header(0x7FFFFFFF) + bytes(262_144),
            AMQP_HEADER + frame_header(1_048_577),
        ):
            sock = connect(port)
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                sock.sendall(payload)
            closed_after.append(wait_closed(sock))
            sock.close()
    return closed_after


async def test_garbage_and_huge_frames_close_only_their_connection(
    start_emulator: Callable[..., ServiceBusEmulator],
) -> None:
    emulator = start_emulator()
    rss_before = psutil.Process(emulator.pid).memory_info().rss
    closed_after: list[float] = []

    def abuse() -> None:
        closed_after.extend(garbage_connections(emulator.port, ABUSE_WINDOW))

    report = await run_abuse(emulator.connection_string, "steady", emulator.pid, abuse)
    assert_calm(report)
    print(f"{len(closed_after)} garbage connections, longest open {max(closed_after):.3f} s")
    assert len(closed_after) >= 5
    growth = psutil.Process(emulator.pid).memory_info().rss - rss_before
    print(f"emulator RSS growth {growth / 1e6:.1f} MB")
    assert growth < 64_000_000  # nothing announced by a frame header was allocated
    stats = await settled_stats(emulator, lambda stats: stats.open == 0)
    assert stats.open == 0
    assert stats.accepted >= len(closed_after)


async def test_huge_frame_after_open_is_a_framing_error_for_that_connection_only(
    start_emulator: Callable[..., ServiceBusEmulator],
) -> None:
    emulator = start_emulator()
    closing: list[bytes] = []

    def abuse() -> None:
        deadline = time.monotonic() + ABUSE_WINDOW
        while time.monotonic() < deadline:
            peer = EnginePeer(emulator.port)
            peer.read_until_open()
            peer.sock.sendall(frame_header(0x7FFFFFF0))
            peer.read_until_closed()
            closing.append(str(peer.transport.condition or peer.connection.remote_condition))
            peer.close()

    report = await run_abuse(emulator.connection_string, "steady", emulator.pid, abuse)
    assert_calm(report)
    assert len(closing) >= 5
    assert all("framing-error" in text for text in closing), closing


# -- idle and half-open sockets ---------------------------------------------------------


@pytest.mark.slow
async def test_200_idle_sockets_are_closed_without_disturbing_an_sdk_client(
    start_emulator: Callable[..., ServiceBusEmulator],
) -> None:
    emulator = start_emulator(handshake_timeout=2.0)
    openings = (b"", SASL_HEADER, AMQP_HEADER, SASL_HEADER[:5])  # silent, or a header and stop
    sockets: list[socket.socket] = []

    def abuse() -> None:
        for n in range(200):
            sock = connect(emulator.port)
            if openings[n % 4]:
                sock.sendall(openings[n % 4])
            sockets.append(sock)
        for sock in sockets:
            wait_closed(sock, within=2.0 + CLOSE_WITHIN)

    try:
        report = await run_abuse(emulator.connection_string, "steady", emulator.pid, abuse)
    finally:
        for sock in sockets:
            sock.close()
    assert_calm(report)
    stats = emulator.connection_stats()
    assert stats.handshake_timeouts == 200
    assert stats.idle_timeouts == 0


async def test_handshake_timeout_closes_silent_and_half_open_sockets(
    start_emulator: Callable[..., ServiceBusEmulator],
) -> None:
    emulator = start_emulator(handshake_timeout=0.5)
    openings = [b"", SASL_HEADER, AMQP_HEADER, b"AMQ"]
    connected = time.monotonic()
    sockets = [connect(emulator.port) for _ in openings]
    # A client that opens in time is served past the handshake time-out.
    peer = EnginePeer(emulator.port)
    try:
        for sock, opening in zip(sockets, openings, strict=True):
            sock.sendall(opening)
        peer.read_until_open()
        for sock in sockets:
            wait_closed(sock)
            assert time.monotonic() - connected >= 0.45  # not before the time-out
        peer.sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            peer.sock.recv(1)
    finally:
        for sock in sockets:
            sock.close()
        peer.close()
    assert emulator.connection_stats().handshake_timeouts == 4


async def test_idle_timeout_is_advertised_and_closes_only_silent_connections(
    start_emulator: Callable[..., ServiceBusEmulator],
) -> None:
    emulator = start_emulator(idle_timeout=2.0)
    silent, beating = EnginePeer(emulator.port), EnginePeer(emulator.port)
    silent_since = time.monotonic()  # its open was the last thing it sent
    stop_beating = threading.Event()

    def heartbeats() -> None:
        while not stop_beating.wait(0.25):
            beating.sock.sendall(EMPTY_FRAME)

    beat = asyncio.create_task(asyncio.to_thread(heartbeats))
    try:
        for peer in (silent, beating):
            peer.read_until_open()
            # Half the time-out is advertised, so a peer beating at that rate is never cut.
            assert peer.transport.remote_idle_timeout == 1.0
        async with (
            ServiceBusClient.from_connection_string(emulator.connection_string) as client,
            client.get_queue_receiver("steady", keep_alive=0) as receiver,
        ):
            silent_read = asyncio.create_task(asyncio.to_thread(silent.read_until_closed))
            # The SDK receiver waits on an empty queue for 4 s, sending only heartbeats.
            assert await receiver.receive_messages(max_message_count=1, max_wait_time=4) == []
            received = await asyncio.wait_for(silent_read, CLOSE_WITHIN)
            assert time.monotonic() - silent_since >= 1.95
            # The engine decoded the emulator's close: the condition AMQP has for it.
            assert received
            assert silent.connection.remote_condition is not None
            assert silent.connection.remote_condition.name == "amqp:resource-limit-exceeded"
            # Only the silent peer was cut: the receiver did not have to reconnect
            # (two peers and the receiver accepted), and the beating peer is still served.
            stats = emulator.connection_stats()
            assert (stats.idle_timeouts, stats.accepted) == (1, 3)
            beating.sock.settimeout(0.1)
            with pytest.raises(TimeoutError):
                beating.sock.recv(1)
            async with client.get_queue_sender("steady", keep_alive=0) as sender:
                await sender.send_messages(ServiceBusMessage("after the wait"))
            [after] = await receiver.receive_messages(max_message_count=1, max_wait_time=5)
            assert str(after) == "after the wait"
            await receiver.complete_message(after)
    finally:
        stop_beating.set()
        await beat
        silent.close()
        beating.close()


# -- the connection cap -------------------------------------------------------------------


# The SDK leaves its socket unclosed when a connection fails during open (SDK-side leak).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_connection_cap_refuses_with_an_amqp_error_the_sdk_reports(
    start_emulator: Callable[..., ServiceBusEmulator],
) -> None:
    emulator = start_emulator(max_connections=3)
    holder = EnginePeer(emulator.port)  # one of the three
    holder.read_until_open()
    async with (
        ServiceBusClient.from_connection_string(emulator.connection_string) as client,
        client.get_queue_sender("steady", keep_alive=0) as sender,
        client.get_queue_receiver("steady", keep_alive=0) as receiver,
    ):
        await sender.send_messages(ServiceBusMessage("within the cap"))
        async with ServiceBusClient.from_connection_string(
            emulator.connection_string, retry_total=0
        ) as refused_client:
            with pytest.raises(ServiceBusConnectionError) as refused:
                async with refused_client.get_queue_sender("steady") as extra:
                    await extra.send_messages(ServiceBusMessage("over the cap"))
        text = str(refused.value)
        assert "amqp:resource-limit-exceeded" in text
        assert "maximum of 3 connections (max_connections=3)" in text
        # A raw peer over the cap is told the same in the close.
        over = EnginePeer(emulator.port)
        over.read_until_closed()
        assert over.connection.remote_condition is not None
        assert over.connection.remote_condition.name == "amqp:resource-limit-exceeded"
        over.close()
        # The connections within the cap are untouched.
        [message] = await receiver.receive_messages(max_message_count=1, max_wait_time=5)
        assert str(message) == "within the cap"
        await receiver.complete_message(message)
        stats = emulator.connection_stats()
        assert stats.refused == 2
        # A freed place is taken by the next client.
        holder.close()
        await asyncio.sleep(0.3)
        async with (
            ServiceBusClient.from_connection_string(
                emulator.connection_string, retry_total=0
            ) as late_client,
            late_client.get_queue_sender("steady", keep_alive=0) as late,
        ):
            await late.send_messages(ServiceBusMessage("after a place was freed"))
    assert emulator.counts("steady").active == 1


# -- descriptor exhaustion -------------------------------------------------------------------


@dataclass
class LimitedEmulator:
    process: subprocess.Popen[bytes]
    connection_string: str
    port: int
    stderr_lines: queue.Queue[str]


@contextlib.contextmanager
def emulator_with_few_descriptors(limit: int, *args: str) -> Iterator[LimitedEmulator]:
    """The ``boilermaker-emulator`` command in a child whose RLIMIT_NOFILE is ``limit``."""

    def lower_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    process = subprocess.Popen(
        [sys.executable, "-m", "boilermaker.emulator", "--port", "0", "--queue", "steady", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lower_limit,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read_stderr() -> None:
        assert process.stderr is not None
        for raw in process.stderr:
            lines.put(raw.decode("utf-8", "replace"))

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        assert process.stdout is not None
        connection_string = process.stdout.readline().decode().strip()
        assert connection_string.startswith("Endpoint=sb://"), connection_string
        port = int(connection_string.split(";", 1)[0].rsplit(":", 1)[1])
        yield LimitedEmulator(process, connection_string, port, lines)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        reader.join(5)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def drain(lines: queue.Queue[str]) -> list[str]:
    out: list[str] = []
    with contextlib.suppress(queue.Empty):
        while True:
            out.append(lines.get_nowait())
    return out


@pytest.mark.slow
async def test_descriptor_exhaustion_pauses_accepting_without_spinning() -> None:
    with emulator_with_few_descriptors(48, "--handshake-timeout", "60") as emulator:
        sockets: list[socket.socket] = []
        log: list[str] = []

        def abuse() -> None:
            # Connect until the emulator reports it cannot accept...
            deadline = time.monotonic() + 20
            while not any("accept failed" in line for line in log):
                assert time.monotonic() < deadline, "the emulator never ran out of descriptors"
                sockets.append(connect(emulator.port))
                time.sleep(0.01)
                log.extend(drain(emulator.stderr_lines))
            # ...then leave connections waiting in its backlog (the listener stays
            # readable while they wait: what made the accept loop spin) for 3 s.
            sockets.extend(connect(emulator.port) for _ in range(20))
            time.sleep(3.0)
            log.extend(drain(emulator.stderr_lines))

        try:
            report = await run_abuse(
                emulator.connection_string, "steady", emulator.process.pid, abuse
            )
        finally:
            for sock in sockets:
                sock.close()
        assert_calm(report)
        failures = [line for line in log if "accept failed" in line]
        print(f"{len(sockets)} sockets; accept warnings: {failures}")
        assert "Too many open files" in failures[0]
        assert len(failures) <= 2  # one line per 5 s, however many accepts failed
        # With descriptors free again, new clients are served.
        async with (
            ServiceBusClient.from_connection_string(emulator.connection_string) as client,
            client.get_queue_sender("steady", keep_alive=0) as sender,
        ):
            await sender.send_messages(ServiceBusMessage("after exhaustion"))
        await asyncio.sleep(0.2)
        log.extend(drain(emulator.stderr_lines))
        assert any("accepting connections again" in line for line in log)


# -- message bodies that are not data sections ----------------------------------------------


@pytest.fixture
async def value_and_sequence_sent(
    servicebus_emulator: ServiceBusEmulator, servicebus_queue: str
) -> str:
    """A queue holding an amqp-value int, an amqp-sequence and an amqp-value list (from proton)."""

    def send() -> None:
        connection = BlockingConnection(
            f"amqp://127.0.0.1:{servicebus_emulator.port}",
            user=DEFAULT_KEY_NAME,
            password=DEFAULT_KEY,
            allowed_mechs="PLAIN",
            allow_insecure_mechs=True,
        )
        try:
            sender = connection.create_sender(servicebus_queue)
            sender.send(Message(body=42))
            sequence = Message(body=[1, "two", 3.5])
            sequence.inferred = True  # a list body as an amqp-sequence section
            sender.send(sequence)
            sender.send(Message(body=[7, 8]))
        finally:
            connection.close()

    await asyncio.to_thread(send)
    return servicebus_queue


async def test_value_and_sequence_bodies_are_stored_and_delivered_as_sent(
    servicebus_emulator: ServiceBusEmulator, value_and_sequence_sent: str
) -> None:
    assert servicebus_emulator.counts(value_and_sequence_sent).active == 3
    async with (
        ServiceBusClient.from_connection_string(servicebus_emulator.connection_string) as client,
        client.get_queue_receiver(value_and_sequence_sent, keep_alive=0) as receiver,
    ):
        messages = []
        while len(messages) < 3:
            batch = await receiver.receive_messages(max_message_count=3, max_wait_time=5)
            assert batch
            messages.extend(batch)
        value, sequence, listed = messages
        assert value.body_type == AmqpMessageBodyType.VALUE
        assert value.body == 42
        assert sequence.body_type == AmqpMessageBodyType.SEQUENCE
        assert list(sequence.body) == [[1, b"two", 3.5]]  # the SDK reads strings as bytes
        assert listed.body_type == AmqpMessageBodyType.VALUE
        assert listed.body == [7, 8]
        for message in messages:
            await receiver.complete_message(message)
    assert servicebus_emulator.counts(value_and_sequence_sent).active == 0


def test_connection_stats_counts_nothing_before_any_client(
    start_emulator: Callable[..., ServiceBusEmulator],
) -> None:
    emulator = start_emulator()
    assert emulator.connection_stats() == ConnectionStats(0, 0, 0, 0, 0, 0)

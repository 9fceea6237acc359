"""The Python API: start a local Service Bus namespace in a thread or a subprocess.

>>> from boilermaker.emulator import ServiceBusEmulator, QueueSettings
>>> with ServiceBusEmulator(queues=[QueueSettings("tasks")]) as emu:   # doctest: +SKIP
...     client = ServiceBusClient.from_connection_string(emu.connection_string)

``mode="thread"`` runs the AMQP server on a background thread of this
process; ``mode="process"`` runs it in a child process (``python -m
boilermaker.emulator``) driven over a loopback control channel, so that the
emulator does not compete for the GIL with the code under test. Both modes
offer the same methods.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from .amqp_server import AmqpServer, ConnectionStats
from .config import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_KEY,
    DEFAULT_KEY_NAME,
    DEFAULT_MAX_CONNECTIONS,
    ConnectionLimits,
    QueueSettings,
)
from .control import ControlClient, ControlError
from .journal import Journal, MemoryJournal
from .store import Namespace, QueueCounts, QueueNotFound

__all__ = ["EmulatorError", "ServiceBusEmulator", "connection_string_for", "is_loopback"]

logger = logging.getLogger("boilermaker.emulator")

Mode = Literal["thread", "process"]


class EmulatorError(RuntimeError):
    """The emulator could not start, or was used while not running."""


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def connection_string_for(host: str, port: int, key_name: str, key: str) -> str:
    """The connection string a client uses to reach an emulator on ``host:port``."""
    endpoint_host = "localhost" if is_loopback(host) or host in ("0.0.0.0", "::") else host
    return (
        f"Endpoint=sb://{endpoint_host}:{port};SharedAccessKeyName={key_name};"
        f"SharedAccessKey={key};UseDevelopmentEmulator=true"
    )


class _InThread:
    """The server on a background thread of this process."""

    def __init__(self, emulator: ServiceBusEmulator) -> None:
        self.emulator = emulator
        journal: Journal = MemoryJournal()
        if emulator.store_path is not None:
            from .sqlite_store import SqliteJournal

            journal = SqliteJournal(emulator.store_path)
        self.namespace = Namespace(journal, auto_create=emulator.auto_create_queues)
        self.namespace.restore()
        for settings in emulator.queues:
            self.namespace.create_queue(settings)
        self.server = AmqpServer(
            self.namespace,
            host=emulator.host,
            port=emulator.requested_port,
            key_name=emulator.key_name,
            key=emulator.key,
            accept_any_token=emulator.accept_any_token,
            limits=emulator.limits,
        )
        self.thread = threading.Thread(
            target=self.server.run, name="servicebus-emulator", daemon=True
        )
        self.thread.start()
        self.port = self.server.port
        self.pid = os.getpid()

    def create_queue(self, settings: QueueSettings) -> None:
        def create() -> None:
            self.namespace.create_queue(settings)

        self.server.call(create)

    def delete_queue(self, name: str) -> None:
        self.server.call(lambda: self.server.delete_queue(name))

    def purge_queue(self, name: str) -> None:
        self.server.call(lambda: self.namespace.queue(name, create=False).purge())

    def counts(self, name: str) -> QueueCounts:
        return self.server.call(lambda: self.namespace.queue(name, create=False).counts())

    def queue_names(self) -> list[str]:
        return self.server.call(lambda: sorted(q.name for q in self.namespace.queues.values()))

    def drop_connections(self) -> int:
        return self.server.call(self.server.drop_connections)

    def connection_stats(self) -> ConnectionStats:
        return self.server.call(self.server.stats)

    def refuse_connections(self, seconds: float) -> None:
        self.server.call(lambda: self.server.refuse_for(seconds))

    def delay_frames(self, seconds: float) -> None:
        def set_delay() -> None:
            self.server.frame_delay = max(0.0, seconds)

        self.server.call(set_delay)

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(15)
        if self.thread.is_alive():
            logger.warning("emulator thread did not stop within 15 s")


class _InProcess:
    """The server in a child process, driven over the control channel."""

    def __init__(self, emulator: ServiceBusEmulator) -> None:
        args = [
            sys.executable,
            "-m",
            "boilermaker.emulator",
            "--host",
            emulator.host,
            "--port",
            str(emulator.requested_port),
            "--key-name",
            emulator.key_name,
            "--key",
            emulator.key,
            "--control-port",
            "0",
            "--queues-json",
            json.dumps([q.to_dict() for q in emulator.queues]),
            # The child logs at the level this process's emulator logger is set to.
            "--log-level",
            logging.getLevelName(logger.getEffectiveLevel()),
            "--handshake-timeout",
            repr(emulator.limits.handshake_timeout),
            "--idle-timeout",
            repr(emulator.limits.idle_timeout or 0),
            "--max-connections",
            str(emulator.limits.max_connections),
        ]
        if emulator.store_path is not None:
            args += ["--store", str(emulator.store_path)]
        if emulator.accept_any_token:
            args.append("--accept-any-token")
        if not emulator.auto_create_queues:
            args.append("--no-auto-create")
        if not is_loopback(emulator.host):
            args.append("--allow-remote")
        self.process = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None
        )
        self.pid = self.process.pid
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(
            target=self._read_stdout, name="emulator-stdout", daemon=True
        )
        self._reader.start()
        control_port = self.port = 0
        try:
            while not (control_port and self.port):
                line = self._lines.get(timeout=emulator.startup_timeout)
                if line is None:
                    raise EmulatorError("the emulator process exited during start-up")
                if line.startswith("control-port="):
                    control_port = int(line.split("=", 1)[1])
                elif line.startswith("Endpoint=sb://"):
                    self.port = int(line.split(";", 1)[0].rsplit(":", 1)[1])
            self.control = ControlClient(control_port)
        except BaseException as exc:
            self._terminate()
            if isinstance(exc, queue.Empty):
                raise EmulatorError("the emulator process did not start in time") from None
            raise

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self._lines.put(raw.decode("utf-8", "replace").strip())
        self._lines.put(None)

    def _request(self, op: str, *args: Any) -> Any:
        try:
            return self.control.request(op, *args)
        except ControlError as exc:
            if exc.kind in ("KeyError", "QueueNotFound"):
                raise QueueNotFound(str(exc)) from None
            if exc.kind in ("ConfigError", "ValueError"):
                raise ValueError(str(exc)) from None
            raise

    def create_queue(self, settings: QueueSettings) -> None:
        self._request("create_queue", settings.to_dict())

    def delete_queue(self, name: str) -> None:
        self._request("delete_queue", name)

    def purge_queue(self, name: str) -> None:
        self._request("purge_queue", name)

    def counts(self, name: str) -> QueueCounts:
        return QueueCounts(**self._request("counts", name))

    def queue_names(self) -> list[str]:
        names: list[str] = self._request("queue_names")
        return names

    def drop_connections(self) -> int:
        dropped: int = self._request("drop_connections")
        return dropped

    def connection_stats(self) -> ConnectionStats:
        return ConnectionStats(**self._request("connection_stats"))

    def refuse_connections(self, seconds: float) -> None:
        self._request("refuse_connections", seconds)

    def delay_frames(self, seconds: float) -> None:
        self._request("delay_frames", seconds)

    def stop(self) -> None:
        try:
            self.control.request("stop")
        except (ControlError, OSError):
            pass
        self.control.close()
        self._terminate()

    def _terminate(self) -> None:
        process = self.process
        if process.stdin is not None:
            try:
                process.stdin.close()
            except OSError:
                pass
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        self._reader.join(5)
        if process.stdout is not None:
            process.stdout.close()


class ServiceBusEmulator:
    """A local Azure Service Bus namespace that the real ``azure-servicebus`` SDK talks to.

    Args:
        host: Address to bind; loopback only unless ``allow_remote``.
        port: TCP port; 0 picks a free one (read it back from :attr:`port`).
        queues: Queues to create at start.
        auto_create_queues: Create a queue with default settings when a
            client first uses an unknown name.
        store_path: SQLite file that keeps messages across restarts; in
            memory when ``None``.
        accept_any_token: Skip SAS verification (any put-token succeeds).
        key_name: Shared access key name tokens must be signed for.
        key: Shared access key tokens are verified against.
        mode: ``"thread"`` (background thread) or ``"process"`` (child process).
        allow_remote: Permit binding a non-loopback address.
        startup_timeout: Seconds to wait for a process-mode emulator to start.
        handshake_timeout: Seconds a new socket has to send the protocol
            headers, finish SASL and send its ``open``; it is closed otherwise.
        idle_timeout: Seconds without a frame (empty heartbeat frames count)
            after which a connection is closed; half of it is advertised to
            clients in the ``open``. ``None`` turns it off.
        max_connections: Connections served at once; one more has its
            ``open`` answered by a ``close`` with ``amqp:resource-limit-exceeded``.

    Raises:
        ValueError: For an unusable setting (a bad limit raises
            :class:`~boilermaker.emulator.config.ConfigError`, a ``ValueError``).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        queues: list[QueueSettings] | tuple[QueueSettings, ...] = (),
        auto_create_queues: bool = True,
        store_path: str | os.PathLike[str] | None = None,
        accept_any_token: bool = False,
        key_name: str = DEFAULT_KEY_NAME,
        key: str = DEFAULT_KEY,
        mode: Mode = "thread",
        *,
        allow_remote: bool = False,
        startup_timeout: float = 30.0,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        if mode not in ("thread", "process"):
            raise ValueError(f"mode must be 'thread' or 'process', not {mode!r}")
        if not is_loopback(host) and not allow_remote:
            raise ValueError(
                f"refusing to bind non-loopback address {host!r}; pass allow_remote=True to expose"
                " the emulator (it has no TLS)"
            )
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in 0..65535, not {port}")
        self.host = host
        self.requested_port = port
        self.queues = list(queues)
        self.auto_create_queues = auto_create_queues
        self.store_path = None if store_path is None else Path(store_path)
        self.accept_any_token = accept_any_token
        self.key_name = key_name
        self.key = key
        self.mode: Mode = mode
        self.startup_timeout = startup_timeout
        self.limits = ConnectionLimits(
            handshake_timeout=handshake_timeout,
            idle_timeout=idle_timeout,
            max_connections=max_connections,
        )
        self._backend: _InThread | _InProcess | None = None

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> ServiceBusEmulator:
        """Start serving; returns ``self``. Raises :class:`EmulatorError` if already running."""
        if self._backend is not None:
            raise EmulatorError("the emulator is already running")
        self._backend = _InThread(self) if self.mode == "thread" else _InProcess(self)
        logger.info(
            "Service Bus emulator (%s mode) listening on %s:%d", self.mode, self.host, self.port
        )
        return self

    def stop(self) -> None:
        """Stop serving and close every connection; a no-op when not running."""
        backend, self._backend = self._backend, None
        if backend is not None:
            backend.stop()

    def __enter__(self) -> ServiceBusEmulator:
        return self.start() if self._backend is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._backend is not None

    def _running(self) -> _InThread | _InProcess:
        if self._backend is None:
            raise EmulatorError("the emulator is not running; call start() first")
        return self._backend

    # -- connection details -----------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port the emulator listens on."""
        return self._running().port

    @property
    def pid(self) -> int:
        """Process id of the process serving AMQP (this one in thread mode)."""
        return self._running().pid

    @property
    def connection_string(self) -> str:
        """``Endpoint=sb://localhost:PORT;SharedAccessKeyName=...;...;UseDevelopmentEmulator=true``."""
        return connection_string_for(self.host, self.port, self.key_name, self.key)

    # -- queues -----------------------------------------------------------------------------

    def create_queue(self, settings: QueueSettings) -> None:
        """Create a queue (or change the settings of an existing one)."""
        self._running().create_queue(settings)

    def delete_queue(self, name: str) -> None:
        """Delete a queue and its messages; raises ``QueueNotFound`` if it does not exist."""
        self._running().delete_queue(name)

    def purge_queue(self, name: str) -> None:
        """Drop every message of a queue and its dead-letter sub-queue."""
        self._running().purge_queue(name)

    def counts(self, name: str) -> QueueCounts:
        """Messages of a queue by state; raises ``QueueNotFound`` if it does not exist."""
        return self._running().counts(name)

    def queue_names(self) -> list[str]:
        """Names of all queues, sorted."""
        return self._running().queue_names()

    def connection_stats(self) -> ConnectionStats:
        """Connections open now, and what was accepted, refused and timed out since start."""
        return self._running().connection_stats()

    # -- fault injection -------------------------------------------------------------------

    def drop_connections(self) -> int:
        """Cut every client connection at the socket (no AMQP close); returns how many."""
        return self._running().drop_connections()

    def refuse_connections(self, seconds: float) -> None:
        """Reset new TCP connections for ``seconds`` (existing ones are untouched)."""
        self._running().refuse_connections(seconds)

    def delay_frames(self, seconds: float) -> None:
        """Handle every incoming frame ``seconds`` late (0 turns the delay off)."""
        self._running().delay_frames(seconds)

"""``boilermaker-emulator`` / ``python -m boilermaker.emulator``: run the emulator.

Prints the connection string on a line of its own once it listens, and
stops cleanly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from .config import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_KEY,
    DEFAULT_KEY_NAME,
    DEFAULT_MAX_CONNECTIONS,
    ConfigError,
    QueueSettings,
    load_config_file,
)
from .control import ControlServer
from .server import EmulatorError, ServiceBusEmulator, is_loopback

logger = logging.getLogger("boilermaker.emulator")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="boilermaker-emulator",
        description="Run a local Azure Service Bus namespace (AMQP 1.0, no TLS) on loopback.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=5672, help="TCP port (default 5672; 0 picks a free port)"
    )
    parser.add_argument(
        "--queue",
        action="append",
        default=[],
        metavar="NAME",
        help="create a queue with default settings (repeatable)",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="queues and settings in the JSON format of Microsoft's Service Bus emulator",
    )
    parser.add_argument("--store", metavar="PATH", help="keep messages in this SQLite file")
    parser.add_argument("--accept-any-token", action="store_true", help="do not verify SAS tokens")
    parser.add_argument(
        "--allow-remote", action="store_true", help="allow binding a non-loopback address"
    )
    parser.add_argument(
        "--no-auto-create",
        action="store_true",
        help="refuse unknown queue names instead of creating them on first use",
    )
    parser.add_argument(
        "--handshake-timeout",
        type=float,
        default=DEFAULT_HANDSHAKE_TIMEOUT,
        metavar="SECONDS",
        help="close a socket that has not sent its AMQP open within this time"
        f" (default {DEFAULT_HANDSHAKE_TIMEOUT:g})",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=DEFAULT_IDLE_TIMEOUT,
        metavar="SECONDS",
        help="close a connection that sends no frame for this long; half of it is advertised"
        f" to clients (default {DEFAULT_IDLE_TIMEOUT:g}; 0 turns it off)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=DEFAULT_MAX_CONNECTIONS,
        metavar="N",
        help="connections served at once; more are refused with amqp:resource-limit-exceeded"
        f" (default {DEFAULT_MAX_CONNECTIONS})",
    )
    parser.add_argument("--key-name", default=DEFAULT_KEY_NAME, help=argparse.SUPPRESS)
    parser.add_argument("--key", default=DEFAULT_KEY, help=argparse.SUPPRESS)
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    parser.add_argument("--control-port", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--queues-json", default=None, help=argparse.SUPPRESS)
    return parser


def _queues(args: argparse.Namespace) -> list[QueueSettings]:
    queues: list[QueueSettings] = []
    if args.config:
        queues.extend(load_config_file(args.config))
    if args.queues_json:
        queues.extend(QueueSettings.from_dict(item) for item in json.loads(args.queues_json))
    known = {q.name.lower() for q in queues}
    for name in args.queue:
        if name.lower() not in known:
            queues.append(QueueSettings(name=name))
            known.add(name.lower())
    return queues


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``boilermaker-emulator`` command; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not is_loopback(args.host) and not args.allow_remote:
        parser.error(f"refusing to bind {args.host}: not a loopback address (use --allow-remote)")
    if not 0 <= args.port <= 65535:
        parser.error("--port must be in 0..65535")
    try:
        queues = _queues(args)
        emulator = ServiceBusEmulator(
            host=args.host,
            port=args.port,
            queues=queues,
            auto_create_queues=not args.no_auto_create,
            store_path=args.store,
            accept_any_token=args.accept_any_token,
            key_name=args.key_name,
            key=args.key,
            mode="thread",
            allow_remote=args.allow_remote,
            handshake_timeout=args.handshake_timeout,
            idle_timeout=args.idle_timeout or None,
            max_connections=args.max_connections,
        )
    except (ConfigError, ValueError) as exc:
        parser.error(str(exc))
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("received signal %d; stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        emulator.start()
    except (OSError, EmulatorError) as exc:
        print(f"boilermaker-emulator: cannot start: {exc}", file=sys.stderr)
        return 1
    control = None
    if args.control_port is not None:
        control = _start_control(emulator, stop)
        print(f"control-port={control.port}", flush=True)
    print(emulator.connection_string, flush=True)
    logger.info(
        "serving %d queue(s) on %s:%d%s",
        len(queues),
        args.host,
        emulator.port,
        f" with store {args.store}" if args.store else "",
    )
    try:
        while not stop.wait(0.5):
            pass
    finally:
        if control is not None:
            control.close()
        emulator.stop()
        logger.info("stopped")
    return 0


def _start_control(emulator: ServiceBusEmulator, stop: threading.Event) -> ControlServer:
    """Serve the parent's control requests; stop when asked or when stdin closes."""

    def watch_stdin() -> None:
        # Raw reads: a daemon thread blocked in a buffered read would hold its lock at exit.
        try:
            while os.read(stdin_fd, 1024):
                pass
        except OSError:
            pass
        stop.set()

    stdin_fd = sys.stdin.fileno()

    def request_stop() -> None:
        stop.set()

    handlers: dict[str, Callable[..., Any]] = {
        "create_queue": lambda data: emulator.create_queue(QueueSettings.from_dict(data)),
        "delete_queue": emulator.delete_queue,
        "purge_queue": emulator.purge_queue,
        "counts": lambda name: dataclasses.asdict(emulator.counts(name)),
        "queue_names": emulator.queue_names,
        "drop_connections": emulator.drop_connections,
        "connection_stats": lambda: dataclasses.asdict(emulator.connection_stats()),
        "refuse_connections": emulator.refuse_connections,
        "delay_frames": emulator.delay_frames,
        "stop": request_stop,
    }
    server = ControlServer(handlers)
    server.start()
    threading.Thread(target=watch_stdin, name="emulator-stdin", daemon=True).start()
    return server


if __name__ == "__main__":
    sys.exit(main())

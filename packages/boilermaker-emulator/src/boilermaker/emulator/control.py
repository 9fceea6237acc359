"""The loopback control channel of a process-mode emulator.

A process-mode :class:`~boilermaker.emulator.server.ServiceBusEmulator`
runs the server in a child process (``python -m boilermaker.emulator
--control-port 0``) and drives it over one TCP connection on 127.0.0.1:
newline-delimited JSON requests ``{"op": ..., "args": [...]}`` answered by
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": ..., "kind": ...}``.
The child also stops when its stdin closes, so it never outlives its parent.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["ControlClient", "ControlError", "ControlServer"]

logger = logging.getLogger("boilermaker.emulator")


class ControlError(RuntimeError):
    """The emulator process answered a control request with an error."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class ControlServer:
    """Serves control requests by calling ``handlers[op](*args)`` (child side)."""

    def __init__(self, handlers: dict[str, Callable[..., Any]], host: str = "127.0.0.1") -> None:
        self.handlers = handlers
        self.sock = socket.create_server((host, 0))
        self.port: int = self.sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name="emulator-control", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(
                target=self._session, args=(conn,), name="emulator-control-session", daemon=True
            ).start()

    def _session(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rwb") as stream:
            for line in stream:
                reply = self._answer(line)
                try:
                    stream.write(json.dumps(reply).encode() + b"\n")
                    stream.flush()
                except OSError:
                    return

    def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            handler = self.handlers[request["op"]]
            return {"ok": True, "result": handler(*request.get("args", []))}
        except KeyError as exc:
            return {"ok": False, "error": str(exc.args[0]) if exc.args else "", "kind": "KeyError"}
        except Exception as exc:
            return {"ok": False, "error": str(exc), "kind": type(exc).__name__}


class ControlClient:
    """Sends control requests to an emulator process (parent side); thread-safe."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._stream = self._sock.makefile("rwb")
        self._lock = threading.Lock()

    def request(self, op: str, *args: Any) -> Any:
        with self._lock:
            self._stream.write(json.dumps({"op": op, "args": list(args)}).encode() + b"\n")
            self._stream.flush()
            line = self._stream.readline()
        if not line:
            raise ControlError("the emulator process closed the control channel", "EOF")
        reply = json.loads(line)
        if reply.get("ok"):
            return reply.get("result")
        raise ControlError(reply.get("error", ""), reply.get("kind", "Exception"))

    def close(self) -> None:
        with self._lock:
            try:
                self._stream.close()
            finally:
                self._sock.close()

"""Start and stop Azurite, the local Azure Blob Storage server, for development and tests.

Azurite is a Node.js program (npm package ``azurite``; this repository pins
it in ``package.json``, installed by ``npm ci``). :func:`find_azurite` looks
for ``azurite-blob`` in ``$BOILERMAKER_AZURITE``, in ``node_modules/.bin`` of
the current directory and its parents, then on ``PATH``. The server listens
on 127.0.0.1 on a free port chosen by the OS, keeps everything in memory, and
is stopped with SIGTERM (then killed if it lingers)::

    with Azurite() as azurite:
        store = BlobClientStorage.from_connection_string(azurite.connection_string, "c")
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import Self

from boilermaker.config import AZURITE_ENV
from boilermaker.storage.account import DEVELOPMENT_ACCOUNT_KEY, DEVELOPMENT_ACCOUNT_NAME


def find_azurite() -> Path:
    """Where ``azurite-blob`` is (the first candidate if none is installed)."""
    explicit = os.environ.get(AZURITE_ENV)
    if explicit:
        return Path(explicit)
    candidates = []
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for folder in (start, *start.parents):
            candidates.append(folder / "node_modules" / ".bin" / "azurite-blob")
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            return candidate
    on_path = shutil.which("azurite-blob")
    return Path(on_path) if on_path else candidates[0]


AZURITE_BLOB = find_azurite()

#: The well-known development account every Azurite accepts.
ACCOUNT_NAME = DEVELOPMENT_ACCOUNT_NAME
ACCOUNT_KEY = DEVELOPMENT_ACCOUNT_KEY

_LISTENING = re.compile(r"listens on http://127\.0\.0\.1:(\d+)")


class AzuriteError(RuntimeError):
    """Azurite could not be started."""


class Azurite:
    """An Azurite blob server on 127.0.0.1, in memory, on a free port."""

    def __init__(
        self,
        executable: Path = AZURITE_BLOB,
        *,
        startup_timeout: float = 30.0,
        extent_memory_limit_mb: int = 256,
    ) -> None:
        self.executable = executable
        self.startup_timeout = startup_timeout
        self.extent_memory_limit_mb = extent_memory_limit_mb
        self.port: int | None = None
        self._process: subprocess.Popen[str] | None = None
        self._drain: threading.Thread | None = None
        self._output: deque[str] = deque(maxlen=200)

    @staticmethod
    def available(executable: Path = AZURITE_BLOB) -> bool:
        """Whether Azurite is installed (``npm ci`` at the repository root)."""
        return os.access(executable, os.X_OK)

    @property
    def blob_endpoint(self) -> str:
        """The blob service URL of the development account."""
        if self.port is None:
            raise AzuriteError("Azurite is not running")
        return f"http://127.0.0.1:{self.port}/{ACCOUNT_NAME}"

    @property
    def connection_string(self) -> str:
        """A connection string for the development account on this server."""
        return self.connection_string_with_key(ACCOUNT_KEY)

    def connection_string_with_key(self, account_key: str) -> str:
        """A connection string with another key (to test denied access)."""
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};"
            f"AccountKey={account_key};BlobEndpoint={self.blob_endpoint};"
        )

    def output(self) -> str:
        """The last lines Azurite printed (for error messages)."""
        return "".join(self._output)

    def start(self) -> Self:
        """Start Azurite and wait until it listens; raises AzuriteError if it does not."""
        if self._process is not None:
            return self
        if not self.available(self.executable):
            raise AzuriteError(f"{self.executable} not found: run `npm ci` at the repository root")
        args = [
            str(self.executable),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            "0",
            "--inMemoryPersistence",
            "--skipApiVersionCheck",
            "--loose",
            "--disableTelemetry",
            "--silent",
            "--extentMemoryLimit",
            str(self.extent_memory_limit_mb),
        ]
        process = subprocess.Popen(
            args,
            cwd=self.executable.parent.parent.parent,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self._process = process
        port: list[int] = []
        listening = threading.Event()

        def drain() -> None:
            # Keep reading for the server's whole life so its pipe never fills.
            assert process.stdout is not None
            for line in process.stdout:
                self._output.append(line)
                if not port:
                    match = _LISTENING.search(line)
                    if match:
                        port.append(int(match.group(1)))
                        listening.set()
            listening.set()

        self._drain = threading.Thread(target=drain, name="azurite-stdout", daemon=True)
        self._drain.start()
        deadline = time.monotonic() + self.startup_timeout
        while not listening.wait(0.05):
            if time.monotonic() >= deadline:
                break
        if not port:
            self.stop()
            raise AzuriteError(
                f"Azurite did not report a listening port within {self.startup_timeout}s; "
                f"output:\n{self.output()}"
            )
        self.port = port[0]
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop Azurite: SIGTERM, wait, then kill."""
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout)
            if process.stdout is not None:
                if self._drain is not None:
                    self._drain.join(timeout)
                process.stdout.close()
        self._drain = None
        self.port = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

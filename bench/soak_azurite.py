"""Azurite on disk, restartable on the same port with the same data (the soak's outage).

``boilermaker.storage.azurite.Azurite`` keeps everything in memory, which is
what tests want and what an outage cannot survive: a restarted in-memory
Azurite is empty. This one keeps its data in ``location`` (``--location``,
no ``--inMemoryPersistence``), takes a free port on its first start and the
same port on every start after, so clients built with its connection string
reconnect to the same account and find the same blobs.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections import deque
from pathlib import Path

from boilermaker.storage.azurite import ACCOUNT_KEY, ACCOUNT_NAME, AZURITE_BLOB, AzuriteError

LISTENING = re.compile(r"listens on http://127\.0\.0\.1:(\d+)")


class DiskAzurite:
    """An Azurite blob server on 127.0.0.1 whose data lives in ``location``."""

    def __init__(
        self, location: Path, executable: Path = AZURITE_BLOB, startup_timeout: float = 30.0
    ) -> None:
        self.location = location
        self.executable = executable
        self.startup_timeout = startup_timeout
        self.port: int | None = None
        self.starts = 0
        self._process: subprocess.Popen[str] | None = None
        self._drain: threading.Thread | None = None
        self._output: deque[str] = deque(maxlen=200)

    @property
    def connection_string(self) -> str:
        if self.port is None:
            raise AzuriteError("Azurite has not been started")
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{self.port}/{ACCOUNT_NAME};"
        )

    @property
    def running(self) -> bool:
        return self._process is not None

    def start(self) -> DiskAzurite:
        """Start (on the port of the first start, if there was one) and wait until it listens."""
        if self._process is not None:
            return self
        if not self.executable.exists():
            raise AzuriteError(f"{self.executable} not found: run `npm ci` at the repository root")
        self.location.mkdir(parents=True, exist_ok=True)
        args = [
            str(self.executable),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(self.port or 0),
            "--location",
            str(self.location),
            "--skipApiVersionCheck",
            "--loose",
            "--disableTelemetry",
            "--silent",
        ]
        process = subprocess.Popen(
            args,
            cwd=self.location,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self._process = process
        found: list[int] = []
        listening = threading.Event()

        def drain() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                self._output.append(line)
                match = LISTENING.search(line)
                if match and not found:
                    found.append(int(match.group(1)))
                    listening.set()
            listening.set()

        self._drain = threading.Thread(target=drain, name="azurite-disk-stdout", daemon=True)
        self._drain.start()
        deadline = time.monotonic() + self.startup_timeout
        while not listening.wait(0.05) and time.monotonic() < deadline:
            pass
        if not found:
            self.stop()
            raise AzuriteError(
                f"Azurite did not listen within {self.startup_timeout}s:\n{''.join(self._output)}"
            )
        if self.port is not None and found[0] != self.port:
            self.stop()
            raise AzuriteError(f"Azurite listens on {found[0]}, not on {self.port} as before")
        self.port = found[0]
        self.starts += 1
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (Azurite saves its metadata and exits), then kill if it lingers."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        if self._drain is not None:
            self._drain.join(timeout)
            self._drain = None
        if process.stdout is not None:
            process.stdout.close()

    def __enter__(self) -> DiskAzurite:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""A graph worker for the end-to-end graph tests: importable, and runnable as a process.

Every graph node is the one registered function ``step(state, name, ...)``;
its arguments say what the node does (sleep, fail, ask for retries), and
each run is recorded by name in memory and, when ``runs_file`` is set, as a
line appended to that file, so a test can count runs across processes.

As a process (``python tests/e2e/graph_worker.py``) it builds its app from
the environment and runs a worker until SIGTERM:

- ``GRAPH_SB_CONNECTION_STRING``, ``GRAPH_QUEUE``: the Service Bus queue;
- ``GRAPH_BLOB_CONNECTION_STRING``, ``GRAPH_CONTAINER``: the results store;
- ``GRAPH_RUNS_FILE``: where runs are appended;
- ``GRAPH_CONCURRENCY``: tasks in flight (default 4);
- ``GRAPH_EXIT_ON_SCHEDULED``: a task id; the worker exits at once
  (``os._exit(1)``) at the write that records that node with the status
  ``GRAPH_EXIT_STATUS`` (``scheduled`` by default; ``started`` for its claim):
  just before it (``GRAPH_EXIT_WHEN=before``, the default) or just after it
  succeeded (``after``);
- ``GRAPH_START_WHEN``: a path; the process loads everything at once but
  starts its worker only when that file exists, so a test can have a fresh
  worker ready the moment it needs one.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from boilermaker import Boilermaker, RetryException, RetryPolicy
from boilermaker.results_store import ResultsStore
from boilermaker.service_bus import AzureServiceBus
from boilermaker.storage import BlobClientStorage

#: Default policy of ``step``: three tries, one second apart.
STEP_POLICY = RetryPolicy(max_tries=3, delay=1)


class RunLog:
    """Which nodes ran, how often, in what order (in memory and, optionally, in a file)."""

    def __init__(self, runs_file: str | os.PathLike[str] | None = None) -> None:
        self.runs: Counter[str] = Counter()
        self.order: list[str] = []
        self.times: dict[str, list[float]] = {}
        self.runs_file = Path(runs_file) if runs_file else None

    def record(self, name: str) -> None:
        self.runs[name] += 1
        self.order.append(name)
        self.times.setdefault(name, []).append(time.monotonic())
        if self.runs_file is not None:
            # One small append per run: whole lines even with several writers.
            with self.runs_file.open("a", encoding="utf-8") as f:
                f.write(name + "\n")
                f.flush()

    @staticmethod
    def read(runs_file: str | os.PathLike[str]) -> Counter[str]:
        """Runs per node name recorded in ``runs_file`` by any process."""
        path = Path(runs_file)
        if not path.exists():
            return Counter()
        return Counter(line for line in path.read_text(encoding="utf-8").splitlines() if line)


async def step(
    state: RunLog,
    name: str,
    sleep: float = 0.0,
    fail: bool = False,
    retries: int = 0,
) -> str:
    """A graph node: records the run, sleeps, then fails, retries or succeeds.

    ``retries``: raise RetryException on the first ``retries`` runs.
    """
    state.record(name)
    if sleep:
        await asyncio.sleep(sleep)
    if state.runs[name] <= retries:
        raise RetryException(f"{name} not ready (run {state.runs[name]})")
    if fail:
        raise ValueError(f"{name} failed")
    return f"{name} done"


def build_app(
    broker: AzureServiceBus,
    store: ResultsStore,
    state: RunLog | None = None,
    policy: RetryPolicy = STEP_POLICY,
) -> Boilermaker:
    """An app with ``step`` registered."""
    app = Boilermaker(state if state is not None else RunLog(), broker, results_storage=store)
    app.register_async(step, policy=policy)
    return app


class ExitOnScheduled:
    """A ResultsStore that kills the process at the write recording one node as Scheduled."""

    def __init__(
        self,
        store: BlobClientStorage,
        task_id: str,
        when: str = "before",
        status: str = "scheduled",
    ) -> None:
        if when not in ("before", "after"):
            raise ValueError(f"when must be 'before' or 'after', not {when!r}")
        self._store = store
        self._task_id = task_id
        self._when = when
        self._status = status

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def _schedules_target(self, name: str, data: bytes) -> bool:
        return (
            name.endswith(f"/{self._task_id}.json")
            and json.loads(data).get("status") == self._status
        )

    def _exit(self) -> None:
        print(f"exiting {self._when} recording {self._task_id} as {self._status}", flush=True)
        os._exit(1)

    async def write(self, name: str, data: bytes, **kwargs: Any) -> str:
        target = self._schedules_target(name, data)
        if target and self._when == "before":
            self._exit()
        etag = await self._store.write(name, data, **kwargs)
        if target:
            self._exit()
        return etag


async def main() -> None:
    env = os.environ
    broker = AzureServiceBus.from_connection_string(
        env["GRAPH_SB_CONNECTION_STRING"], env["GRAPH_QUEUE"]
    )
    blob_store = BlobClientStorage.from_connection_string(
        env["GRAPH_BLOB_CONNECTION_STRING"], env["GRAPH_CONTAINER"]
    )
    store: Any = blob_store
    if env.get("GRAPH_EXIT_ON_SCHEDULED"):
        store = ExitOnScheduled(
            blob_store,
            env["GRAPH_EXIT_ON_SCHEDULED"],
            env.get("GRAPH_EXIT_WHEN", "before"),
            env.get("GRAPH_EXIT_STATUS", "scheduled"),
        )
    app = build_app(broker, store, RunLog(env["GRAPH_RUNS_FILE"]))
    print("worker starting", flush=True)
    try:
        await app.run(concurrency=int(env.get("GRAPH_CONCURRENCY", "4")), shutdown_grace=1.0)
    finally:
        await app.close()


def wait_for_start_file() -> None:
    """Block until ``GRAPH_START_WHEN`` exists (imports are done by then)."""
    start_when = os.environ.get("GRAPH_START_WHEN")
    if start_when:
        print(f"waiting for {start_when}", flush=True)
        while not os.path.exists(start_when):
            time.sleep(0.02)


if __name__ == "__main__":
    wait_for_start_file()
    asyncio.run(main())

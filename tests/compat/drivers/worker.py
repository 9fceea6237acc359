"""Run a worker on the workload of ``workload.py`` until it is done, printing one JSON line.

    python worker.py --connection-string CS --queue NAME [--plain N] [--flaky F]
                     [--timeout S] [--settle S]

Runs unchanged under either library. The worker runs until every function
has run as often as the workload says (or ``--timeout`` seconds), then
``--settle`` seconds more, so the last messages are settled and any extra
run is seen, and stops. Prints
``{"library": ..., "runs": {function: n}, "expected": {...}, "done": bool,
"seconds": s, "worker_error": ..., "close_error": ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time

from workload import (
    FUNCTIONS,
    Runs,
    close_quietly,
    emit,
    expected_runs,
    log_to_stderr,
    service_bus_client,
)

from boilermaker import Boilermaker


def done(state: Runs, expected: dict[str, int]) -> bool:
    return all(state.by_function[name] >= n for name, n in expected.items())


async def main(args: argparse.Namespace) -> int:
    expected = expected_runs(args.plain, args.flaky)
    state = Runs()  # the app may hold it weakly: this reference keeps it alive
    app = Boilermaker(state, service_bus_client(args.connection_string, args.queue))
    app.register_many_async(list(FUNCTIONS))
    started = time.monotonic()
    deadline = started + args.timeout
    runner = asyncio.create_task(app.run())
    while not done(state, expected) and not runner.done():
        state.changed.clear()
        left = deadline - time.monotonic()
        if left <= 0:
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.changed.wait(), left)
    seconds = time.monotonic() - started
    if not runner.done():
        await asyncio.sleep(args.settle)
    worker_error = None
    if runner.done():
        exc = runner.exception()
        worker_error = f"worker stopped early: {type(exc).__name__}: {exc}" if exc else "stopped"
    else:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(runner, 10)
    emit(
        {
            "runs": dict(state.by_function),
            "expected": expected,
            "done": done(state, expected),
            "seconds": round(seconds, 3),
            "worker_error": worker_error,
            "close_error": await close_quietly(app),
        }
    )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--connection-string", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--plain", type=int, default=6)
    parser.add_argument("--flaky", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--settle", type=float, default=1.0)
    log_to_stderr()
    raise SystemExit(asyncio.run(main(parser.parse_args())))

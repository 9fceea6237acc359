"""Publish the workload of ``workload.py`` and exit, printing one JSON line.

    python publisher.py --connection-string CS --queue NAME [--plain N] [--flaky F]

Runs unchanged under either library. Prints
``{"library": ..., "published": {function: tasks}, "close_error": ...}``.
"""

from __future__ import annotations

import argparse
import asyncio

from workload import (
    FLAKY_POLICY,
    FUNCTIONS,
    Runs,
    broken,
    chain_head,
    chain_tail,
    close_quietly,
    emit,
    flaky,
    log_to_stderr,
    plain,
    service_bus_client,
)

from boilermaker import Boilermaker


async def main(args: argparse.Namespace) -> int:
    state = Runs()  # the app may hold it weakly: this reference keeps it alive
    app = Boilermaker(state, service_bus_client(args.connection_string, args.queue))
    app.register_many_async(list(FUNCTIONS))
    published: dict[str, int] = {}

    def count(name: str) -> None:
        published[name] = published.get(name, 0) + 1

    for i in range(args.plain):
        await app.apply_async(plain, i)
        count("plain")
    for k in range(args.flaky):
        await app.apply_async(flaky, f"key-{k}", policy=FLAKY_POLICY)
        count("flaky")
    await app.apply_async(broken)
    count("broken")
    head = app.create_task(chain_head)
    head >> app.create_task(chain_tail)
    await app.publish_task(head)
    count("chain_head")
    emit({"published": published, "close_error": await close_quietly(app)})
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--connection-string", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--plain", type=int, default=6)
    parser.add_argument("--flaky", type=int, default=2)
    log_to_stderr()
    raise SystemExit(asyncio.run(main(parser.parse_args())))

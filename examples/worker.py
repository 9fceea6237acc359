"""Run the tasks (the quickstart, step 2): ``python worker.py``; Ctrl-C or SIGTERM stops it.

The same as ``boilermaker worker tasks:app``.
"""

# docs-test: needs servicebus; runs until stopped

import asyncio

from tasks import app


async def run_worker() -> None:
    try:
        await app.run()  # until SIGINT/SIGTERM; in-flight tasks get 30 s to finish
    finally:
        await app.close()


if __name__ == "__main__":
    asyncio.run(run_worker())

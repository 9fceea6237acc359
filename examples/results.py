"""Stored results, in memory: ``python results.py``.

With a results store, every task's outcome (status, return value, errors) is
written to it, and ``app.get_result`` reads it back, waiting if asked to.
In production the store is ``boilermaker.storage.BlobClientStorage``.
"""

import asyncio

from boilermaker import Boilermaker, ResultNotReady, TaskStatus, retries
from boilermaker.memory import InMemoryBroker, InMemoryResultsStore

app = Boilermaker(None, InMemoryBroker(), results_storage=InMemoryResultsStore())


@app.task(policy=retries.NoRetry())
async def add(state, a: int, b: int) -> int:
    return a + b


@app.task(policy=retries.NoRetry(), should_dead_letter=False)
async def divide(state, a: int, b: int) -> float:
    return a / b


async def main() -> None:
    task = await app.apply_async(add, 2, 3)
    try:
        await app.get_result(task)  # timeout=0 (the default): read once
    except ResultNotReady as exc:
        print(f"not yet: {exc}")

    worker = asyncio.create_task(app.run())  # a worker in this process, for the example
    result = await app.get_result(task, timeout=10)  # wait up to 10 s
    print(result.status, result.result)
    assert result.status is TaskStatus.Success
    assert result.result == 5

    failing = await app.apply_async(divide, 1, 0)
    failed = await app.get_result(failing, timeout=10)
    print(failed.status, failed.errors)
    assert failed.status is TaskStatus.Failure
    assert failed.errors == ["ZeroDivisionError: division by zero"]

    app.stop()
    await worker


if __name__ == "__main__":
    asyncio.run(main())

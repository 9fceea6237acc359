"""A chain with a failure callback, run on the in-memory broker: ``python chains.py``.

download >> transcode >> notify runs in that order; if any of them fails,
``report_failure`` runs instead of the rest. Nothing is passed from one task
to the next: each task's arguments are fixed when the chain is built.
"""

import asyncio

from boilermaker import Boilermaker, retries
from boilermaker.memory import InMemoryBroker

app = Boilermaker({"ran": []}, InMemoryBroker())


@app.task(policy=retries.NoRetry())
async def download(state, video_id: str) -> None:
    state["ran"].append(f"download {video_id}")


@app.task(policy=retries.NoRetry())
async def transcode(state, video_id: str, fail: bool = False) -> None:
    if fail:
        raise RuntimeError(f"cannot transcode {video_id}")
    state["ran"].append(f"transcode {video_id}")


@app.task(policy=retries.NoRetry())
async def notify(state, video_id: str) -> None:
    state["ran"].append(f"notify {video_id}")


@app.task(policy=retries.NoRetry())
async def report_failure(state, video_id: str) -> None:
    state["ran"].append(f"report_failure {video_id}")


async def main() -> None:
    # A chain that succeeds: each task runs after the previous one succeeded.
    first = app.create_task(download, "v1")
    first >> app.create_task(transcode, "v1") >> app.create_task(notify, "v1")
    await app.publish_task(first)
    await app.run_until_idle()
    print(app.state["ran"])
    assert app.state["ran"] == ["download v1", "transcode v1", "notify v1"]

    # A chain whose middle task fails: the failure callback runs, notify does not.
    app.state["ran"].clear()
    head = app.chain(
        app.create_task(download, "v2"),
        app.create_task(transcode, "v2", fail=True),
        app.create_task(notify, "v2"),
        on_failure=app.create_task(report_failure, "v2"),
    )
    await app.publish_task(head)
    await app.run_until_idle()
    print(app.state["ran"])
    assert app.state["ran"] == ["download v2", "report_failure v2"]

    # The failed message was dead-lettered, with the reason and the exception.
    (dead,) = app.service_bus_client.dead_letters()
    print(dead.dead_letter_reason, "-", dead.dead_letter_description)
    assert dead.dead_letter_reason == "TaskFailed"


if __name__ == "__main__":
    asyncio.run(main())

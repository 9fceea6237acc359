"""A task graph with failure handlers, on the in-memory broker and store: ``python graphs.py``.

``fetch`` fans out to ``resize`` and ``watermark`` and both join into
``publish``. ``watermark`` fails, so its handler ``cleanup`` runs (once, though
it guards both branches), ``publish`` never runs, and the graph's all-failed
handler ``alert`` runs at the end. ``resize`` still runs: it does not depend
on the failed task.
"""

import asyncio

from boilermaker import Boilermaker, retries
from boilermaker.memory import InMemoryBroker, InMemoryResultsStore
from boilermaker.task import TaskGraphBuilder, TaskStatus

app = Boilermaker({"ran": []}, InMemoryBroker(), results_storage=InMemoryResultsStore())


@app.task(policy=retries.NoRetry())
async def step(state, name: str, fail: bool = False) -> str:
    state["ran"].append(name)
    if fail:
        raise RuntimeError(f"{name} failed")
    return f"{name} done"


async def main() -> None:
    fetch = app.create_task(step, "fetch")
    resize = app.create_task(step, "resize")
    watermark = app.create_task(step, "watermark", fail=True)
    publish = app.create_task(step, "publish")
    cleanup = app.create_task(step, "cleanup")
    alert = app.create_task(step, "alert")
    graph = (
        TaskGraphBuilder()
        .add(fetch)
        .parallel(resize, watermark, on_failure=cleanup)
        .then(publish)
        .build(on_all_failed=alert)
    )
    await app.publish_graph(graph)
    await app.run_until_idle()
    progress = await app.wait_for_graph(graph.graph_id, timeout=10)

    names = {t.task_id: t.payload["args"][0] for t in (fetch, resize, watermark, publish, cleanup)}
    for task_id, status in progress.statuses.items():
        label = names.get(task_id, "alert")
        print(f"{label:10} {status.value}{' (skipped)' if task_id in progress.skipped else ''}")
    print("ran:", ", ".join(app.state["ran"]))
    assert progress.complete
    assert progress.failed
    assert progress.statuses[watermark.task_id] is TaskStatus.Failure
    assert publish.task_id in progress.skipped
    assert app.state["ran"].count("cleanup") == 1
    assert app.state["ran"][-1] == "alert"
    await app.close()


if __name__ == "__main__":
    asyncio.run(main())

"""A whole app on your machine: Service Bus (the emulator) and Blob Storage (Azurite).

Publishes a small graph (fetch, then two summaries in parallel, then a
report), runs a worker in this process until the graph has finished, and
prints each task's stored result. Settings come from the environment:

    SERVICE_BUS_CONNECTION_STRING, SERVICE_BUS_QUEUE_NAME
    BOILERMAKER_RESULTS_CONNECTION_STRING, BOILERMAKER_RESULTS_CONTAINER
"""

# docs-test: needs servicebus, azurite

import asyncio

from boilermaker import Boilermaker, retries
from boilermaker.config import Config
from boilermaker.service_bus import AzureServiceBus
from boilermaker.storage import BlobClientStorage
from boilermaker.task import TaskGraphBuilder

config = Config()
store = BlobClientStorage.from_connection_string(
    config.results_connection_string.get_secret_value(),
    config.results_container,
    create_container=True,
)
app = Boilermaker({}, AzureServiceBus.from_config(config), results_storage=store)
quick = retries.RetryPolicy(max_tries=3, delay=1)


@app.task(policy=quick)
async def fetch_orders(state, day: str) -> int:
    return 42  # orders fetched


@app.task(policy=quick)
async def summarize(state, day: str, region: str) -> str:
    return f"{region}: summary of {day}"


@app.task(policy=quick)
async def publish_report(state, day: str) -> str:
    return f"report-{day}.pdf"


async def main() -> None:
    fetch = app.create_task(fetch_orders, "2026-11-30")
    emea = app.create_task(summarize, "2026-11-30", "emea")
    apac = app.create_task(summarize, "2026-11-30", "apac")
    report = app.create_task(publish_report, "2026-11-30")
    graph = (
        TaskGraphBuilder()
        .add(fetch)
        .parallel(emea, apac, depends_on=fetch)
        .then(report)  # after both summaries
        .build()
    )
    worker = asyncio.create_task(app.run())
    try:
        await app.publish_graph(graph)
        progress = await app.wait_for_graph(graph.graph_id, timeout=60)
        print(f"graph {graph.graph_id}: complete={progress.complete} failed={progress.failed}")
        for task in (fetch, emea, apac, report):
            result = await app.get_result(task)
            print(f"  {task.function_name:<15} {result.status.value:<8} {result.result!r}")
        assert (await app.get_result(report)).result == "report-2026-11-30.pdf"
    finally:
        app.stop()
        await worker
        await app.close()


if __name__ == "__main__":
    asyncio.run(main())

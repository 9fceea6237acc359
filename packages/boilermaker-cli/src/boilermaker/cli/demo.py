"""``boilermaker demo``: the main job on embedded defaults.

Starts a local Service Bus emulator and Azurite, runs a worker and a
publisher of a small, realistic workload in this process, shows progress
while it runs and a summary at the end, and stops everything it started,
also on Ctrl-C. The workload covers what a service meets in production:

- plain tasks (thumbnails) running concurrently;
- a flaky task that asks for retries and then succeeds;
- a payment that fails for good and lands in the dead-letter queue as
  ``TaskFailed``, and a job that exhausts its retries (``ProcessingError``);
- a chain (download >> transcode >> notify);
- two graphs: a report fan-out/fan-in that succeeds, and an import whose
  validation fails, so its failure handler and all-failed callback run and
  its dependents never do.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TextIO

import click

from boilermaker import Boilermaker, BoilermakerError, RetryException, RetryPolicy
from boilermaker.broker import SubQueue
from boilermaker.redact import redact
from boilermaker.task import TaskGraph, TaskGraphBuilder

QUEUE = "boilermaker-demo"
CONTAINER = "boilermaker-demo"


@dataclass
class DemoState:
    """What the demo's tasks record, for the progress line and the summary."""

    runs: Counter[str] = field(default_factory=Counter)
    finished: Counter[str] = field(default_factory=Counter)
    flaky_attempts: Counter[str] = field(default_factory=Counter)
    chain_order: list[str] = field(default_factory=list)


# -- the workload's task functions -----------------------------------------------------------


async def make_thumbnail(state: DemoState, image_id: int, size: int = 128) -> str:
    """A plain task: a little simulated I/O."""
    state.runs["make_thumbnail"] += 1
    await asyncio.sleep(random.uniform(0.02, 0.15))
    state.finished["make_thumbnail"] += 1
    return f"thumb-{image_id}-{size}.png"


async def sync_inventory(state: DemoState, warehouse: str) -> str:
    """Fails twice (a flaky upstream), then succeeds on its third attempt."""
    state.runs["sync_inventory"] += 1
    state.flaky_attempts[warehouse] += 1
    if state.flaky_attempts[warehouse] < 3:
        raise RetryException(f"warehouse {warehouse} API timed out")
    state.finished["sync_inventory"] += 1
    return f"synced {warehouse}"


async def charge_card(state: DemoState, order_id: str, amount_cents: int) -> None:
    """Fails for good: the card is declined (no retry for this error)."""
    state.runs["charge_card"] += 1
    raise ValueError(f"card declined for order {order_id} ({amount_cents} cents)")


async def poll_partner_feed(state: DemoState, partner: str) -> None:
    """Always asks for a retry, so it exhausts its tries."""
    state.runs["poll_partner_feed"] += 1
    raise RetryException(f"partner {partner} feed not ready")


async def download_video(state: DemoState, video_id: str) -> None:
    """First link of the chain."""
    state.runs["download_video"] += 1
    state.chain_order.append("download")
    await asyncio.sleep(0.05)


async def transcode_video(state: DemoState, video_id: str) -> None:
    """Second link of the chain."""
    state.runs["transcode_video"] += 1
    state.chain_order.append("transcode")
    await asyncio.sleep(0.1)


async def notify_subscribers(state: DemoState, video_id: str) -> None:
    """Last link of the chain."""
    state.runs["notify_subscribers"] += 1
    state.chain_order.append("notify")


async def fetch_sales(state: DemoState, region: str) -> dict[str, Any]:
    """Graph root."""
    state.runs["fetch_sales"] += 1
    await asyncio.sleep(0.05)
    return {"region": region, "rows": 5}


async def summarize_store(state: DemoState, store_id: int) -> int:
    """Graph fan-out node."""
    state.runs["summarize_store"] += 1
    await asyncio.sleep(random.uniform(0.02, 0.1))
    return store_id * 10


async def publish_report(state: DemoState, region: str) -> str:
    """Graph join."""
    state.runs["publish_report"] += 1
    return f"report-{region}.pdf"


async def validate_import(state: DemoState, batch: str) -> None:
    """A graph node that fails: the import is malformed."""
    state.runs["validate_import"] += 1
    raise ValueError(f"import {batch}: row 17 has no customer id")


async def load_import(state: DemoState, batch: str) -> None:
    """Depends on validation; never runs in the demo."""
    state.runs["load_import"] += 1


async def quarantine_import(state: DemoState, batch: str) -> None:
    """The failure handler of the validation step."""
    state.runs["quarantine_import"] += 1


async def page_on_call(state: DemoState, batch: str) -> None:
    """The all-failed callback of the import graph."""
    state.runs["page_on_call"] += 1


FUNCTIONS = (
    make_thumbnail,
    sync_inventory,
    charge_card,
    poll_partner_feed,
    download_video,
    transcode_video,
    notify_subscribers,
    fetch_sales,
    summarize_store,
    publish_report,
    validate_import,
    load_import,
    quarantine_import,
    page_on_call,
)


def register(app: Boilermaker) -> None:
    """Register the demo's functions with their policies."""
    quick_retry = RetryPolicy(max_tries=5, delay=1, delay_max=2)
    for fn in FUNCTIONS:
        if fn is sync_inventory:
            app.register_async(fn, policy=quick_retry)
        elif fn is poll_partner_feed:
            app.register_async(fn, policy=RetryPolicy(max_tries=2, delay=1, delay_max=1))
        elif fn in (charge_card, validate_import):
            app.register_async(fn, policy=RetryPolicy.no_retry())
        else:
            app.register_async(fn, policy=quick_retry)


async def publish_workload(app: Boilermaker, thumbnails: int) -> dict[str, TaskGraph]:
    """Publish every part of the workload; returns the graphs by name."""
    await app.apply_many(make_thumbnail, [(i,) for i in range(thumbnails)])
    await app.apply_async(sync_inventory, "berlin")
    await app.apply_async(charge_card, "order-1042", 12_999)
    await app.apply_async(poll_partner_feed, "acme")
    download = app.create_task(download_video, "v-77")
    transcode = app.create_task(transcode_video, "v-77")
    notify = app.create_task(notify_subscribers, "v-77")
    download >> transcode >> notify
    await app.publish_task(download)

    fetch = app.create_task(fetch_sales, "emea")
    stores = [app.create_task(summarize_store, i) for i in range(1, 6)]
    report = (
        TaskGraphBuilder()
        .add(fetch)
        .parallel(*stores, depends_on=fetch)
        .then(app.create_task(publish_report, "emea"))
        .build()
    )
    validate = app.create_task(validate_import, "2026-11-28")
    failing = (
        TaskGraphBuilder()
        .add(validate)
        .on_failure(validate.task_id, app.create_task(quarantine_import, "2026-11-28"))
        .then(app.create_task(load_import, "2026-11-28"))
        .on_all_failed(app.create_task(page_on_call, "2026-11-28"))
        .build()
    )
    await app.publish_graph(report)
    await app.publish_graph(failing)
    return {"sales report": report, "customer import": failing}


def expected_done(state: DemoState, thumbnails: int) -> bool:
    """Whether every part of the workload has reached its end."""
    runs = state.runs
    return (
        state.finished["make_thumbnail"] >= thumbnails
        and state.finished["sync_inventory"] >= 1
        and runs["charge_card"] >= 1
        and runs["poll_partner_feed"] >= 2
        and runs["notify_subscribers"] >= 1
        and runs["publish_report"] >= 1
        and runs["quarantine_import"] >= 1
        and runs["page_on_call"] >= 1
    )


async def run_demo(thumbnails: int, timeout: float, out: TextIO) -> int:
    """Start the local services, run the workload, print progress and a summary."""
    from boilermaker.emulator import QueueSettings, ServiceBusEmulator
    from boilermaker.service_bus import AzureServiceBus
    from boilermaker.storage import BlobClientStorage
    from boilermaker.storage.azurite import Azurite

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    say("Starting the local Service Bus emulator and Azurite...")
    emulator = ServiceBusEmulator(
        port=0,
        queues=[QueueSettings(name=QUEUE, lock_duration=30.0, max_delivery_count=5)],
        mode="process",
    )
    azurite = Azurite()
    emulator.start()
    try:
        azurite.start()
        # Shown without its key (the emulator's development key, DEFAULT_KEY).
        say(f"  Service Bus: {redact(emulator.connection_string)}")
        say(f"  Blob storage: http://127.0.0.1:{azurite.port}/devstoreaccount1")
        broker = AzureServiceBus.from_connection_string(emulator.connection_string, QUEUE)
        store = BlobClientStorage.from_connection_string(
            azurite.connection_string, CONTAINER, create_container=True
        )
        state = DemoState()
        app = Boilermaker(state, broker, results_storage=store)
        register(app)
        worker = app.worker(concurrency=16, install_signal_handlers=False)
        running = asyncio.create_task(worker.run())
        try:
            started = time.monotonic()
            graphs = await publish_workload(app, thumbnails)
            total = thumbnails + 3 + 3 + sum(len(g) for g in graphs.values())
            say(
                f"Published {total} tasks: {thumbnails} thumbnails, retries, failures, "
                "a chain and two graphs. Worker concurrency 16."
            )
            while not expected_done(state, thumbnails):
                if time.monotonic() - started > timeout:
                    say(f"Timed out after {timeout:.0f}s")
                    break
                if running.done():
                    await running
                    break
                await asyncio.sleep(0.5)
                stats = worker.stats
                say(
                    f"  [{time.monotonic() - started:5.1f}s] ran {sum(state.runs.values()):3d}"
                    f" | ok {stats.succeeded:3d} | retried {stats.retried:2d}"
                    f" | dead-lettered {stats.dead_lettered:2d} | in flight {worker.in_flight:2d}"
                )
            elapsed = time.monotonic() - started
            worker.stop()
            await running
            await summarize(app, state, graphs, elapsed, say)
        finally:
            if not running.done():
                running.cancel()
                await asyncio.gather(running, return_exceptions=True)
            await app.close()
    finally:
        azurite.stop()
        emulator.stop()
        say("Stopped the emulator and Azurite.")
    return 0 if expected_done(state, thumbnails) else 1


async def summarize(
    app: Boilermaker,
    state: DemoState,
    graphs: dict[str, TaskGraph],
    elapsed: float,
    say: Any,
) -> None:
    """Print what ran, what was dead-lettered and why, and each graph node's final state."""
    say()
    say(f"Summary ({elapsed:.1f}s)")
    say("  runs per function:")
    for name, count in sorted(state.runs.items()):
        say(f"    {name:<20} {count}")
    say(f"  chain order: {' >> '.join(state.chain_order)}")
    broker = app.service_bus_client
    assert broker is not None
    async with broker.receiver(sub_queue=SubQueue.DeadLetter) as dlq:
        dead = await dlq.peek(50)
    say(f"  dead-letter queue ({len(dead)}):")
    for message in dead:
        function = message.application_properties.get("boilermaker_function", "?")
        say(
            f"    #{message.sequence_number} {function}: {message.dead_letter_reason}"
            f" - {message.dead_letter_description}"
        )
    for title, graph in graphs.items():
        progress = await app.graph_progress(graph.graph_id)
        if progress is None:
            continue
        outcome = "failed" if progress.failed else "succeeded"
        say(f"  graph '{title}' ({graph.graph_id}): {outcome}, complete={progress.complete}")
        for task_id, status in progress.statuses.items():
            task = graph.tasks[task_id]
            shown = "skipped (never ran)" if task_id in progress.skipped else status.value
            say(f"    {task.function_name:<20} {shown}")


@click.command("demo")
@click.option("--thumbnails", default=40, show_default=True, help="Plain tasks to publish.")
@click.option("--timeout", default=90.0, show_default=True, help="Seconds before giving up.")
@click.option("--verbose", is_flag=True, help="Show the worker's log lines.")
def demo(thumbnails: int, timeout: float, verbose: bool) -> None:
    """Run a small realistic workload on a local emulator and Azurite, then stop them."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        # The workload fails on purpose; its error lines would drown the progress.
        logging.getLogger("boilermaker").setLevel(logging.CRITICAL)
    from boilermaker.emulator.server import EmulatorError
    from boilermaker.storage.azurite import AzuriteError

    try:
        code = asyncio.run(run_demo(thumbnails, timeout, sys.stdout))
    except KeyboardInterrupt:
        click.echo("Interrupted; the emulator and Azurite were stopped.")
        raise SystemExit(130) from None
    except (AzuriteError, EmulatorError, BoilermakerError) as exc:
        click.echo(f"The demo could not run: {exc}", err=True)
        raise SystemExit(1) from None
    raise SystemExit(code)

"""Retries on the in-memory broker: ``python retries.py`` (takes about 3 seconds).

``fetch_rates`` asks for a retry twice (a flaky upstream) and succeeds on its
third attempt; ``poll_feed`` always asks and exhausts its two tries, so its
message is dead-lettered as ``ProcessingError``. Each retry is a new message
scheduled for later, with message id ``<task_id>:<runs so far>`` (``T:1`` after
the first run, as in 1.4.1).
"""

import asyncio

from boilermaker import Boilermaker, RetryException, retries
from boilermaker.memory import InMemoryBroker

app = Boilermaker({"attempts": 0}, InMemoryBroker())


@app.task(policy=retries.RetryPolicy(max_tries=3, delay=1, retry_mode=retries.RetryMode.Fixed))
async def fetch_rates(state, currency: str) -> str:
    state["attempts"] += 1
    if state["attempts"] < 3:
        raise RetryException(f"rates service timed out ({currency})")
    return f"rates for {currency}"


@app.task(policy=retries.RetryPolicy(max_tries=2, delay=1))
async def poll_feed(state, partner: str) -> None:
    raise RetryException(f"feed of {partner} is not ready")


async def main() -> None:
    await app.apply_async(fetch_rates, "EUR")
    await app.apply_async(poll_feed, "acme")
    worker = await app.run_until_idle(timeout=30)  # waits for the scheduled retries too

    print(f"fetch_rates ran {app.state['attempts']} times")
    assert app.state["attempts"] == 3
    print(f"retries scheduled: {worker.stats.retried}, exhausted: {worker.stats.retries_exhausted}")
    assert worker.stats.retried == 3  # two for fetch_rates, one for poll_feed
    assert worker.stats.retries_exhausted == 1

    (dead,) = app.service_bus_client.dead_letters()
    print(f"{dead.message_id}: {dead.dead_letter_reason}")
    assert dead.dead_letter_reason == "ProcessingError"
    assert dead.message_id.endswith(":1")  # the retry that followed the first run


if __name__ == "__main__":
    asyncio.run(main())

"""Dead letters, then a replay once the cause is fixed: ``python dead_letter_replay.py``.

On the in-memory broker (which keeps Service Bus's dead-letter semantics):
``charge`` fails for a declined card and its message is dead-lettered as
``TaskFailed``; a body that is not a task is dead-lettered as
``InvalidTaskFormat`` on its first delivery. After the card is accepted, the
``TaskFailed`` letters are replayed (each copy carries its lineage) and run;
the junk is purged. ``boilermaker dlq list|show|replay|purge`` does the same
on a Service Bus queue.
"""

import asyncio

from boilermaker import Boilermaker, retries
from boilermaker.broker import OutgoingMessage
from boilermaker.dead_letters import DeadLetterFilter, DeadLetterQueue
from boilermaker.memory import InMemoryBroker

app = Boilermaker({"charged": [], "declined": {"order-2"}}, InMemoryBroker())


@app.task(policy=retries.NoRetry())
async def charge(state, order_id: str) -> None:
    if order_id in state["declined"]:
        raise ValueError(f"card declined for {order_id}")
    state["charged"].append(order_id)


async def main() -> None:
    broker = app.service_bus_client
    await app.apply_async(charge, "order-1")
    await app.apply_async(charge, "order-2")
    await broker.send([OutgoingMessage(body=b"\x00junk", message_id="junk-1")])
    await app.run_until_idle()

    dlq = DeadLetterQueue(broker, receive_wait=0.2)
    for letter in await dlq.list():
        print(f"dead letter {letter.message_id}: {letter.reason}: {letter.description}")

    app.state["declined"].clear()  # the cause is fixed
    report = await dlq.replay(DeadLetterFilter(reason="TaskFailed"))
    for outcome in report.replayed:
        print(f"replayed as {outcome.new_message_id}")
    await app.run_until_idle()
    purged = await dlq.purge(DeadLetterFilter(reason="InvalidTaskFormat"))
    print(f"purged {len(purged.purged)}; charged: {', '.join(app.state['charged'])}")

    assert app.state["charged"] == ["order-1", "order-2"]
    assert broker.counts().dead_lettered == 0
    await app.close()


if __name__ == "__main__":
    asyncio.run(main())

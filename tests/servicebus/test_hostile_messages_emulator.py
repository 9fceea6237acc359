"""A smaller sample of the hostile-message property, on the emulator with the real SDK.

The same generated bodies as tests/core/test_hostile_messages.py travel over
AMQP to a real worker; every message must be completed after running, or be
dead-lettered on its first delivery with a documented reason and a
description. (AMQP value and sequence bodies, sent with the SDK and with
proton, are in test_unreadable_bodies.py.)
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from boilermaker import Boilermaker, RetryPolicy
from boilermaker.broker import OutgoingMessage, SubQueue
from boilermaker.emulator import ServiceBusEmulator
from boilermaker.reasons import REASONS
from boilermaker.service_bus import AzureServiceBus
from tests.core.test_hostile_messages import bodies, echo, fails, retries


async def run_on_emulator(emulator: ServiceBusEmulator, queue: str, raw: list[bytes]) -> None:
    broker = AzureServiceBus.from_connection_string(emulator.connection_string, queue)
    state: Counter[str] = Counter()
    app = Boilermaker(state, broker)
    for fn in (echo, fails, retries):
        app.register_async(fn, policy=RetryPolicy(max_tries=2, delay=0))
    ids = [f"m-{i}" for i in range(len(raw))]
    try:
        await broker.send(
            [OutgoingMessage(body=b, message_id=m) for b, m in zip(raw, ids, strict=True)]
        )
        worker = app.worker(install_signal_handlers=False, receive_wait=0.2, concurrency=4)
        runner = asyncio.create_task(worker.run())
        for _ in range(300):
            counts = emulator.counts(queue)
            if counts.active == counts.locked == counts.scheduled == 0 and worker.in_flight == 0:
                break
            await asyncio.sleep(0.1)
        worker.stop()
        await runner
        counts = emulator.counts(queue)
        assert counts.active == counts.locked == counts.scheduled == 0, counts
        assert worker.stats.abandoned == 0
        async with broker.receiver(sub_queue=SubQueue.DeadLetter) as dlq:
            letters = await dlq.peek(100)
        for letter in letters:
            assert letter.dead_letter_reason in REASONS, letter.dead_letter_reason
            assert letter.dead_letter_description
            assert letter.delivery_count <= 1
    finally:
        await app.close()


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(raw=st.lists(bodies, min_size=1, max_size=8))
def test_every_message_ends_completed_or_dead_lettered_on_the_emulator(
    servicebus_emulator: ServiceBusEmulator,
    servicebus_queue_factory: Callable[..., str],
    raw: list[bytes],
) -> None:
    queue = servicebus_queue_factory(max_delivery_count=5)
    asyncio.run(run_on_emulator(servicebus_emulator, queue, raw))


def test_named_hostile_bodies_on_the_emulator(
    servicebus_emulator: ServiceBusEmulator, servicebus_queue_factory: Callable[..., Any]
) -> None:
    raw = [b"\x00\xff", b"42", b"[]", b'{"boilermaker":"9.0","task":{}}', b"x" * 1000]
    asyncio.run(run_on_emulator(servicebus_emulator, servicebus_queue_factory(), raw))

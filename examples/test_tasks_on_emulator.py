"""A test against a real Service Bus protocol peer: ``pytest test_tasks_on_emulator.py``.

Installing ``boilermaker-emulator`` gives pytest two fixtures:
``servicebus_emulator`` (one emulator for the test session, in a child
process) and ``servicebus_queue`` (a fresh queue for each test). The real
``azure-servicebus`` SDK and Boilermaker's Service Bus transport run against
it exactly as against Azure.
"""

import pytest

from boilermaker import Boilermaker, retries
from boilermaker.service_bus import AzureServiceBus

pytestmark = pytest.mark.asyncio


async def test_publish_and_run(servicebus_emulator, servicebus_queue) -> None:
    broker = AzureServiceBus.from_connection_string(
        servicebus_emulator.connection_string, servicebus_queue
    )
    app = Boilermaker({"greeted": []}, broker)

    @app.task(policy=retries.NoRetry())
    async def greet(state, name: str) -> None:
        state["greeted"].append(name)

    try:
        await app.apply_async(greet, "world")
        assert servicebus_emulator.counts(servicebus_queue).active == 1
        await app.run_until_idle(timeout=30)
    finally:
        await app.close()

    assert app.state["greeted"] == ["world"]
    assert servicebus_emulator.counts(servicebus_queue).active == 0

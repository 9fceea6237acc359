"""Testing tasks with the in-memory broker: ``pytest test_tasks.py``.

``InMemoryBroker`` keeps Service Bus semantics (peek-lock, delivery counts,
dead-lettering, scheduled messages), so a test publishes exactly as
production code does and ``run_until_idle`` runs a worker until the queue is
drained, retries included. Needs pytest and pytest-asyncio.
"""

import pytest

from boilermaker import Boilermaker, RetryException, retries
from boilermaker.memory import InMemoryBroker

pytestmark = pytest.mark.asyncio


def make_app() -> Boilermaker:
    app = Boilermaker({"sent": []}, InMemoryBroker())

    @app.task(policy=retries.RetryPolicy(max_tries=3, delay=0))
    async def send_welcome_email(state, address: str) -> None:
        if "@" not in address:
            raise ValueError(f"not an address: {address}")
        if address.startswith("flaky"):
            state.setdefault("tries", 0)
            state["tries"] += 1
            if state["tries"] < 2:
                raise RetryException("mail server busy")
        state["sent"].append(address)

    return app


async def test_the_task_runs() -> None:
    app = make_app()
    await app.apply_async("send_welcome_email", "ada@example.com")
    await app.run_until_idle()
    assert app.state["sent"] == ["ada@example.com"]


async def test_a_retry_runs_again() -> None:
    app = make_app()
    await app.apply_async("send_welcome_email", "flaky@example.com")
    worker = await app.run_until_idle()
    assert app.state["sent"] == ["flaky@example.com"]
    assert worker.stats.retried == 1


async def test_a_failure_is_dead_lettered() -> None:
    app = make_app()
    await app.apply_async("send_welcome_email", "nobody")
    await app.run_until_idle()
    (dead,) = app.service_bus_client.dead_letters()
    assert dead.dead_letter_reason == "TaskFailed"
    assert dead.dead_letter_description == "ValueError: not an address: nobody"


async def test_arguments_are_checked_when_publishing() -> None:
    app = make_app()
    with pytest.raises(TypeError):
        await app.apply_async("send_welcome_email")  # the address is missing
    assert app.service_bus_client.counts().active == 0

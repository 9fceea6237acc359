"""The broker contract, unchanged, on ``AzureServiceBus`` against the emulator (real SDK).

Each test gets an empty queue: one queue and one broker per class, purged
before every test, so the SDK's link set-up (about a second per sender) is
paid once per class rather than once per test.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from boilermaker.emulator import QueueSettings, ServiceBusEmulator
from boilermaker.service_bus import AzureServiceBus
from tests.contracts.broker_contract import BrokerContract

pytestmark = pytest.mark.asyncio(loop_scope="class")

LOCK = 1.0
MAX_DELIVERIES = 3


@pytest_asyncio.fixture(scope="class", loop_scope="class")
async def class_broker(
    request: pytest.FixtureRequest, servicebus_emulator: ServiceBusEmulator
) -> AsyncIterator[tuple[str, AzureServiceBus]]:
    """A queue (with the test class's ``queue_settings``) and a broker on it, per class."""
    name = f"contract-{uuid.uuid4().hex[:12]}"
    settings: dict[str, Any] = getattr(request.cls, "queue_settings", {})
    servicebus_emulator.create_queue(
        QueueSettings(name=name, lock_duration=LOCK, max_delivery_count=MAX_DELIVERIES, **settings)
    )
    broker = AzureServiceBus.from_connection_string(servicebus_emulator.connection_string, name)
    yield name, broker
    await broker.close()
    servicebus_emulator.delete_queue(name)


class TestAzureServiceBusContract(BrokerContract):
    queue_settings: dict[str, Any] = {}

    @pytest.fixture
    def broker_lock_duration(self) -> float:
        return LOCK

    @pytest.fixture
    def broker_max_delivery_count(self) -> int:
        return MAX_DELIVERIES

    @pytest.fixture
    def broker(
        self, class_broker: tuple[str, AzureServiceBus], servicebus_emulator: ServiceBusEmulator
    ) -> AzureServiceBus:
        name, broker = class_broker
        servicebus_emulator.purge_queue(name)
        return broker


class TestAzureServiceBusDuplicateDetectionContract(TestAzureServiceBusContract):
    """The contract on a queue with duplicate detection, where it can change anything.

    Dropping a repeated id, and not taking a redelivery (same id) for a
    duplicate. The other tests would repeat the plain run at about 2.5 s
    each of SDK link set-up and tear-down.
    """

    queue_settings = {"requires_duplicate_detection": True, "duplicate_detection_window": 60}

    test_send_receive_complete = None  # type: ignore[assignment]
    test_batch_send_of_many_messages_in_one_call = None  # type: ignore[assignment]
    test_sequence_numbers_increase_in_send_order = None  # type: ignore[assignment]
    test_properties_message_id_and_content_type_round_trip = None  # type: ignore[assignment]
    test_oversize_message_is_refused = None  # type: ignore[assignment]
    test_scheduled_message_is_invisible_until_its_time = None  # type: ignore[assignment]
    test_cancel_scheduled = None  # type: ignore[assignment]
    test_dead_letter_is_readable_with_reason_and_description = None  # type: ignore[assignment]
    test_max_delivery_count_moves_message_to_dead_letter = None  # type: ignore[assignment]
    test_lock_expiry_redelivers_and_stale_settlement_loses_the_lock = None  # type: ignore[assignment]
    test_renew_lock_extends_past_the_original_expiry = None  # type: ignore[assignment]
    test_peek_does_not_lock = None  # type: ignore[assignment]
    test_receive_and_delete_mode = None  # type: ignore[assignment]
    test_two_receivers_never_get_the_same_message = None  # type: ignore[assignment]

    @pytest.fixture
    def broker_duplicate_detection(self) -> bool:
        return True

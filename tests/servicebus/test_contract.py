"""The broker contract, unchanged, on ``AzureServiceBus`` against the emulator (real SDK)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from boilermaker.service_bus import AzureServiceBus
from tests.contracts.broker_contract import BrokerContract

LOCK = 1.5
MAX_DELIVERIES = 3


class TestAzureServiceBusContract(BrokerContract):
    @pytest.fixture
    def broker_lock_duration(self) -> float:
        return LOCK

    @pytest.fixture
    def broker_max_delivery_count(self) -> int:
        return MAX_DELIVERIES

    @pytest.fixture
    async def broker(
        self,
        new_queue: Callable[..., str],
        make_broker: Callable[..., AzureServiceBus],
    ) -> AsyncIterator[AzureServiceBus]:
        name = new_queue(lock_duration=LOCK, max_delivery_count=MAX_DELIVERIES)
        broker = make_broker(name)
        yield broker
        await broker.close()


class TestAzureServiceBusDuplicateDetectionContract(TestAzureServiceBusContract):
    @pytest.fixture
    def broker_duplicate_detection(self) -> bool:
        return True

    @pytest.fixture
    async def broker(
        self,
        new_queue: Callable[..., str],
        make_broker: Callable[..., AzureServiceBus],
    ) -> AsyncIterator[AzureServiceBus]:
        name = new_queue(
            lock_duration=LOCK,
            max_delivery_count=MAX_DELIVERIES,
            requires_duplicate_detection=True,
            duplicate_detection_window=60,
        )
        broker = make_broker(name)
        yield broker
        await broker.close()

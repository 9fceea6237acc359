"""Behaviour every Broker and ResultsStore implementation must show.

The suites are plain classes; a test module subclasses one and supplies its
fixtures (see each class's docstring), e.g.::

    from tests.contracts.broker_contract import BrokerContract

    class TestServiceBusBroker(BrokerContract):
        @pytest.fixture
        async def broker(self, ...): ...
"""

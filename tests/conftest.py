"""Fixtures shared across test packages. Add yours by appending; keep each one small.

``tests`` is a package so that suites can import the reusable contracts
(``from tests.contracts.broker_contract import BrokerContract``).
"""

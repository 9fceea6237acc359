"""Azurite for the test suites: the launcher lives in ``boilermaker.storage.azurite``."""

from boilermaker.storage.azurite import ACCOUNT_KEY, ACCOUNT_NAME, Azurite, AzuriteError

__all__ = ["ACCOUNT_KEY", "ACCOUNT_NAME", "Azurite", "AzuriteError"]

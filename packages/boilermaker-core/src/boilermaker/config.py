"""Settings read from the environment. Importing this module imports nothing from Azure.

Every field can be passed directly or read from its environment variable
(shown in brackets). A value that cannot be parsed is reported with the name
of the variable it came from.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from boilermaker.exceptions import BoilermakerError


class ConfigError(BoilermakerError, ValueError):
    """A setting is missing or malformed; the message names it."""


_ENV: dict[str, str] = {
    "service_bus_namespace_url": "SERVICE_BUS_NAMESPACE_URL",
    "service_bus_queue_name": "SERVICE_BUS_QUEUE_NAME",
    "service_bus_connection_string": "SERVICE_BUS_CONNECTION_STRING",
    "azure_credential_include_msi": "AZURE_CREDENTIAL_INCLUDE_MSI",
    "max_message_size": "BOILERMAKER_MAX_MESSAGE_SIZE",
    "concurrency": "BOILERMAKER_CONCURRENCY",
    "prefetch": "BOILERMAKER_PREFETCH",
    "max_lock_renewal_seconds": "BOILERMAKER_MAX_LOCK_RENEWAL",
    "shutdown_grace_seconds": "BOILERMAKER_SHUTDOWN_GRACE",
    "results_storage_url": "BOILERMAKER_RESULTS_STORAGE_URL",
    "results_connection_string": "BOILERMAKER_RESULTS_CONNECTION_STRING",
    "results_container": "BOILERMAKER_RESULTS_CONTAINER",
}


class Config(BaseModel):
    """Boilermaker settings; ``Config()`` loads them from environment variables.

    [SERVICE_BUS_NAMESPACE_URL] namespace URL for ``DefaultAzureCredential``;
    [SERVICE_BUS_CONNECTION_STRING] a connection string instead (also serves the
    local emulator); [SERVICE_BUS_QUEUE_NAME] the work queue;
    [AZURE_CREDENTIAL_INCLUDE_MSI] let ``DefaultAzureCredential`` try managed
    identity; [BOILERMAKER_MAX_MESSAGE_SIZE] largest message in bytes (256 KB,
    the Standard tier limit); [BOILERMAKER_CONCURRENCY] tasks in flight per
    worker; [BOILERMAKER_PREFETCH] messages buffered ahead (default twice the
    concurrency); [BOILERMAKER_MAX_LOCK_RENEWAL] how long a task's message lock
    is kept alive; [BOILERMAKER_SHUTDOWN_GRACE] seconds in-flight tasks get on
    shutdown; [BOILERMAKER_RESULTS_*] the blob results store.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    service_bus_namespace_url: str | None = None
    service_bus_queue_name: str | None = None
    service_bus_connection_string: SecretStr | None = None
    service_bus_credential: Any = Field(default=None, exclude=True)
    azure_credential_include_msi: bool = False
    max_message_size: int = Field(default=256 * 1024, ge=1024)
    concurrency: int = Field(default=16, ge=1, le=10_000)
    prefetch: int | None = Field(default=None, ge=0)
    max_lock_renewal_seconds: float = Field(default=3600.0, gt=0)
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)
    results_storage_url: str | None = None
    results_connection_string: SecretStr | None = None
    results_container: str = "boilermaker"

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, data)) from None

    @model_validator(mode="before")
    @classmethod
    def _from_environment(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        merged = dict(data)
        for field, var in _ENV.items():
            if field not in merged and var in os.environ and os.environ[var] != "":
                merged[field] = os.environ[var]
        return merged

    def az_credential(self) -> Any:
        """The Azure credential for Service Bus: ``service_bus_credential`` if given,
        else a ``DefaultAzureCredential`` (managed identity only with
        ``azure_credential_include_msi``). Needs ``azure-identity``."""
        if self.service_bus_credential is not None:
            return self.service_bus_credential
        try:
            from azure.identity.aio import DefaultAzureCredential
        except ImportError:
            raise ConfigError(
                "az_credential() needs azure-identity: pip install boilermaker-servicebus "
                "(or azure-identity)"
            ) from None
        return DefaultAzureCredential(
            exclude_managed_identity_credential=not self.azure_credential_include_msi
        )

    @property
    def effective_prefetch(self) -> int:
        """Prefetch to use: the setting, or twice the concurrency."""
        return self.prefetch if self.prefetch is not None else 2 * self.concurrency


def _describe(exc: ValidationError, given: dict[str, Any]) -> str:
    parts = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else "?"
        source = (
            f"argument {field}"
            if field in given
            else f"environment variable {_ENV.get(field, field.upper())}"
        )
        parts.append(f"{source}: {err['msg']}")
    return "invalid Boilermaker configuration: " + "; ".join(parts)

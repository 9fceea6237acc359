"""Where to connect and with what credentials: a connection string or a namespace URL.

A connection string (``SERVICE_BUS_CONNECTION_STRING``) also serves the local
emulator (``...;UseDevelopmentEmulator=true``). A namespace URL takes a
credential, or uses ``DefaultAzureCredential`` (azure-identity: ``pip install
"boilermaker-core[servicebus,identity]"``) with managed identity excluded
unless ``AZURE_CREDENTIAL_INCLUDE_MSI`` is set. Publishers and the worker
transport both connect through :class:`ServiceBusTarget`.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from azure.servicebus.aio import ServiceBusClient

from boilermaker.config import Config, ConfigError

_TRUE = frozenset({"1", "true", "yes", "on"})

#: What to install for ``DefaultAzureCredential`` when no credential is passed.
IDENTITY_HINT = 'pip install "boilermaker-core[servicebus,identity]"'


def _include_msi(explicit: bool | None) -> bool:
    if explicit is not None:
        return explicit
    return os.environ.get("AZURE_CREDENTIAL_INCLUDE_MSI", "").strip().lower() in _TRUE


def _identity_installed() -> bool:
    try:
        return importlib.util.find_spec("azure.identity") is not None
    except ImportError:
        return False


def _identity_missing() -> ImportError:
    return ImportError(
        "SERVICE_BUS_NAMESPACE_URL without a credential signs in with DefaultAzureCredential, "
        f"from azure-identity: {IDENTITY_HINT}, or pass credential=",
        name="azure.identity",
    )


def parse_connection_string(value: str) -> dict[str, str]:
    """The key=value pairs of a Service Bus connection string, validated.

    Errors name the setting and the malformed part, never the key.
    """
    parts: dict[str, str] = {}
    for item in value.split(";"):
        item = item.strip()
        if not item:
            continue
        key, sep, val = item.partition("=")
        if not sep:
            raise ConfigError(
                f"SERVICE_BUS_CONNECTION_STRING: segment {key!r} is not of the form Key=Value"
            )
        parts[key.strip()] = val.strip()
    if "Endpoint" not in parts:
        raise ConfigError("SERVICE_BUS_CONNECTION_STRING: no Endpoint=sb://... segment")
    if not parts["Endpoint"].startswith("sb://"):
        raise ConfigError(
            "SERVICE_BUS_CONNECTION_STRING: Endpoint must start with sb://, "
            f"got {parts['Endpoint']!r}"
        )
    has_key = "SharedAccessKeyName" in parts and "SharedAccessKey" in parts
    if not has_key and "SharedAccessSignature" not in parts:
        raise ConfigError(
            "SERVICE_BUS_CONNECTION_STRING: needs SharedAccessKeyName and SharedAccessKey "
            "(or SharedAccessSignature)"
        )
    return parts


@dataclass(frozen=True, slots=True)
class ServiceBusTarget:
    """How to reach one namespace; makes SDK clients on demand.

    Checked at construction: a malformed connection string, a URL without a
    host, or a namespace URL with no credential when azure-identity (for
    ``DefaultAzureCredential``) is not installed.
    """

    namespace_url: str | None = None
    connection_string: str | None = None
    credential: Any = None
    include_msi: bool | None = None

    def __post_init__(self) -> None:
        if self.connection_string:
            parse_connection_string(self.connection_string)
            return
        if not self.namespace_url:
            raise ConfigError(
                "no Service Bus to connect to: set SERVICE_BUS_CONNECTION_STRING, or "
                "SERVICE_BUS_NAMESPACE_URL (https://<namespace>.servicebus.windows.net/)"
            )
        parsed = urlparse(
            self.namespace_url if "://" in self.namespace_url else f"https://{self.namespace_url}"
        )
        if not parsed.hostname:
            raise ConfigError(f"SERVICE_BUS_NAMESPACE_URL: {self.namespace_url!r} has no host name")
        if self.credential is None and not _identity_installed():
            raise _identity_missing()

    @classmethod
    def from_config(cls, config: Config) -> ServiceBusTarget:
        """Where :class:`boilermaker.config.Config` (environment variables) says to connect."""
        secret = config.service_bus_connection_string
        return cls(
            namespace_url=config.service_bus_namespace_url,
            connection_string=secret.get_secret_value() if secret else None,
            credential=config.service_bus_credential,
            include_msi=config.azure_credential_include_msi,
        )

    @property
    def fully_qualified_namespace(self) -> str:
        """The namespace host name (for logs)."""
        if self.connection_string:
            endpoint = parse_connection_string(self.connection_string)["Endpoint"]
            return urlparse(endpoint).netloc
        url = self.namespace_url or ""
        return urlparse(url if "://" in url else f"https://{url}").netloc

    def client(self, *, retry_total: int | None = None) -> tuple[ServiceBusClient, Any]:
        """A new SDK client, and the credential it owns (to close with it), if any.

        ``retry_total=0`` turns the SDK's own retries off, for clients whose
        caller owns the retry policy (publishing: core's ``publish_attempts``).
        The SDK retries authentication failures too, which would otherwise
        take about 15 s to report a wrong key.
        """
        options: dict[str, Any] = {} if retry_total is None else {"retry_total": retry_total}
        if self.connection_string:
            return ServiceBusClient.from_connection_string(self.connection_string, **options), None
        credential = self.credential
        owned = None
        if credential is None:
            try:
                from azure.identity.aio import DefaultAzureCredential
            except ImportError as exc:
                raise _identity_missing() from exc

            credential = DefaultAzureCredential(
                exclude_managed_identity_credential=not _include_msi(self.include_msi)
            )
            owned = credential
        return ServiceBusClient(self.fully_qualified_namespace, credential, **options), owned

"""Where to connect and with what credentials: a connection string or a namespace URL.

A connection string (``SERVICE_BUS_CONNECTION_STRING``) also serves the local
emulator (``...;UseDevelopmentEmulator=true``). A namespace URL takes a
credential, or uses ``DefaultAzureCredential`` (azure-identity: ``pip install
"boilermaker-core[servicebus,identity]"``) with managed identity excluded
unless ``AZURE_CREDENTIAL_INCLUDE_MSI`` is set. Publishers and the worker
transport both connect through :class:`ServiceBusTarget`.

Where a credential is taken, a credential factory is too (a zero-argument
callable returning one, as 1.4.1 took: ``lambda: DefaultAzureCredential()``);
:func:`as_config` turns the dict the published examples pass to
``from_config`` into a :class:`~boilermaker.config.Config`.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
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


def is_credential(value: Any) -> bool:
    """Whether ``value`` is a credential the SDK signs in with: a token credential (it
    has ``get_token`` or ``get_token_info``), a SAS credential or a named key
    credential. A credential class is not one (calling it makes one: a factory)."""
    if isinstance(value, type):
        return False
    return (
        hasattr(value, "get_token")
        or hasattr(value, "get_token_info")
        or isinstance(value, AzureNamedKeyCredential | AzureSasCredential)
    )


def is_credential_factory(value: Any) -> bool:
    """Whether ``value`` is a credential factory: callable, and not itself a credential
    (1.4.1's ``credential_factory``, the toolbox's ``CredentialFactory``)."""
    return callable(value) and not is_credential(value)


def _check_credential(value: Any, what: str) -> None:
    """Refuse what is plainly no credential: text or bytes (a connection string or a
    key in the wrong place), or a factory that needs arguments."""
    if isinstance(value, str | bytes):
        raise ConfigError(
            f"{what}: got a {type(value).__name__}, not a credential or a zero-argument "
            "callable returning one (pass a connection string as connection_string=)"
        )
    if not is_credential_factory(value):
        return  # a credential (or None); the SDK checks what it needs of it
    try:
        inspect.signature(value).bind()
    except TypeError:
        raise ConfigError(
            f"{what}: a credential factory is called with no arguments; {_name(value)} needs some"
        ) from None
    except ValueError:  # no signature to inspect (a builtin): take it on trust
        pass


def _name(value: Any) -> str:
    return getattr(value, "__qualname__", None) or type(value).__name__


def _credential_label(value: Any) -> str | None:
    """What a repr shows of a credential: its type (and key name), never a secret."""
    if value is None:
        return None
    if isinstance(value, AzureNamedKeyCredential):
        return f"AzureNamedKeyCredential(name={value.named_key.name!r})"
    if is_credential_factory(value):
        return f"factory {_name(value)}"
    return type(value).__name__


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

    ``credential`` is a credential or a credential factory (a zero-argument
    callable returning one, called each time a client is made; the client
    owns what it returns and closes it, as 1.4.1's connection pool did).

    Checked at construction: a malformed connection string, a URL without a
    host, text given as a credential, a factory that needs arguments, or a
    namespace URL with no credential
    when azure-identity (for ``DefaultAzureCredential``) is not installed.
    Its ``repr`` shows the namespace and key name, never a key.
    """

    namespace_url: str | None = None
    connection_string: str | None = None
    credential: Any = None
    include_msi: bool | None = None

    def __post_init__(self) -> None:
        _check_credential(self.credential, "credential")
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

    def __repr__(self) -> str:
        fields = [f"namespace={self.fully_qualified_namespace!r}"]
        if self.key_name is not None:
            fields.append(f"key_name={self.key_name!r}")
        label = _credential_label(self.credential)
        if label is not None:
            fields.append(f"credential={label!r}")
        elif not self.connection_string:
            fields.append("credential='DefaultAzureCredential'")
        return f"{type(self).__name__}({', '.join(fields)})"

    @property
    def key_name(self) -> str | None:
        """The shared access key's name (of the connection string or a named key
        credential), if there is one; never the key."""
        if self.connection_string:
            return parse_connection_string(self.connection_string).get("SharedAccessKeyName")
        if isinstance(self.credential, AzureNamedKeyCredential):
            return self.credential.named_key.name
        return None

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
        if is_credential_factory(credential):
            made = credential()
            if not is_credential(made):
                raise ConfigError(
                    f"credential factory {_name(credential)} returned a "
                    f"{type(made).__name__}, not a credential"
                )
            credential = owned = made
        elif credential is None:
            try:
                from azure.identity.aio import DefaultAzureCredential
            except ImportError as exc:
                raise _identity_missing() from exc

            credential = DefaultAzureCredential(
                exclude_managed_identity_credential=not _include_msi(self.include_msi)
            )
            owned = credential
        return ServiceBusClient(self.fully_qualified_namespace, credential, **options), owned


#: Keys of a dict given as a configuration that are not Config field names: the
#: spellings of the published examples (``{"connection_string": ..., "queue_name": ...}``).
CONFIG_KEYS: dict[str, str] = {
    "connection_string": "service_bus_connection_string",
    "queue_name": "service_bus_queue_name",
    "namespace_url": "service_bus_namespace_url",
    "credential": "service_bus_credential",
    "credential_factory": "service_bus_credential",
    "include_msi": "azure_credential_include_msi",
}


def as_config(config: Config | Mapping[str, Any]) -> Config:
    """``config`` itself, or a :class:`~boilermaker.config.Config` from a dict.

    A dict's keys are Config field names or the shorter names of
    :data:`CONFIG_KEYS`; settings it does not give are read from the
    environment, as ``Config()`` does. An unknown key is a
    :class:`~boilermaker.config.ConfigError` naming it (never a value).
    """
    if isinstance(config, Config):
        return config
    if not isinstance(config, Mapping):
        raise ConfigError(f"expected a Config or a dict of settings, got a {type(config).__name__}")
    fields: dict[str, Any] = {}
    unknown: list[str] = []
    for key, value in config.items():
        name = CONFIG_KEYS.get(str(key), str(key))
        if name not in Config.model_fields:
            unknown.append(repr(key))
        elif name in fields:
            raise ConfigError(f"configuration key {key!r} sets {name}, which another key set")
        else:
            fields[name] = value
    if unknown:
        known = ", ".join(sorted(CONFIG_KEYS))
        raise ConfigError(
            f"unknown configuration key(s) {', '.join(unknown)}: use Config field names "
            f"(such as service_bus_queue_name) or {known}"
        )
    return Config(**fields)


#: A zero-argument callable that returns a credential (1.4.1's ``credential_factory``).
CredentialFactory = Callable[[], Any]

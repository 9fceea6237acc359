"""Settings, and the environment variables they are read from, defined once.

Every field of :class:`Config` can be passed directly or read from its
environment variable (:data:`ENVIRONMENT` lists them, with older names still
read). A value that cannot be parsed is reported with the name of the
variable it came from, never with the value. Importing this module imports
nothing from Azure.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from boilermaker.exceptions import BoilermakerError


class ConfigError(BoilermakerError, ValueError):
    """A setting is missing or malformed; the message names it."""


def _env(var: str, *aliases: str) -> dict[str, Any]:
    """A field's environment variable (and older names it is also read from)."""
    return {"env": var, "aliases": list(aliases)}


class Config(BaseModel):
    """Boilermaker settings; ``Config()`` reads each from its environment variable.

    This class is the one place settings and their environment variables are
    defined (see :data:`ENVIRONMENT`); worker settings, the transports, the
    results store and the CLI read through it. A value given as an argument
    wins over the environment.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    service_bus_namespace_url: str | None = Field(
        None,
        description="Service Bus namespace URL, signed in with DefaultAzureCredential.",
        json_schema_extra=_env("SERVICE_BUS_NAMESPACE_URL"),
    )
    service_bus_queue_name: str | None = Field(
        None, description="The work queue.", json_schema_extra=_env("SERVICE_BUS_QUEUE_NAME")
    )
    service_bus_connection_string: SecretStr | None = Field(
        None,
        description="A connection string instead of the namespace URL (also the local emulator's).",
        json_schema_extra=_env("SERVICE_BUS_CONNECTION_STRING"),
    )
    service_bus_credential: Any = Field(default=None, exclude=True)
    azure_credential_include_msi: bool = Field(
        False,
        description="Let DefaultAzureCredential try managed identity (off for local runs).",
        json_schema_extra=_env("AZURE_CREDENTIAL_INCLUDE_MSI"),
    )
    max_message_size: int = Field(
        256 * 1024,
        ge=1024,
        description="Largest message in bytes (256 KB: the Standard tier's limit).",
        json_schema_extra=_env("BOILERMAKER_MAX_MESSAGE_SIZE"),
    )
    concurrency: int = Field(
        16,
        ge=1,
        le=10_000,
        description="Tasks a worker runs at once.",
        json_schema_extra=_env("BOILERMAKER_CONCURRENCY"),
    )
    prefetch: int | None = Field(
        None,
        ge=0,
        description="Messages a worker buffers ahead (default: twice the concurrency).",
        json_schema_extra=_env("BOILERMAKER_PREFETCH"),
    )
    max_lock_renewal_seconds: float = Field(
        3600.0,
        gt=0,
        description=(
            "How long a running task's message lock is kept alive; a task with no time "
            "limit still running then is cancelled before its lock can lapse."
        ),
        json_schema_extra=_env("BOILERMAKER_MAX_LOCK_RENEWAL"),
    )
    shutdown_grace_seconds: float = Field(
        30.0,
        ge=0,
        description="Seconds in-flight tasks get to finish when a worker stops.",
        json_schema_extra=_env("BOILERMAKER_SHUTDOWN_GRACE"),
    )
    task_timeout_seconds: float | None = Field(
        None,
        gt=0,
        description="Time limit of tasks whose registration sets none (none by default).",
        json_schema_extra=_env("BOILERMAKER_TASK_TIMEOUT"),
    )
    results_storage_url: str | None = Field(
        None,
        description="Blob Storage account URL of the results store (DefaultAzureCredential).",
        json_schema_extra=_env("BOILERMAKER_RESULTS_STORAGE_URL", "BOILERMAKER_STORAGE_URL"),
    )
    results_connection_string: SecretStr | None = Field(
        None,
        description="A Blob Storage connection string instead (Azurite's, locally).",
        json_schema_extra=_env(
            "BOILERMAKER_RESULTS_CONNECTION_STRING", "BOILERMAKER_STORAGE_CONNECTION_STRING"
        ),
    )
    results_container: str = Field(
        "boilermaker",
        description="The results store's container.",
        json_schema_extra=_env("BOILERMAKER_RESULTS_CONTAINER", "BOILERMAKER_CONTAINER"),
    )
    log_format: str | None = Field(
        None,
        pattern="(?i)^(json|text)$",
        description="Log lines as json or text on stderr (unset: leave logging alone).",
        json_schema_extra=_env("BOILERMAKER_LOG_FORMAT"),
    )
    log_level: str = Field(
        "INFO",
        description="Level of the boilermaker loggers when BOILERMAKER_LOG_FORMAT is set.",
        json_schema_extra=_env("BOILERMAKER_LOG_LEVEL"),
    )

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
        for field in ENVIRONMENT_FIELDS:
            if field not in merged:
                found = environment_value(field)
                if found is not None:
                    merged[field] = found[1]
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


def _describe(exc: ValidationError, given: dict[str, Any]) -> str:
    parts = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else "?"
        if field in given:
            source = f"argument {field}"
        else:
            found = environment_value(field) if field in ENVIRONMENT_FIELDS else None
            source = f"environment variable {found[0] if found else field.upper()}"
        parts.append(f"{source}: {err['msg']}")
    return "invalid Boilermaker configuration: " + "; ".join(parts)


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting: its Config field, environment variable (and aliases), type,
    default and meaning."""

    field: str
    env: str
    aliases: tuple[str, ...]
    type: str
    default: Any
    description: str

    @property
    def names(self) -> tuple[str, ...]:
        """The variable, then its aliases, in the order they are looked up."""
        return (self.env, *self.aliases)


def _settings() -> dict[str, Setting]:
    out: dict[str, Setting] = {}
    for name, info in Config.model_fields.items():
        extra = info.json_schema_extra
        if not isinstance(extra, dict) or "env" not in extra:
            continue
        aliases = extra.get("aliases") or []
        annotation = getattr(info.annotation, "__name__", None) or str(info.annotation)
        out[name] = Setting(
            field=name,
            env=str(extra["env"]),
            aliases=tuple(str(a) for a in aliases),  # type: ignore[union-attr]
            type=annotation.replace("typing.", "").replace("pydantic.types.", ""),
            default=info.default,
            description=info.description or "",
        )
    return out


#: Every setting read from the environment, by Config field.
ENVIRONMENT: dict[str, Setting] = _settings()
ENVIRONMENT_FIELDS = frozenset(ENVIRONMENT)


def environment_value(
    field: str, environ: Mapping[str, str] | None = None
) -> tuple[str, str] | None:
    """``(variable, value)`` of the first of the setting's variables that is set and
    not empty, or None."""
    env = os.environ if environ is None else environ
    for name in ENVIRONMENT[field].names:
        value = env.get(name, "")
        if value.strip():
            return name, value
    return None


def env_var(field: str) -> str:
    """The environment variable of a Config field (its main name)."""
    return ENVIRONMENT[field].env


#: Set by ``boilermaker worker --processes N`` in each worker process: its index, 0..N-1.
WORKER_INDEX_ENV = "BOILERMAKER_WORKER_INDEX"
#: Where the Azurite launcher (tests, ``make demo``) finds ``azurite-blob``, if not in
#: ``node_modules/.bin`` or on PATH.
AZURITE_ENV = "BOILERMAKER_AZURITE"

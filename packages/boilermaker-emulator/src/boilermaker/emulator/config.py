"""Queue settings, connection limits, and the reader for Microsoft's emulator JSON config.

A config file written for Microsoft's emulator works here unchanged: the
reader walks ``UserConfig -> Namespaces -> Queues`` and takes each queue's
``Name`` and the ``Properties`` it understands. Unknown properties (sessions,
forwarding, topics) are ignored with a log line rather than rejected, so a
richer config still starts.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_KEY",
    "DEFAULT_KEY_NAME",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "ConfigError",
    "ConnectionLimits",
    "QueueSettings",
    "load_config_file",
    "parse_config",
    "parse_duration",
    "validate_queue_name",
]

logger = logging.getLogger("boilermaker.emulator")

#: Key name of the namespace's shared access policy (same as Azure's default policy).
DEFAULT_KEY_NAME = "RootManageSharedAccessKey"
#: The fixed development key the emulator verifies SAS tokens against by default.
DEFAULT_KEY = "Qm9pbGVybWFrZXJFbXVsYXRvckRldmVsb3BtZW50S2V5MDA="
#: Standard tier maximum message size: 256 KB.
DEFAULT_MAX_MESSAGE_SIZE = 262_144
#: Seconds a new socket has to get through the protocol headers, SASL and ``open``.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
#: Seconds without a frame after which an open connection is closed.
DEFAULT_IDLE_TIMEOUT = 240.0
#: Connections served at once; further ones are refused with an AMQP error.
DEFAULT_MAX_CONNECTIONS = 1000

_QUEUE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-/~]{0,259}$")


class ConfigError(ValueError):
    """A queue setting or config file that cannot be used."""


def validate_queue_name(name: str) -> str:
    """Return ``name`` if it is a usable queue name, else raise :class:`ConfigError`.

    Names follow Azure's rules loosely: letters, digits, ``.``, ``-``, ``_``,
    ``/`` and ``~``, starting with a letter or digit, and no ``$`` (reserved
    for sub-queues such as ``$DeadLetterQueue``).
    """
    if not isinstance(name, str) or not _QUEUE_NAME.match(name) or name.endswith("/"):
        raise ConfigError(f"invalid queue name {name!r}")
    return name


@dataclass(frozen=True)
class QueueSettings:
    """Settings of one queue; durations are in seconds.

    Defaults match a Standard-tier queue created with Azure's defaults,
    except the TTL, which is unlimited.
    """

    name: str
    #: How long a peek-lock receiver holds a message before it is redelivered.
    lock_duration: float = 60.0
    #: Deliveries after which a message moves to the dead-letter sub-queue.
    max_delivery_count: int = 10
    #: Time to live of messages that carry none; ``None`` means forever.
    default_ttl: float | None = None
    #: Move expired messages to the dead-letter sub-queue instead of dropping them.
    dead_letter_on_expiration: bool = False
    #: Drop (while accepting) a message whose ``message_id`` was seen within the window.
    requires_duplicate_detection: bool = False
    #: How long a ``message_id`` is remembered for duplicate detection.
    duplicate_detection_window: float = 600.0
    #: Largest transfer (single message or whole batch) accepted, in bytes.
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        validate_queue_name(self.name)
        if not 0 < self.lock_duration <= 300:
            raise ConfigError(f"queue {self.name!r}: lock_duration must be in (0, 300] seconds")
        if self.max_delivery_count < 1:
            raise ConfigError(f"queue {self.name!r}: max_delivery_count must be at least 1")
        if self.default_ttl is not None and self.default_ttl <= 0:
            raise ConfigError(f"queue {self.name!r}: default_ttl must be positive or None")
        if self.duplicate_detection_window <= 0:
            raise ConfigError(f"queue {self.name!r}: duplicate_detection_window must be positive")
        if self.max_message_size < 1024:
            raise ConfigError(f"queue {self.name!r}: max_message_size must be at least 1024 bytes")

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-friendly values (used by the control channel and the store)."""
        return {
            "name": self.name,
            "lock_duration": self.lock_duration,
            "max_delivery_count": self.max_delivery_count,
            "default_ttl": self.default_ttl,
            "dead_letter_on_expiration": self.dead_letter_on_expiration,
            "requires_duplicate_detection": self.requires_duplicate_detection,
            "duplicate_detection_window": self.duplicate_detection_window,
            "max_message_size": self.max_message_size,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QueueSettings:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = set(cls.__dataclass_fields__) - {"extra"}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown queue setting(s): {sorted(unknown)}")
        return cls(**data)


@dataclass(frozen=True)
class ConnectionLimits:
    """How long and how many connections the emulator serves; durations are in seconds.

    The defaults (:data:`DEFAULT_HANDSHAKE_TIMEOUT`, :data:`DEFAULT_IDLE_TIMEOUT`,
    :data:`DEFAULT_MAX_CONNECTIONS`) suit the SDK with its own defaults: it
    opens a connection in well under a second, and an idle SDK handler pumps
    its connection at least every 30 s, sending the empty frames the
    advertised idle time-out asks for.
    """

    #: A socket that has not sent the protocol headers, finished SASL and sent
    #: its ``open`` within this time is closed.
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    #: An open connection that sends no frame (not even an empty one) for this
    #: long is closed with ``amqp:resource-limit-exceeded``. The ``open`` sent
    #: to clients advertises half of it, as AMQP recommends, so that a peer
    #: sending heartbeats at the advertised rate is never cut. ``None``: never.
    idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT
    #: Connections served at once; one more is answered with a ``close``
    #: carrying ``amqp:resource-limit-exceeded``.
    max_connections: int = DEFAULT_MAX_CONNECTIONS

    def __post_init__(self) -> None:
        if not (math.isfinite(self.handshake_timeout) and self.handshake_timeout > 0):
            raise ConfigError("handshake_timeout must be a positive number of seconds")
        if self.idle_timeout is not None and not (
            math.isfinite(self.idle_timeout) and self.idle_timeout >= 0.01
        ):
            raise ConfigError("idle_timeout must be at least 0.01 seconds, or None for no limit")
        if isinstance(self.max_connections, bool) or not isinstance(self.max_connections, int):
            raise ConfigError("max_connections must be an integer")
        if self.max_connections < 1:
            raise ConfigError("max_connections must be at least 1")


_DURATION = re.compile(
    r"^(?P<sign>-)?P(?:(?P<days>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<hours>\d+(?:\.\d+)?)H)?(?:(?P<minutes>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)

# .NET TimeSpan.MaxValue as written in Microsoft's samples; means "never expires".
_UNLIMITED_DAYS = 10675199


def parse_duration(text: str) -> float:
    """Parse an ISO-8601 duration such as ``"PT1M"`` or ``"P14D"`` into seconds.

    Also accepts the .NET ``d.hh:mm:ss`` / ``hh:mm:ss`` form that Azure's tools
    print. Years and months are refused: their length is ambiguous.
    """
    value = text.strip()
    match = _DURATION.match(value.upper())
    if match and value.upper() not in ("P", "PT"):
        if match.group("sign"):
            raise ConfigError(f"negative duration {text!r}")
        parts = {k: float(v) for k, v in match.groupdict().items() if v and k != "sign"}
        if not parts:
            raise ConfigError(f"empty duration {text!r}")
        return (
            parts.get("days", 0.0) * 86400
            + parts.get("hours", 0.0) * 3600
            + parts.get("minutes", 0.0) * 60
            + parts.get("seconds", 0.0)
        )
    timespan = re.match(r"^(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2}(?:\.\d+)?)$", value)
    if timespan:
        days, hours, minutes, seconds = timespan.groups()
        return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    raise ConfigError(f"not an ISO-8601 duration: {text!r}")


def _ttl_from(text: str) -> float | None:
    seconds = parse_duration(text)
    return None if seconds >= _UNLIMITED_DAYS * 86400 else seconds


def _bool(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ConfigError(f"{what} must be true or false, got {value!r}")


_PROPERTY_READERS: dict[str, tuple[str, Any]] = {
    "LockDuration": ("lock_duration", parse_duration),
    "MaxDeliveryCount": ("max_delivery_count", int),
    "DefaultMessageTimeToLive": ("default_ttl", _ttl_from),
    "DeadLetteringOnMessageExpiration": ("dead_letter_on_expiration", None),
    "RequiresDuplicateDetection": ("requires_duplicate_detection", None),
    "DuplicateDetectionHistoryTimeWindow": ("duplicate_detection_window", parse_duration),
    "MaxMessageSizeInKilobytes": ("max_message_size", lambda v: int(v) * 1024),
}


def _queue_from(entry: Any, where: str) -> QueueSettings:
    if not isinstance(entry, dict) or "Name" not in entry:
        raise ConfigError(f"{where}: each queue needs a Name")
    name = entry["Name"]
    props = entry.get("Properties") or {}
    if not isinstance(props, dict):
        raise ConfigError(f"{where}: Properties of queue {name!r} must be an object")
    kwargs: dict[str, Any] = {}
    ignored: dict[str, Any] = {}
    for key, value in props.items():
        reader = _PROPERTY_READERS.get(key)
        if reader is None:
            ignored[key] = value
            continue
        attr, convert = reader
        try:
            kwargs[attr] = _bool(value, key) if convert is None else convert(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: queue {name!r}: bad {key}: {exc}") from exc
    if ignored.get("RequiresSession") is True:
        logger.warning("queue %r: sessions are not emulated; RequiresSession ignored", name)
    if ignored:
        logger.debug("queue %r: ignoring properties %s", name, sorted(ignored))
    try:
        return QueueSettings(name=name, extra=ignored, **kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def parse_config(data: Any) -> list[QueueSettings]:
    """Read the queues out of a parsed Microsoft emulator config document.

    Queues of every namespace are served by this one emulator (the SDK
    addresses entities by name only). A queue name given twice is an error.
    """
    if not isinstance(data, dict) or not isinstance(data.get("UserConfig"), dict):
        raise ConfigError("config must be an object with a UserConfig object")
    namespaces = data["UserConfig"].get("Namespaces", [])
    if not isinstance(namespaces, list):
        raise ConfigError("UserConfig.Namespaces must be a list")
    queues: list[QueueSettings] = []
    seen: set[str] = set()
    for n, namespace in enumerate(namespaces):
        if not isinstance(namespace, dict):
            raise ConfigError(f"Namespaces[{n}] must be an object")
        entries = namespace.get("Queues", [])
        if not isinstance(entries, list):
            raise ConfigError(f"Namespaces[{n}].Queues must be a list")
        if namespace.get("Topics"):
            logger.warning("topics are not emulated; Namespaces[%d].Topics ignored", n)
        for q, entry in enumerate(entries):
            settings = _queue_from(entry, f"Namespaces[{n}].Queues[{q}]")
            if settings.name.lower() in seen:
                raise ConfigError(f"queue {settings.name!r} is defined twice")
            seen.add(settings.name.lower())
            queues.append(settings)
    return queues


def load_config_file(path: str | Path) -> list[QueueSettings]:
    """Read a Microsoft emulator JSON config file; raises :class:`ConfigError` on bad input."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config {path} is not valid JSON: {exc}") from exc
    return parse_config(data)

"""Secrets kept out of every output, in one place.

Connection strings carry keys (``SharedAccessKey=``, ``AccountKey=``), SAS
URLs carry signatures (``sig=``) and tokens (``SharedAccessSignature=``), and
Azure SDK errors repeat the URL they failed on. Everything Boilermaker shows
(``repr``, log lines, exception text, CLI output) goes through :func:`redact`
or :func:`redact_url`; :class:`RedactingFilter` does it for log records, and
:func:`install` attaches it to Boilermaker's loggers.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit, urlunsplit

#: Shown in place of a secret.
MASK = "***"

#: ``Key=value`` segments of connection strings whose value is a secret.
_SECRET_KEYS = ("SharedAccessKey", "AccountKey", "SharedAccessSignature", "Password", "sig")
_KEY_VALUE = re.compile(
    r"(?i)\b(" + "|".join(_SECRET_KEYS) + r")\s*=\s*(\"[^\"]*\"|'[^']*'|[^;&\s\"'<>]+)"
)
#: The query string of any URL (SAS tokens live there).
_URL_QUERY = re.compile(r"((?:https?|sb|amqps?)://[^\s?\"'<>]+)\?[^\s\"'<>]*", re.IGNORECASE)
#: An ``Authorization`` header's credentials.
_AUTHORIZATION = re.compile(
    r"(?i)\b(authorization['\"]?\s*[:=]\s*['\"]?)([^'\"\s,}]+(?: [^'\"\s,}]+)?)"
)


def redact(text: str) -> str:
    """``text`` with every secret masked: key and signature values, URL query strings,
    authorization headers."""
    if not text:
        return text
    text = _URL_QUERY.sub(lambda m: f"{m.group(1)}?{MASK}", text)
    text = _KEY_VALUE.sub(lambda m: f"{m.group(1)}={MASK}", text)
    return _AUTHORIZATION.sub(lambda m: f"{m.group(1)}{MASK}", text)


def redact_url(url: str) -> str:
    """``url`` without its query string and password, for showing."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, host = netloc.rsplit("@", 1)
        netloc = f"{user.split(':', 1)[0]}:{MASK}@{host}" if ":" in user else f"{user}@{host}"
    query = MASK if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


class RedactingFilter(logging.Filter):
    """Masks secrets in a record's message and in its exception text."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            formatter = logging.Formatter()
            record.exc_text = redact(formatter.formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


#: The loggers Boilermaker writes to.
LOGGERS = (
    "boilermaker",
    "boilermaker.app",
    "boilermaker.graph",
    "boilermaker.service_bus",
    "boilermaker.storage",
    "boilermaker.cli",
    "boilermaker.emulator",
)

_FILTER = RedactingFilter()


def install() -> None:
    """Attach the redacting filter to Boilermaker's loggers (idempotent)."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)

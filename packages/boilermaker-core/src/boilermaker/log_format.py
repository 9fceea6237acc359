"""An opt-in JSON log formatter printing Boilermaker's lines in the published shape.

    {"event": "[process_data] Begin Task sequence_number=19657", "level": "info",
     "logger": "boilermaker.app", "timestamp": "2024/12/10 15:52:23"}

Extra fields passed with ``extra={...}`` (task_id, attempt, reason) are added.
"""

from __future__ import annotations

import json
import logging
import sys
import time

_STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: event, level, logger, timestamp and extras."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "event": record.getMessage(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "timestamp": time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(record.created)),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = (
                    value if isinstance(value, str | int | float | bool | None) else str(value)
                )
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def configure_json_logging(level: int = logging.INFO, stream: object = None) -> logging.Handler:
    """Send the ``boilermaker`` loggers' records to ``stream`` (stderr) as JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.setFormatter(JsonFormatter())
    return _install(handler, level)


#: Marks the handlers this module put on the ``boilermaker`` logger.
_OURS = "_boilermaker_log_format"


def _install(handler: logging.Handler, level: int) -> logging.Handler:
    """Put ``handler`` on the ``boilermaker`` logger in place of any this module put
    there before (configuring twice, from the environment and then from the
    command line, gives one line per record, not two)."""
    logger = logging.getLogger("boilermaker")
    for old in [h for h in logger.handlers if getattr(h, _OURS, False)]:
        logger.removeHandler(old)
    setattr(handler, _OURS, True)
    logger.addHandler(handler)
    logger.setLevel(level)
    # One line per record even when the root logger has a handler too.
    logger.propagate = False
    return handler


def configure_from_environment() -> logging.Handler | None:
    """Configure logging from ``BOILERMAKER_LOG_FORMAT`` (``json`` or ``text``) and
    ``BOILERMAKER_LOG_LEVEL`` (default INFO), unless the ``boilermaker`` logger
    already has handlers. Workers call this when they start, so a process can
    get the seed's log lines without code changes.
    """
    from boilermaker.config import environment_value

    found = environment_value("log_format")
    fmt = found[1].strip().lower() if found else ""
    if fmt not in ("json", "text"):
        return None
    logger = logging.getLogger("boilermaker")
    if logger.handlers:
        return None
    given = environment_value("log_level")
    level_name = given[1].strip().upper() if given else "INFO"
    level = logging.getLevelName(level_name)
    if not isinstance(level, int):
        raise ValueError(f"{given[0] if given else 'log level'}: unknown level {level_name!r}")
    if fmt == "json":
        return configure_json_logging(level)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    return _install(handler, level)

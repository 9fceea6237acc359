"""Time and duration arguments: ISO 8601 points in time, relative ages, short durations.

A duration is a number of seconds (``90``) or amounts with units
(``30s``, ``15m``, ``2h``, ``1d``, ``1w``, combined as ``1h30m``). A point in
time is ISO 8601 (``2025-01-31T12:00:00Z``; without an offset it is UTC) or a
duration meaning that long ago (``2h``).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import click

_UNITS = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)([wdhms])")
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?[wdhms])+")


def parse_duration(text: str) -> timedelta:
    """``90``, ``30s``, ``2h``, ``1h30m``... as a timedelta; raises ValueError otherwise."""
    value = text.strip().lower()
    try:
        seconds = float(value)
    except ValueError:
        if not _DURATION.fullmatch(value):
            raise ValueError(
                f"{text!r} is not a duration: use seconds (90) or units like 30s, 15m, 2h, 1d, "
                "1h30m"
            ) from None
        seconds = sum(float(n) * _UNITS[unit] for n, unit in _PART.findall(value))
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError(f"{text!r} is not a non-negative, finite duration")
    return timedelta(seconds=seconds)


def parse_moment(text: str, now: datetime | None = None) -> datetime:
    """An ISO 8601 time (UTC if it has no offset) or a duration ago; raises ValueError."""
    value = text.strip()
    if _DURATION.fullmatch(value.lower()):
        return (now or datetime.now(UTC)) - parse_duration(value)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an ISO 8601 time (2025-01-31T12:00:00Z) nor a time ago "
            "like 30m, 2h, 1d"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class Duration(click.ParamType):
    """A click parameter holding a duration, converted to seconds (float)."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int | float):
            return float(value)
        try:
            return parse_duration(str(value)).total_seconds()
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class Moment(click.ParamType):
    """A click parameter holding a point in time (aware datetime)."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, datetime):
            return value
        try:
            return parse_moment(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = Duration()
MOMENT = Moment()

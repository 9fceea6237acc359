"""Printing command results: aligned tables for people, JSON for programs, no secrets.

Everything a command prints about a failure goes through :func:`redact`, so a
connection string, account key or SAS signature that found its way into an
error message (a storage URL with a SAS token, say) is never shown.
Colour follows ``--no-color`` / ``NO_COLOR`` through click's context (and is
dropped anyway when the output is not a terminal).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import click

from boilermaker.redact import MASK
from boilermaker.redact import redact as redact_secrets

REDACTED = MASK

#: Colour of each status as shown by people-facing output.
STATUS_COLOURS: dict[str, str] = {
    "success": "green",
    "failure": "red",
    "retries_exhausted": "red",
    "deadlettered": "red",
    "scheduled": "yellow",
    "started": "yellow",
    "retry": "yellow",
    "pending": "white",
    "skipped": "bright_black",
}


def redact(text: str) -> str:
    """``text`` with every secret masked (the one rule: :func:`boilermaker.redact.redact`)."""
    return redact_secrets(text)


def echo_json(value: Any) -> None:
    """Print ``value`` as indented JSON on stdout."""
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def echo_error(message: str) -> None:
    """Print ``Error: message`` (redacted) on stderr."""
    click.echo(f"Error: {redact(message)}", err=True)


def status_style(text: str, status: str | None, stalled: bool = False) -> str:
    """``text`` coloured for ``status`` (bold red when stalled)."""
    if stalled:
        return click.style(text, fg="red", bold=True)
    colour = STATUS_COLOURS.get(status or "")
    return click.style(text, fg=colour) if colour else text


def when(value: datetime | None) -> str:
    """A time as ``YYYY-MM-DD HH:MM:SS`` in UTC, or ``-``."""
    if value is None:
        return "-"
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S")


def one_line(text: str | None, width: int) -> str:
    """``text`` on one line, cut to ``width`` characters with an ellipsis."""
    if not text:
        return "-"
    flat = " ".join(text.split())
    if len(flat) <= width:
        return flat
    return flat[: max(0, width - 3)] + "..."


#: Styles a padded cell: ``(row index, column index, text) -> text`` (rows from 0, headers
#: excluded).
CellStyle = Callable[[int, int, str], str]


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    stretch: int | None = None,
    style: CellStyle | None = None,
) -> str:
    """Rows under headers in aligned columns.

    Column ``stretch`` (the last one by default) is cut so a line fits the
    terminal width. ``style`` may colour each cell after it has been padded,
    so colour never disturbs the alignment.
    """
    if not rows:
        return ""
    stretch = len(headers) - 1 if stretch is None else stretch
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    terminal = shutil.get_terminal_size((120, 24)).columns
    others = sum(w for i, w in enumerate(widths) if i != stretch) + 2 * (len(headers) - 1)
    widths[stretch] = max(len(headers[stretch]), min(widths[stretch], terminal - others))
    lines = []
    for index, row in enumerate([list(headers), *rows]):
        cells = []
        last = len(row) - 1
        for i, cell in enumerate(row):
            text = one_line(cell, widths[i]) if i == stretch and cell != "-" else cell
            padded = text if i == last else text.ljust(widths[i])
            if style is not None and index > 0:
                padded = style(index - 1, i, padded)
            cells.append(padded)
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def configure_verbose_logging() -> logging.Handler:
    """``-v``: Boilermaker's own loggers at DEBUG on stderr, redacted.

    The Azure SDKs' loggers stay at their level: their debug output carries
    request headers.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("boilermaker")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    return handler

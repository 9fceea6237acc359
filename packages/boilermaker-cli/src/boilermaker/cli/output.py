"""Printing command results: aligned tables for people, JSON for programs."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import click


def echo_json(value: Any) -> None:
    """Print ``value`` as indented JSON on stdout."""
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


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


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], stretch: int | None = None) -> str:
    """Rows under headers in aligned columns.

    Column ``stretch`` (the last one by default) is cut so a line fits the
    terminal width.
    """
    if not rows:
        return ""
    stretch = len(headers) - 1 if stretch is None else stretch
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    terminal = shutil.get_terminal_size((120, 24)).columns
    others = sum(w for i, w in enumerate(widths) if i != stretch) + 2 * (len(headers) - 1)
    widths[stretch] = max(len(headers[stretch]), min(widths[stretch], terminal - others))
    lines = []
    for row in [list(headers), *rows]:
        cells = []
        for i, cell in enumerate(row):
            text = one_line(cell, widths[i]) if i == stretch and cell != "-" else cell
            cells.append(text.ljust(widths[i]))
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)

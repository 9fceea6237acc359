"""Print the counts the compatibility tests recorded, as a table.

    uv run pytest tests/compat -q
    uv run python -m tests.compat.report [FOLDER]

FOLDER defaults to the last pytest session's ``compat-counts`` folder
(``pytest-current`` under pytest's temporary root); pass the folder when the
tests ran with ``--basetemp``.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.compat.conftest import COUNTS_DIR

COLUMNS = (
    ("direction", "direction"),
    ("outcome", "outcome"),
    ("published", "tasks_published|nodes_published"),
    ("expected runs", "expected_runs"),
    ("run", "tasks_run"),
    ("dead-lettered", "dead_lettered|readiness_messages_dead_lettered"),
    ("dead letters by reason", "dead_letter_reasons"),
    ("left", "left_in_queue"),
    ("other", ""),
)
SHOWN = {key for _, keys in COLUMNS for key in keys.split("|") if key} | {"test", "dead_letters"}


def default_folder() -> Path:
    root = os.environ.get("PYTEST_DEBUG_TEMPROOT") or tempfile.gettempdir()
    return Path(root) / f"pytest-of-{getpass.getuser()}" / "pytest-current" / COUNTS_DIR


def _cell(doc: dict[str, Any], keys: str) -> str:
    text = _raw_cell(doc, keys)
    text = " / ".join(part.strip() for part in text.splitlines() if part.strip())
    return text if len(text) <= 90 else text[:87] + "..."


def _raw_cell(doc: dict[str, Any], keys: str) -> str:
    if not keys:
        extra = {k: v for k, v in doc.items() if k not in SHOWN and not isinstance(v, dict | list)}
        return ", ".join(f"{k}={v}" for k, v in sorted(extra.items()))
    for key in keys.split("|"):
        if key in doc:
            value = doc[key]
            if isinstance(value, dict):
                return ", ".join(f"{k} {v}" for k, v in sorted(value.items())) or "-"
            return str(value)
    return ""


def table(docs: Sequence[dict[str, Any]]) -> str:
    rows = [[title for title, _ in COLUMNS]]
    rows += [[_cell(doc, keys) for _, keys in COLUMNS] for doc in docs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("folder", nargs="?", type=Path, default=None)
    args = parser.parse_args(argv)
    folder: Path = args.folder or default_folder()
    files = sorted(folder.glob("*.json"))
    if not files:
        print(f"no counts in {folder}: run `uv run pytest tests/compat` first", file=sys.stderr)
        return 1
    docs = [json.loads(path.read_text()) for path in files]
    docs.sort(key=lambda doc: (doc.get("direction", "").startswith("graph builder"), doc["test"]))
    print(f"compatibility counts from {folder}\n")
    print(table(docs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

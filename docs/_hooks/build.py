"""MkDocs hooks for the Boilermaker site (``hooks:`` in mkdocs.yml).

- The ``boilermaker`` import package is split over five distributions
  (``packages/*/src/boilermaker``): core owns ``__init__.py`` and extends
  ``__path__`` at import time, which static analysis cannot follow. Before
  mkdocstrings loads anything, a merged tree of symlinks (one ``boilermaker``
  package, every distribution's subpackage in it) is made in a temporary
  directory and given to the Python handler as its only search path.
- ``<!-- boilermaker-emulator --help -->`` in a page becomes the emulator's
  ``--help`` text, printed by its own argument parser (so it cannot drift).
- Docstrings use Sphinx roles (``:class:`Task```); they are shown as code.
- click's "no default" sentinel is not shown in the CLI tables.
"""

from __future__ import annotations

import atexit
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mkdocs.plugins import event_priority

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ROOT / "packages"
_made: list[Path] = []


def merged_source_tree() -> Path:
    """A directory holding one ``boilermaker`` package merged from every ``packages/*/src``."""
    base = Path(tempfile.mkdtemp(prefix="boilermaker-docs-src-"))
    _made.append(base)
    target = base / "boilermaker"
    target.mkdir()
    for src in sorted(PACKAGES.glob("*/src/boilermaker")):
        for entry in sorted(src.iterdir()):
            if entry.name == "__pycache__":
                continue
            link = target / entry.name
            if link.exists():
                raise RuntimeError(f"{entry} and {link.resolve()} both provide {entry.name}")
            link.symlink_to(entry, target_is_directory=entry.is_dir())
    return base


@atexit.register
def _clean() -> None:
    for path in _made:
        shutil.rmtree(path, ignore_errors=True)


@event_priority(100)  # before mkdocstrings reads its handler options
def on_config(config: Any) -> Any:
    plugin = config["plugins"]["mkdocstrings"]
    python = plugin.config["handlers"].setdefault("python", {})
    python["paths"] = [str(merged_source_tree())]
    return config


EMULATOR_HELP = "<!-- boilermaker-emulator --help -->"


def emulator_help() -> str:
    """``boilermaker-emulator --help`` as its parser prints it, 88 columns wide."""
    import argparse

    from boilermaker.emulator.__main__ import _parser

    parser = _parser()
    parser.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=88)
    return parser.format_help()


def on_page_markdown(markdown: str, **_: Any) -> str:
    if EMULATOR_HELP in markdown:
        block = "```text\n$ boilermaker-emulator --help\n" + emulator_help() + "```"
        markdown = markdown.replace(EMULATOR_HELP, block)
    return markdown


_ROLE = re.compile(
    r":(?:py:)?(?:class|meth|func|attr|data|mod|exc|obj|const):<code>(~?)([^<]*)</code>"
)


def _role(match: re.Match[str]) -> str:
    name = match.group(2)
    if match.group(1):
        name = name.rsplit(".", 1)[-1]
    return f"<code>{name}</code>"


#: click 8.2+ reports "no default" as this sentinel, which mkdocs-click prints as is.
_NO_DEFAULT = "<code>Sentinel.UNSET</code>"


def on_page_content(html: str, **_: Any) -> str:
    return _ROLE.sub(_role, html).replace(_NO_DEFAULT, "")

"""Run the code blocks of a Markdown page with sybil, the way a reader would.

- ```` ```python ```` blocks run in order in one namespace per page (``__name__ ==
  "__main__"``) and one event loop per page, so a block may ``await`` at top
  level (as in ``python -m asyncio``) or call ``asyncio.run(...)``.
- A Python block that only includes files (``--8<-- "examples/x.py"``) is
  checked to name existing files; the included programs are run by
  ``test_examples.py``.
- ```` ```bash ````/``sh``/``shell`` blocks run as one ``bash -e`` script from the
  repository root, with this virtualenv's ``bin`` first on ``PATH``; they must
  exit 0. ```` ```console ```` blocks: each ``$ command`` runs and what follows
  it, if anything, is its expected output (doctest rules: ``...`` matches
  anything, whitespace is normalised).
- ``<!-- skip: next "why" -->`` before a block marks it as a fragment: it is
  not run, and the reason is recorded. Every skip must give a reason.
"""

from __future__ import annotations

import ast
import asyncio
import doctest
import inspect
import os
import re
import subprocess
import sys
import unittest
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sybil import Document, Example
from sybil.evaluators.python import pad
from sybil.parsers.markdown import CodeBlockParser, SkipParser

ROOT = Path(__file__).resolve().parents[2]
SNIPPET = re.compile(r'^\s*--8<--\s+"([^"]+)"\s*$')
SHELL_LANGUAGES = ("bash", "sh", "shell")
#: A skip directive must say why: ``<!-- skip: next "needs an Azure namespace" -->``.
SKIP_WITHOUT_REASON = re.compile(r"<!--\s*skip:\s*(next|start)\s*-->")


@dataclass
class PageRun:
    """What running one page did."""

    ran: list[str] = field(default_factory=list)
    included: list[str] = field(default_factory=list)
    fragments: list[tuple[str, str]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.ran) + len(self.included) + len(self.fragments)


def shell_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment CLI blocks run in: this virtualenv's scripts first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("COLUMNS", "100")
    env.update(extra or {})
    return env


class PageRunner:
    """Parses one page and evaluates its examples (see module docstring)."""

    def __init__(self, path: Path, env: dict[str, str] | None = None) -> None:
        self.path = path
        self.env = shell_env(env)
        self.loop = asyncio.new_event_loop()
        self.run = PageRun()
        parsers = [
            SkipParser(),
            CodeBlockParser("python", self.evaluate_python),
            CodeBlockParser("console", self.evaluate_console),
            *(CodeBlockParser(lang, self.evaluate_shell) for lang in SHELL_LANGUAGES),
        ]
        self.document = Document.parse(str(path), *parsers)
        self.document.namespace["__name__"] = "__main__"

    def where(self, example: Example) -> str:
        return f"{self.path.relative_to(ROOT)}:{example.line}"

    # -- evaluators -------------------------------------------------------------------

    def evaluate_python(self, example: Example) -> None:
        source = str(example.parsed)
        lines = [line for line in source.splitlines() if line.strip()]
        if lines and all(SNIPPET.match(line) for line in lines):
            for line in lines:
                included = SNIPPET.match(line).group(1).split(":", 1)[0]  # type: ignore[union-attr]
                assert (ROOT / included).is_file(), f"{self.where(example)}: no file {included}"
            self.run.included.append(self.where(example))
            return
        code = compile(
            pad(source, example.line + example.parsed.line_offset),
            str(self.path),
            "exec",
            flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
            dont_inherit=True,
        )
        namespace = example.namespace
        if code.co_flags & inspect.CO_COROUTINE:
            self.loop.run_until_complete(eval(code, namespace))
        else:
            exec(code, namespace)
        namespace.pop("__builtins__", None)
        self.run.ran.append(self.where(example))

    def evaluate_shell(self, example: Example) -> None:
        self._run_shell(example, str(example.parsed), expected=None)
        self.run.ran.append(self.where(example))

    def evaluate_console(self, example: Example) -> None:
        commands: list[tuple[str, list[str]]] = []
        for line in str(example.parsed).splitlines():
            if line.startswith("$ "):
                commands.append((line[2:], []))
            elif commands and commands[-1][0].endswith("\\"):
                commands[-1] = (commands[-1][0][:-1] + line, commands[-1][1])
            elif commands:
                commands[-1][1].append(line)
        assert commands, f"{self.where(example)}: a console block needs '$ command' lines"
        for command, output in commands:
            expected = "\n".join(output).strip()
            self._run_shell(example, command, expected or None)
        self.run.ran.append(self.where(example))

    def _run_shell(self, example: Example, script: str, expected: str | None) -> None:
        done = subprocess.run(
            ["bash", "-e", "-c", script],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        shown = f"{self.where(example)}: $ {script.strip()}\n{done.stdout}{done.stderr}"
        assert done.returncode == 0, f"exit status {done.returncode}\n{shown}"
        if expected is not None:
            checker = doctest.OutputChecker()
            flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
            assert checker.check_output(expected + "\n", done.stdout, flags), (
                f"output differs\nexpected:\n{expected}\n---\n{shown}"
            )

    # -- running ----------------------------------------------------------------------

    def evaluate_all(self, close: bool = True) -> PageRun:
        """Evaluate every example in order; fragments are recorded, failures raised.

        ``close=False`` keeps the event loop open for :meth:`run_async`; call
        :meth:`close` afterwards.
        """
        try:
            for example in self.document:
                try:
                    example.evaluate()
                except unittest.SkipTest as skip:
                    self.run.fragments.append((self.where(example), str(skip)))
        except BaseException:
            self.close()
            raise
        if close:
            self.close()
        return self.run

    def run_async(self, coro: Any) -> Any:
        """Run a coroutine on the page's event loop (for checks after the examples)."""
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        if self.loop.is_closed():
            return
        pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

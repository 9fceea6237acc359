"""Every code block of the documentation runs, unless it is marked as a fragment.

See tests/docs/markdown_examples.py for the rules and docs/README.md for how
to mark a fragment.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.docs.markdown_examples import ROOT, SKIP_WITHOUT_REASON, PageRunner

PAGES = sorted(p for p in (ROOT / "docs").rglob("*.md") if "_hooks" not in p.parts)
DOCUMENTS = [*PAGES, ROOT / "README.md"]


def _id(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("page", PAGES, ids=_id)
def test_page_examples_run(page: Path) -> None:
    run = PageRunner(page).evaluate_all()
    for where, reason in run.fragments:
        assert reason.strip(), f"{where}: a fragment must say why it is not run"


def test_readme_examples_run_against_the_emulator(
    servicebus_emulator, servicebus_queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's "Using it" example, on the emulator: publish, then a worker runs the task."""
    monkeypatch.setenv("SERVICE_BUS_CONNECTION_STRING", servicebus_emulator.connection_string)
    monkeypatch.setenv("SERVICE_BUS_QUEUE_NAME", servicebus_queue)
    monkeypatch.delenv("SERVICE_BUS_NAMESPACE_URL", raising=False)
    runner = PageRunner(ROOT / "README.md")
    try:
        run = runner.evaluate_all(close=False)
        assert run.ran, "the README's runnable examples did not run"
        namespace = runner.document.namespace
        app = namespace["app"]

        async def publish_and_work() -> None:
            await namespace["publish"]()
            await app.run_until_idle(timeout=30)
            await app.close()

        runner.run_async(publish_and_work())
        assert app.state == {"processed": 1}
        assert servicebus_emulator.counts(servicebus_queue).active == 0
        assert servicebus_emulator.counts(servicebus_queue).dead_lettered == 0
    finally:
        runner.close()


@pytest.mark.parametrize("document", DOCUMENTS, ids=_id)
def test_fragments_say_why(document: Path) -> None:
    text = document.read_text()
    bare = [text[: m.start()].count("\n") + 1 for m in SKIP_WITHOUT_REASON.finditer(text)]
    assert not bare, f"{_id(document)}: skip directives without a reason on lines {bare}"


def test_every_python_block_is_run_or_marked() -> None:
    """No page hides Python in a fence sybil would not see (``py``, ``python3``, ``pycon``)."""
    unknown = re.compile(r"^\s*```\s*(py|python3|pycon|ipython)\s*$", re.MULTILINE)
    offenders = [_id(p) for p in DOCUMENTS if unknown.search(p.read_text())]
    assert not offenders, f"use ```python (run, or marked as a fragment): {offenders}"

"""The built site, opened in headless Chromium: pages render, code shows, search works offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.browser import serve_directory

#: Pages a reader must find rendered with their code.
PAGES_WITH_CODE = [
    "getting-started/quickstart/",
    "guides/task-graphs/",
    "guides/task-registration/",
]


def test_site_has_every_page_of_the_nav(built_site: Path) -> None:
    for page in (
        "index.html",
        *(f"{p}index.html" for p in PAGES_WITH_CODE),
        "api-reference/app/index.html",
        "api-reference/cli/index.html",
    ):
        assert (built_site / page).is_file(), page


def test_api_reference_is_generated_from_the_code(built_site: Path) -> None:
    app = (built_site / "api-reference/app/index.html").read_text()
    assert "register_async" in app
    assert "apply_async" in app
    brokers = (built_site / "api-reference/brokers/index.html").read_text()
    assert "InMemoryBroker" in brokers
    assert "AzureServiceBus" in brokers
    cli = (built_site / "api-reference/cli/index.html").read_text()
    for command in ("worker", "dlq", "graph", "results", "emulator", "demo"):
        assert f"boilermaker {command}" in cli, command
    assert "--no-auto-create" in cli  # the emulator's own options, from its parser


def test_search_index_is_built_locally(built_site: Path) -> None:
    index = json.loads((built_site / "search/search_index.json").read_text())
    locations = {doc["location"] for doc in index["docs"]}
    assert "guides/retries/" in locations


def test_site_fetches_nothing_from_the_network(built_site: Path) -> None:
    for page in built_site.rglob("*.html"):
        text = page.read_text()
        for host in ("fonts.googleapis.com", "fonts.gstatic.com", "unpkg.com", "cdn.jsdelivr"):
            assert host not in text, f"{page.relative_to(built_site)} loads from {host}"


@pytest.mark.parametrize("path", PAGES_WITH_CODE)
def test_page_renders_with_its_code_blocks(
    built_site: Path, chromium_page, path: str, tmp_path: Path
) -> None:
    with serve_directory(built_site) as base:
        response = chromium_page.goto(f"{base}/{path}")
        assert response is not None
        assert response.ok
        chromium_page.wait_for_selector("article h1")
        title = chromium_page.inner_text("article h1")
        assert title.strip()
        blocks = chromium_page.locator("article div.highlight pre code")
        assert blocks.count() >= 1, f"{path}: no code blocks rendered"
        first = blocks.first.inner_text()
        assert first.strip(), f"{path}: the first code block is empty"
        # Highlighted: Pygments wrapped tokens in spans.
        assert chromium_page.locator("article div.highlight pre code span").count() > 0
        chromium_page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        assert (tmp_path / "page.png").stat().st_size > 10_000
    assert chromium_page.blocked_requests == []


def test_search_works_offline(built_site: Path, chromium_page, tmp_path: Path) -> None:
    with serve_directory(built_site) as base:
        chromium_page.goto(f"{base}/")
        chromium_page.click("label.md-search__icon, .md-search__input")
        # The index is built in a web worker from search_index.json; until it is ready the
        # result line reads "Initializing search". Wait for it (generously: this checks
        # that search works, not how fast), then type.
        meta = chromium_page.locator(".md-search-result__meta")
        chromium_page.wait_for_function(
            "() => !/initializing/i.test("
            "document.querySelector('.md-search-result__meta')?.textContent ?? 'initializing')",
            timeout=90_000,
        )
        # Typed key by key: the theme searches on key events, which fill() does not send.
        chromium_page.locator("input.md-search__input").press_sequentially("RetryException")
        results = chromium_page.locator(".md-search-result__item")
        results.first.wait_for(timeout=30_000)
        assert "matching" in meta.inner_text().lower()
        assert results.count() >= 1
        text = chromium_page.inner_text(".md-search-result")
        assert "Retr" in text
        chromium_page.screenshot(path=str(tmp_path / "search.png"))
    assert chromium_page.blocked_requests == []

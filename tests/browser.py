"""Headless Chromium for tests that look at pages as a person would.

Import the fixtures into a test module or a conftest::

    from tests.browser import chromium_browser, chromium_page, serve_directory  # noqa: F401

    def test_page(chromium_page, tmp_path):
        with serve_directory(tmp_path) as base_url:
            chromium_page.goto(f"{base_url}/index.html")

- ``chromium_browser`` (module): Debian's ``chromium`` driven by Python
  playwright (its bundled driver; ``playwright install`` is never run).
  Module scope, because while playwright's sync API is open the main thread
  counts as running an event loop, which breaks asyncio tests after it.
  Chromium is required: when it is missing the test fails and says how to
  install it, because CI installs it (``.ci/run``) and a silent skip would
  hide a broken page.
- ``chromium_page`` (function): a fresh context and page that refuse every
  request not sent to 127.0.0.1, so a page that fetches from the network
  fails its test instead of depending on it. ``page.blocked_requests``
  lists what was refused.
- ``serve_directory(path)``: a static HTTP server for ``path`` on
  127.0.0.1, port 0 (a free one), as a context manager yielding the base URL.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

#: Debian's Chromium; BOILERMAKER_CHROMIUM overrides it.
CHROMIUM = Path(os.environ.get("BOILERMAKER_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
INSTALL_HINT = (
    "apt-get update && apt-get install -y --no-install-recommends chromium "
    "(.ci/run does this before `make test`)"
)
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve_directory(path: Path) -> Iterator[str]:
    """Serve ``path`` over HTTP on 127.0.0.1 (a free port); yields ``http://127.0.0.1:PORT``."""
    handler = functools.partial(_QuietHandler, directory=str(path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="static-site", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def chromium_browser() -> Iterator[Browser]:
    """Headless Debian Chromium under playwright, shared by one test module."""
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: {INSTALL_HINT}", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def chromium_page(chromium_browser: Browser) -> Iterator[Page]:
    """A new page (own context) that may only talk to 127.0.0.1."""
    context = chromium_browser.new_context(viewport={"width": 1280, "height": 900})
    blocked: list[str] = []

    def route(route: Any) -> None:
        url = route.request.url
        parsed = urlparse(url)
        if parsed.scheme in ("data", "blob", "about") or parsed.hostname in LOCAL_HOSTS:
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.blocked_requests = blocked  # type: ignore[attr-defined]
    try:
        yield page
    finally:
        context.close()

"""``inspect --visual``: the HTML picture of a graph, looked at in headless Chromium.

The page must work offline: the file names nothing outside itself, and the
browser (which refuses every request not sent to 127.0.0.1) sees no request
but the page's own. Every node is drawn with its state in colour and in text.

Playwright's sync API leaves its event loop set as the thread's running loop
while a browser is open, so ``asyncio.run`` (the CLI, the fixtures that run
graphs) cannot be called on this thread then: those run in a helper thread
(:func:`off_loop`). The browser (``tests/browser.py``) is opened per module,
so the test modules after this one can use asyncio again.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from tests.browser import serve_directory
from tests.cli.conftest import invoke
from tests.cli.stored_graphs import run_our_graph, write_legacy_graph
from tests.conftest import unique_container_name

if TYPE_CHECKING:
    from click.testing import Result
    from playwright.sync_api import Page

    from boilermaker.storage.azurite import Azurite

T = TypeVar("T")


def off_loop(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` on a thread of its own (free to call ``asyncio.run``)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def cli(*args: str, **env: str) -> Result:
    return off_loop(invoke, *args, **env)


EXTERNAL = re.compile(
    r"""(\b(src|href|xlink:href|action|srcset)\s*=)|@import|url\(\s*['"]?(?!#)|https?:|//[a-z]""",
    re.IGNORECASE,
)


def draw(azurite: Azurite, container: str, graph_id: str, path: Path) -> tuple[int, Any]:
    env = {"BOILERMAKER_STORAGE_CONNECTION_STRING": azurite.connection_string}
    result = cli(
        "--container",
        container,
        "inspect",
        "--graph",
        graph_id,
        "--visual",
        "--output",
        str(path),
        **env,
    )
    assert result.stdout.strip() == str(path), result.output
    report = cli("--container", container, "inspect", "--graph", graph_id, "--json", **env)
    return result.exit_code, json.loads(report.stdout)


def look(page: Page, directory: Path, name: str) -> dict[str, Any]:
    """Open the page as served from 127.0.0.1; what was requested, drawn and failed."""
    requested: list[str] = []
    errors: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    with serve_directory(directory) as base:
        page.goto(f"{base}/{name}")
        page.wait_for_load_state("networkidle")
        nodes = page.eval_on_selector_all(
            "g.node",
            """els => els.map(e => ({
                id: e.dataset.taskId, status: e.dataset.status, stalled: e.dataset.stalled,
                role: e.dataset.role, text: e.textContent,
                fill: e.querySelector('rect').getAttribute('fill'),
                dash: getComputedStyle(e.querySelector('rect')).strokeDasharray,
                box: e.getBoundingClientRect().width}))""",
        )
        edges = page.eval_on_selector_all(
            "path.edge",
            "els => els.map(e => ({kind: e.dataset.kind, "
            "dash: getComputedStyle(e).strokeDasharray}))",
        )
        return {
            "base": base,
            "requested": requested,
            "errors": errors,
            "nodes": nodes,
            "edges": edges,
        }


@pytest.fixture(scope="module")
def container(azurite: Azurite) -> str:
    return unique_container_name("visual")


def test_a_1_4_1_graph_is_drawn_offline_with_every_node_and_its_state(
    azurite: Azurite, container: str, chromium_page: Page, tmp_path: Path
) -> None:
    graph = off_loop(
        write_legacy_graph,
        azurite.connection_string,
        container,
        {"fetch": "success", "transform": "started", "report": "failure", "save": None},
    )
    code, report = draw(azurite, container, graph.graph_id, tmp_path / "graph.html")
    text = (tmp_path / "graph.html").read_text()

    assert code == 1  # a stalled node, as inspect says
    assert not EXTERNAL.search(text), EXTERNAL.search(text)
    assert "default-src 'none'" in text  # and the page may not fetch anything anyway

    seen = look(chromium_page, tmp_path, "graph.html")
    chromium_page.screenshot(path=str(tmp_path / "graph.png"), full_page=True)

    assert chromium_page.blocked_requests == []  # type: ignore[attr-defined]
    assert seen["requested"] == [f"{seen['base']}/graph.html"]
    assert seen["errors"] == []
    drawn = {node["id"]: node for node in seen["nodes"]}
    expected = {t["task_id"]: t for t in [*report["tasks"], *report["fail_tasks"]]}
    assert drawn.keys() == expected.keys()
    for task_id, task in expected.items():
        node = drawn[task_id]
        assert node["status"] == (task["status"] or "no-record")
        assert node["stalled"] == str(task["is_stalled"]).lower()
        assert task["function_name"] in node["text"]
        assert node["box"] > 0
    name = {graph.ids[n]: n for n in graph.ids}
    by_name = {name[i]: node for i, node in drawn.items()}
    assert "succeeded" in by_name["fetch"]["text"]
    assert "failed" in by_name["report"]["text"]
    assert "no record" in by_name["save"]["text"]
    assert "pending" in by_name["alert"]["text"]
    assert "stalled" in by_name["transform"]["text"]
    assert by_name["transform"]["dash"] not in ("none", "")  # the stalled border
    assert by_name["fetch"]["dash"] in ("none", "")
    assert len({by_name[n]["fill"] for n in ("fetch", "transform", "report", "save")}) == 4
    kinds = [edge["kind"] for edge in seen["edges"]]
    assert kinds.count("success") == 4  # fetch->transform, fetch->report, both->save
    assert kinds.count("failure") == 1  # fetch->cleanup
    for edge in seen["edges"]:
        dashed = edge["dash"] not in ("none", "")
        assert dashed is (edge["kind"] == "failure")
    assert (tmp_path / "graph.png").stat().st_size > 0


def test_our_graph_is_drawn_and_a_click_shows_a_nodes_record(
    azurite: Azurite, container: str, chromium_page: Page, tmp_path: Path
) -> None:
    ours = off_loop(run_our_graph, azurite.connection_string, container, broken={"save"})
    code, _report = draw(azurite, container, ours.graph_id, tmp_path / "ours.html")

    seen = look(chromium_page, tmp_path, "ours.html")
    chromium_page.click(f'g.node[data-task-id="{ours.ids["save"]}"]')
    details = chromium_page.inner_text("#details")
    chromium_page.screenshot(path=str(tmp_path / "ours.png"), full_page=True)

    assert code == 0
    assert chromium_page.blocked_requests == []  # type: ignore[attr-defined]
    assert seen["errors"] == []
    statuses = {node["id"]: node["status"] for node in seen["nodes"]}
    assert statuses == {
        ours.ids["fetch"]: "success",
        ours.ids["transform"]: "success",
        ours.ids["report"]: "success",
        ours.ids["save"]: "failure",
        ours.ids["cleanup"]: "skipped",
    }
    assert ours.ids["save"] in details
    assert "ValueError: save failed" in details
    assert "Traceback (most recent call last)" in details


def test_visual_writes_to_the_temporary_directory_by_default(
    azurite: Azurite, container: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    graph = off_loop(write_legacy_graph, azurite.connection_string, container, {"fetch": "success"})
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    result = cli(
        "--container",
        container,
        "inspect",
        "--graph",
        graph.graph_id,
        "--visual",
        BOILERMAKER_STORAGE_CONNECTION_STRING=azurite.connection_string,
    )

    path = tmp_path / f"boilermaker-graph-{graph.graph_id}.html"
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(path)
    assert f'data-task-id="{graph.ids["fetch"]}"' in path.read_text()

"""``inspect --visual``: a task graph as a self-contained HTML page that works offline.

The page is drawn here, in Python: nodes are placed in layers by longest
path from the roots (each node one column right of the furthest node it
waits on), ordered within a column by the mean position of what they wait on,
and written as inline SVG. Nothing is loaded from anywhere: no script,
stylesheet, font or image outside the file, and a Content-Security-Policy
forbids the page to fetch anything. A small inline script shows a node's
record when it is clicked; without it the picture is complete.

Every node is a ``<g>`` with ``data-task-id``, ``data-status`` (the record's
status, ``skipped`` or ``no-record``), ``data-role`` and ``data-stalled``;
its colour and its text both say its state. Success edges are solid,
failure edges (to failure handlers) dashed; stalled nodes have a thick dashed
border and a "stalled" mark.
"""

from __future__ import annotations

import html
import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from boilermaker.cli.graph_view import GraphView, NodeView, state_of, summary
from boilermaker.ids import TaskId
from boilermaker.task.graph import TaskGraph

NODE_WIDTH = 200
NODE_HEIGHT = 66
COLUMN_GAP = 90
ROW_GAP = 22
MARGIN = 24
#: Ordering passes within columns (each a sweep from the left).
ORDER_PASSES = 4
#: Characters of a function name, and of the state line, that fit in a node.
NAME_WIDTH = 24
STATE_WIDTH = 29

#: (fill, text colour, label) of each state.
STATE_COLOURS: dict[str, tuple[str, str, str]] = {
    "success": ("#2e7d32", "#ffffff", "succeeded"),
    "failure": ("#c62828", "#ffffff", "failed"),
    "retries_exhausted": ("#b71c1c", "#ffffff", "retries exhausted"),
    "deadlettered": ("#6a1b1a", "#ffffff", "dead-lettered"),
    "started": ("#ef6c00", "#ffffff", "started"),
    "retry": ("#ffb300", "#1b1b1b", "waiting to retry"),
    "scheduled": ("#fdd835", "#1b1b1b", "scheduled"),
    "pending": ("#9e9e9e", "#1b1b1b", "pending"),
    "skipped": ("#e0e0e0", "#424242", "skipped"),
    "no-record": ("#424242", "#ffffff", "no record"),
}

CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
    "img-src data:; base-uri 'none'; form-action 'none'"
)


def state_key(node: NodeView) -> str:
    """The ``data-status`` of a node."""
    return "no-record" if node.record is None else node.shown_status


# -- layout ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Layout:
    """Where each node goes: its column and row, and the picture's size."""

    columns: list[list[TaskId]]
    position: dict[TaskId, tuple[float, float]]
    width: float
    height: float


def incoming(graph: TaskGraph) -> dict[TaskId, list[TaskId]]:
    """What each node waits on: its parents and, for a failure handler, the tasks it serves."""
    waits: dict[TaskId, list[TaskId]] = {task_id: [] for task_id in graph.tasks}
    for kinds in (graph.edges, graph.fail_edges):
        for parent, kids in kinds.items():
            for kid in kids:
                if kid in waits and parent in waits:
                    waits[kid].append(parent)
    return waits


def layers(graph: TaskGraph) -> dict[TaskId, int]:
    """Each node's column: 0 for nodes that wait on nothing, else one more than the
    furthest node it waits on. The all-failed callback (which runs after the graph
    ended) goes in a column of its own, last."""
    waits = incoming(graph)
    layer: dict[TaskId, int] = {}
    remaining = dict.fromkeys(graph.tasks)
    callback = graph.all_failed_callback_id
    if callback is not None:
        remaining.pop(callback, None)
    progress = True
    while remaining and progress:
        progress = False
        for task_id in list(remaining):
            parents = waits[task_id]
            if all(p in layer for p in parents):
                layer[task_id] = 1 + max((layer[p] for p in parents), default=-1)
                del remaining[task_id]
                progress = True
    last = max(layer.values(), default=-1) + 1
    for task_id in remaining:  # unreachable in a checked graph (a cycle): put them last
        layer[task_id] = last
    if callback is not None and callback in graph.tasks:
        layer[callback] = max(layer.values(), default=-1) + 1
    return layer


def layout(graph: TaskGraph) -> Layout:
    """Columns by :func:`layers`, rows ordered to keep edges short, centred vertically."""
    layer = layers(graph)
    count = max(layer.values(), default=-1) + 1
    columns: list[list[TaskId]] = [[] for _ in range(count)]
    for task_id in graph.tasks:  # the graph's own order first
        columns[layer[task_id]].append(task_id)
    waits = incoming(graph)
    for _ in range(ORDER_PASSES):
        row = {t: i for column in columns for i, t in enumerate(column)}
        for column in columns[1:]:
            keyed = []
            for index, task_id in enumerate(column):
                parents = [row[p] for p in waits[task_id] if p in row]
                key = sum(parents) / len(parents) if parents else float(index)
                keyed.append((key, index, task_id))
            column[:] = [task_id for _key, _index, task_id in sorted(keyed)]
            row.update({t: i for i, t in enumerate(column)})
    tallest = max((len(column) for column in columns), default=0)
    height = 2 * MARGIN + tallest * NODE_HEIGHT + max(0, tallest - 1) * ROW_GAP
    width = 2 * MARGIN + count * NODE_WIDTH + max(0, count - 1) * COLUMN_GAP
    position: dict[TaskId, tuple[float, float]] = {}
    for index, column in enumerate(columns):
        used = len(column) * NODE_HEIGHT + max(0, len(column) - 1) * ROW_GAP
        top = MARGIN + (height - 2 * MARGIN - used) / 2
        x = MARGIN + index * (NODE_WIDTH + COLUMN_GAP)
        for row_index, task_id in enumerate(column):
            position[task_id] = (x, top + row_index * (NODE_HEIGHT + ROW_GAP))
    return Layout(columns, position, max(width, 2 * MARGIN), max(height, 2 * MARGIN))


# -- drawing --------------------------------------------------------------------------------


def _attr(value: object) -> str:
    return html.escape(str(value), quote=True)


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def _edge(start: tuple[float, float], end: tuple[float, float], failure: bool) -> str:
    x1, y1 = start[0] + NODE_WIDTH, start[1] + NODE_HEIGHT / 2
    x2, y2 = end[0], end[1] + NODE_HEIGHT / 2
    bend = max(COLUMN_GAP / 2, (x2 - x1) / 3)
    kind = "failure" if failure else "success"
    return (
        f'<path class="edge edge-{kind}" data-kind="{kind}" '
        f'd="M{x1:.1f},{y1:.1f} C{x1 + bend:.1f},{y1:.1f} {x2 - bend:.1f},{y2:.1f} '
        f'{x2 - 6:.1f},{y2:.1f}" marker-end="url(#arrow-{kind})"/>'
    )


def _node(node: NodeView, at: tuple[float, float]) -> str:
    state = state_key(node)
    fill, ink, label = STATE_COLOURS.get(state, ("#9e9e9e", "#1b1b1b", state))
    attempt = (
        f" \u00b7 attempt {node.record.attempt}" if node.record and node.record.attempt else ""
    )
    role = "" if node.role in ("root", "node") else f" \u00b7 {node.role}"
    border = (
        'stroke="#d50000" stroke-width="4" stroke-dasharray="8 4"'
        if node.stalled
        else 'stroke="#263238" stroke-width="1.5"'
    )
    stalled_mark = (
        f'<text class="stalled-mark" x="{NODE_WIDTH - 8}" y="16" text-anchor="end" '
        f'fill="{ink}">\u26a0 stalled</text>'
        if node.stalled
        else ""
    )
    title = f"{node.function_name} ({node.task_id}): {node.label}"
    return (
        f'<g class="node state-{_attr(state)}" data-task-id="{_attr(node.task_id)}" '
        f'data-status="{_attr(state)}" data-role="{_attr(node.role)}" '
        f'data-stalled="{str(node.stalled).lower()}" '
        f'data-function="{_attr(node.function_name)}" '
        f'transform="translate({at[0]:.1f},{at[1]:.1f})" tabindex="0" role="button" '
        f'aria-label="{_attr(title)}">'
        f"<title>{html.escape(title)}</title>"
        f'<rect width="{NODE_WIDTH}" height="{NODE_HEIGHT}" rx="8" fill="{fill}" {border}/>'
        f'<text class="function" x="10" y="{28 if not node.stalled else 34}" '
        f'fill="{ink}">{html.escape(_short(node.function_name, NAME_WIDTH))}</text>'
        f'<text class="state" x="10" y="{50 if not node.stalled else 54}" fill="{ink}">'
        f"{html.escape(_short(label + attempt + role, STATE_WIDTH))}</text>"
        f"{stalled_mark}</g>"
    )


def render_svg(view: GraphView) -> str:
    """The graph as an SVG element: edges under nodes."""
    graph = view.graph
    placed = layout(graph)
    edges = []
    for failure, kinds in ((False, graph.edges), (True, graph.fail_edges)):
        for parent, kids in kinds.items():
            for kid in kids:
                if parent in placed.position and kid in placed.position:
                    edges.append(_edge(placed.position[parent], placed.position[kid], failure))
    nodes = [_node(node, placed.position[TaskId(node.task_id)]) for node in view.nodes]
    markers = "".join(
        f'<marker id="arrow-{kind}" viewBox="0 0 10 10" refX="4" refY="5" markerWidth="8" '
        f'markerHeight="8" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
        f'fill="{colour}"/></marker>'
        for kind, colour in (("success", "#546e7a"), ("failure", "#c62828"))
    )
    return (
        f'<svg id="graph" role="img" '
        f'aria-label="{_attr(summary(view))}" width="{placed.width:.0f}" '
        f'height="{placed.height:.0f}" viewBox="0 0 {placed.width:.0f} {placed.height:.0f}">'
        f"<defs>{markers}</defs>"
        f'<g class="edges">{"".join(edges)}</g><g class="nodes">{"".join(nodes)}</g></svg>'
    )


def _legend() -> str:
    items = [
        f'<li><span class="swatch" style="background:{fill}"></span>{html.escape(label)}</li>'
        for fill, _ink, label in STATE_COLOURS.values()
    ]
    items += [
        '<li><span class="line solid"></span>runs after success</li>',
        '<li><span class="line dashed"></span>failure handler</li>',
        '<li><span class="swatch stalled"></span>stalled (scheduled, started or retry)</li>',
    ]
    return f'<ul class="legend">{"".join(items)}</ul>'


def _data(view: GraphView) -> str:
    """The nodes' records for the details panel, safe inside a ``<script>`` element."""
    nodes: dict[str, Any] = {}
    for node in view.nodes:
        doc = node.detail_dict(view.graph_id)
        doc["shown_status"] = node.label
        result = json.dumps(doc.pop("result"), default=str)
        doc["result"] = result if len(result) <= 4000 else result[:4000] + " ..."
        nodes[node.task_id] = doc
    text = json.dumps({"graph_id": view.graph_id, "nodes": nodes}, default=str)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
       color: #1b1b1b; background: #fafafa; }
header, .legend, main { padding: 0 24px; }
h1 { font-size: 1.3rem; margin: 16px 0 4px; }
.summary { margin: 0 0 8px; }
.legend { display: flex; flex-wrap: wrap; gap: 6px 18px; list-style: none; margin: 8px 0 16px;
          font-size: 0.85rem; }
.legend li { display: flex; align-items: center; gap: 6px; }
.swatch { display: inline-block; width: 16px; height: 16px; border: 1px solid #263238;
          border-radius: 3px; }
.swatch.stalled { border: 3px dashed #d50000; background: #fff; }
.line { display: inline-block; width: 28px; border-top: 2px solid #546e7a; }
.line.dashed { border-top: 2px dashed #c62828; }
main { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.canvas { overflow: auto; border: 1px solid #cfd8dc; background: #fff; max-width: 100%; }
.edge { fill: none; stroke-width: 2; }
.edge-success { stroke: #546e7a; }
.edge-failure { stroke: #c62828; stroke-dasharray: 7 5; }
.node { cursor: pointer; }
.node:focus rect, .node.selected rect { stroke: #1565c0; stroke-width: 4; }
.node text { font-size: 13px; }
.node .function { font-weight: 600; }
.node .stalled-mark { font-size: 11px; font-weight: 700; }
#details { min-width: 280px; max-width: 420px; font-size: 0.85rem; }
#details pre { white-space: pre-wrap; word-break: break-word; background: #eceff1;
               padding: 6px; max-height: 320px; overflow: auto; }
#details dt { font-weight: 600; margin-top: 6px; }
#details dd { margin: 0; word-break: break-all; white-space: pre-line; }
"""

_SCRIPT = """
(function () {
  var data = JSON.parse(document.getElementById("graph-data").textContent);
  var panel = document.getElementById("details");
  var fields = [["task_id", "Task id"], ["function_name", "Function"], ["shown_status", "Status"],
    ["role", "Role"], ["attempt", "Attempt"], ["updated_at", "Updated"],
    ["depends_on", "Depends on"], ["dependents", "Dependents"], ["errors", "Errors"],
    ["result", "Result"], ["formatted_exception", "Exception"]];
  function show(id, element) {
    var node = data.nodes[id];
    if (!node) { return; }
    document.querySelectorAll("g.node.selected").forEach(function (g) {
      g.classList.remove("selected");
    });
    element.classList.add("selected");
    panel.textContent = "";
    var list = document.createElement("dl");
    fields.forEach(function (field) {
      var value = node[field[0]];
      if (value === null || value === undefined || value === "" ||
          (Array.isArray(value) && value.length === 0)) { return; }
      var dt = document.createElement("dt");
      dt.textContent = field[1];
      var dd = document.createElement("dd");
      var text = Array.isArray(value) ? value.join("\\n") : String(value);
      if (field[0] === "formatted_exception" || field[0] === "errors" ||
          field[0] === "result") {
        var pre = document.createElement("pre");
        pre.textContent = text;
        dd.appendChild(pre);
      } else {
        dd.textContent = text;
      }
      list.appendChild(dt);
      list.appendChild(dd);
    });
    panel.appendChild(list);
  }
  document.querySelectorAll("g.node").forEach(function (g) {
    g.addEventListener("click", function () { show(g.dataset.taskId, g); });
    g.addEventListener("keydown", function (event) {
      if (event.key === "Enter" || event.key === " ") { show(g.dataset.taskId, g); }
    });
  });
})();
"""


def render_html(view: GraphView) -> str:
    """The whole page: summary, legend, the SVG picture and the details panel."""
    made_by = "published by 1.4.1" if view.legacy else f"protocol {view.graph.protocol}"
    counts: dict[str, int] = {}
    for node in view.nodes:
        counts[node.shown_status] = counts.get(node.shown_status, 0) + 1
    tally = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Graph {html.escape(view.graph_id)}</title>
<style>{_STYLE}</style>
</head>
<body>
<header>
<h1>Graph <code>{html.escape(view.graph_id)}</code></h1>
<p class="summary" id="summary" data-state="{_attr(state_of(view))}"
   data-stalled-count="{len(view.stalled)}">{html.escape(state_of(view))} &middot;
 {len(view.nodes)} node(s): {html.escape(tally)} &middot; {len(view.stalled)} stalled &middot;
 {html.escape(made_by)}</p>
</header>
{_legend()}
<main>
<div class="canvas">{render_svg(view)}</div>
<aside id="details">Click a node to see its record.</aside>
</main>
<script type="application/json" id="graph-data">{_data(view)}</script>
<script>{_SCRIPT}</script>
</body>
</html>
"""


_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


def default_picture_path(graph_id: str) -> Path:
    """``boilermaker-graph-<graph id>.html`` in the temporary directory."""
    name = _UNSAFE_NAME.sub("_", graph_id)
    return Path(tempfile.gettempdir()) / f"boilermaker-graph-{name}.html"


def write_picture(view: GraphView, path: Path) -> Path:
    """Write the page to ``path`` (creating its directory); returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(view), encoding="utf-8")
    return path

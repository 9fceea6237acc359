"""A task graph as the commands show it: read once through core, rendered for people and programs.

``graph status``, ``inspect`` (table, ``--task``, ``--json``, ``--visual``),
``recover`` and ``invoke`` all read a graph here, with
:func:`boilermaker.graph_recovery.read_graph` (every node's record, for graphs
of either format: 1.4.1's ``graph.json`` without a ``protocol`` field, and
ours) and :func:`~boilermaker.graph_recovery.progress_of`. Stalled means
Scheduled, Started or Retry, as ``TaskGraph.detect_stalled_tasks`` says.

The JSON document keeps the fields 1.4.1's ``inspect --json`` printed
(``graph_id``, ``is_complete``, ``has_failures``, ``stalled_count``,
``tasks``, ``fail_tasks``; per task ``task_id``, ``function_name``,
``status``, ``type``, ``is_stalled``, ``depends_on``) and adds ours.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from boilermaker.cli.output import status_style, table, when
from boilermaker.graph_dispatch import GraphRuntime
from boilermaker.graph_recovery import GraphProgress, progress_of, read_graph
from boilermaker.ids import TaskId
from boilermaker.results import NodeRecord
from boilermaker.results_store import ResultsStore
from boilermaker.task.graph import LEGACY_PROTOCOL, TaskGraph

#: 1.4.1's ``type`` of a node: a main task, or a failure handler / the all-failed callback.
CHILD, FAIL_CHILD = "child", "fail_child"


def read_only_runtime(store: ResultsStore) -> GraphRuntime:
    """A graph runtime that can read but refuses to publish (for read commands)."""

    def no_publisher() -> Any:
        raise RuntimeError("a read command publishes nothing")

    return GraphRuntime(store, no_publisher)


def updated_at(record: NodeRecord) -> datetime | None:
    """When the record was last written, if it says (1.4.1's records do not)."""
    return record.updated_at if "updated_at" in record.model_fields_set else None


@dataclass(frozen=True, slots=True)
class NodeView:
    """One node of a graph with its record (None when the node has no record)."""

    task_id: str
    function_name: str
    type: str
    role: str
    record: NodeRecord | None
    stalled: bool
    depends_on: list[str]
    dependents: list[str]

    @property
    def status(self) -> str | None:
        """The record's status value (as stored: ``pending``, ``success``...), or None."""
        return self.record.status.value if self.record is not None else None

    @property
    def skipped(self) -> bool:
        """Whether the graph decided the node will never run."""
        return self.record is not None and self.record.skipped

    @property
    def shown_status(self) -> str:
        """The status for people: ``skipped``, ``no record``, or the record's status."""
        if self.record is None:
            return "no record"
        return "skipped" if self.record.skipped else self.record.status.value

    @property
    def label(self) -> str:
        """``shown_status``, marked when stalled."""
        return f"{self.shown_status} (stalled)" if self.stalled else self.shown_status

    def to_dict(self) -> dict[str, Any]:
        """The node in ``--json`` output (1.4.1's fields first)."""
        record = self.record
        return {
            "task_id": self.task_id,
            "function_name": self.function_name,
            "status": self.status,
            "type": self.type,
            "is_stalled": self.stalled,
            "depends_on": self.depends_on,
            "role": self.role,
            "skipped": self.skipped,
            "attempt": record.attempt if record else 0,
            "updated_at": _iso(updated_at(record)) if record else None,
            "errors": record.errors if record else None,
        }

    def detail_dict(self, graph_id: str) -> dict[str, Any]:
        """Everything about the node (``inspect --task ... --json``)."""
        record = self.record
        return {
            **self.to_dict(),
            "graph_id": graph_id,
            "dependents": self.dependents,
            "result": record.result if record else None,
            "formatted_exception": record.formatted_exception if record else None,
        }


@dataclass(frozen=True, slots=True)
class GraphView:
    """A graph with every node's record, and what that says about the whole."""

    graph: TaskGraph
    progress: GraphProgress
    nodes: list[NodeView]

    @property
    def graph_id(self) -> str:
        """The graph's id."""
        return str(self.graph.graph_id)

    @property
    def legacy(self) -> bool:
        """Whether 1.4.1 published the graph (its ``graph.json`` has no ``protocol``)."""
        return self.graph.protocol == LEGACY_PROTOCOL

    @property
    def stalled(self) -> list[NodeView]:
        """Nodes Scheduled, Started or Retry."""
        return [node for node in self.nodes if node.stalled]

    def node(self, task_id: str) -> NodeView | None:
        """The node with this id, if the graph has it."""
        return next((node for node in self.nodes if node.task_id == task_id), None)

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` document (1.4.1's fields first, then ours)."""
        return {
            "graph_id": self.graph_id,
            "is_complete": self.graph.is_complete(),
            "has_failures": self.graph.has_failures(),
            "stalled_count": len(self.stalled),
            "tasks": [node.to_dict() for node in self.nodes if node.type == CHILD],
            "fail_tasks": [node.to_dict() for node in self.nodes if node.type == FAIL_CHILD],
            "protocol": self.graph.protocol,
            "ended": self.progress.ended,
            "failed": self.progress.failed,
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _updated(record: NodeRecord) -> str:
    at = updated_at(record)
    return f"{when(at)} UTC" if at is not None else "- (not recorded)"


def _role(graph: TaskGraph, task_id: TaskId) -> str:
    if task_id == graph.all_failed_callback_id:
        return "all-failed"
    if graph.is_handler(task_id):
        return "on-failure"
    if task_id in graph.root_ids:
        return "root"
    return "node"


def view_of(graph: TaskGraph, progress: GraphProgress) -> GraphView:
    """The view of a graph read by ``read_graph`` (its ``results`` filled in)."""
    stalled = {task_id for task_id, _name, _status in graph.detect_stalled_tasks()}
    waits: dict[TaskId, list[str]] = {task_id: [] for task_id in graph.tasks}
    for kinds in (graph.edges, graph.fail_edges):
        for parent, kids in kinds.items():
            for kid in kids:
                waits.setdefault(kid, []).append(str(parent))
    nodes = []
    for kind, tasks in ((CHILD, graph.children), (FAIL_CHILD, graph.fail_children)):
        for task_id, task in tasks.items():
            record = graph.results.get(task_id)
            nodes.append(
                NodeView(
                    task_id=str(task_id),
                    function_name=task.function_name,
                    type=kind,
                    role=_role(graph, task_id),
                    record=record if isinstance(record, NodeRecord) else None,
                    stalled=task_id in stalled,
                    depends_on=sorted(waits.get(task_id, [])),
                    dependents=[str(t) for t in graph.notified_by(task_id)],
                )
            )
    return GraphView(graph, progress, nodes)


async def read_view(store: ResultsStore, graph_id: str) -> GraphView | None:
    """Read graph ``graph_id`` and every node's record; None if it is not stored."""
    runtime = read_only_runtime(store)
    graph = await read_graph(runtime, graph_id)
    if graph is None:
        return None
    return view_of(graph, await progress_of(runtime, graph))


# -- for people -----------------------------------------------------------------------------


def state_of(view: GraphView) -> str:
    """``running``, ``ended, all succeeded`` or ``ended, with failures``."""
    if not view.progress.ended:
        return "running, with failures" if view.graph.has_failures() else "running"
    return "ended, with failures" if view.progress.failed else "ended, all succeeded"


def summary(view: GraphView) -> str:
    """One line about the whole graph."""
    made_by = " (published by 1.4.1)" if view.legacy else ""
    stalled = len(view.stalled)
    return (
        f"Graph {view.graph_id}{made_by}: {len(view.nodes)} node(s), {state_of(view)}; "
        f"{stalled} stalled."
    )


_STATUS_COLUMN = 3


def node_table(view: GraphView) -> str:
    """Every node: id, function, role, status (coloured), attempt, last update, errors."""
    rows = [
        [
            node.task_id,
            node.function_name,
            node.role,
            node.label,
            str(node.record.attempt) if node.record else "0",
            when(updated_at(node.record)) if node.record else "-",
            "; ".join(node.record.errors or []) if node.record else "",
        ]
        for node in view.nodes
    ]

    def style(row: int, column: int, text: str) -> str:
        if column != _STATUS_COLUMN:
            return text
        node = view.nodes[row]
        return status_style(text, node.shown_status, node.stalled)

    return table(
        ["TASK ID", "FUNCTION", "ROLE", "STATUS", "ATTEMPT", "UPDATED (UTC)", "ERRORS"],
        rows,
        style=style,
    )


def record_lines(record: NodeRecord) -> list[str]:
    """A record's status, attempt, update time, result, errors and stored traceback."""
    lines = [
        f"Status:     {'skipped' if record.skipped else record.status.value}",
        f"Attempt:    {record.attempt}",
        f"Updated:    {_updated(record)}",
        f"Result:     {json.dumps(record.result, default=str)}",
    ]
    if record.errors:
        lines.append("Errors:")
        lines += [f"  {error}" for error in record.errors]
    if record.formatted_exception:
        lines.append("Exception:")
        lines += ["  " + line for line in record.formatted_exception.rstrip().splitlines()]
    return lines


def node_detail(view: GraphView, node: NodeView) -> str:
    """Everything about one node, one field per line."""
    lines = [
        f"Task id:    {node.task_id}",
        f"Function:   {node.function_name}",
        f"Graph id:   {view.graph_id}",
        f"Role:       {node.role} ({node.type})",
        f"Depends on: {', '.join(node.depends_on) or '(none)'}",
        f"Dependents: {', '.join(node.dependents) or '(none)'}",
    ]
    if node.record is None:
        lines.append("Status:     no record (nothing stored for this node)")
    else:
        record_lines_ = record_lines(node.record)
        record_lines_[0] = "Status:     " + status_style(
            node.label, node.shown_status, node.stalled
        )
        lines += record_lines_
    return "\n".join(lines)

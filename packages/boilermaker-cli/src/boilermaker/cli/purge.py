"""``boilermaker purge``: delete graphs and standalone results older than a number of days.

A *group* is everything under ``task-results/{id}/``: a graph (``graph.json``,
one record per node, and for graphs of ours ``graph-status.json``) or a
standalone task's result (``task-results/{task_id}/{task_id}.json``).

Finding old groups:

- by default, the blob index: blobs tagged ``created_date`` before the cutoff
  (``"created_date" < 'YYYY-MM-DD'``), then each such group is listed whole;
- ``--all-graphs``: every group is listed and dated by its id, a UUID7 whose
  first 48 bits are a millisecond timestamp (finds untagged groups; ids that
  are not UUID7 cannot be dated and are left alone).

Deciding (``--force`` deletes what is skipped):

- a graph is deleted if complete (``TaskGraph.is_complete`` over its records);
  a graph with records missing (what an interrupted purge leaves) is deleted
  unless a remaining record is Scheduled, Started or Retry; otherwise it is
  *in progress* and skipped;
- a standalone result is skipped while Scheduled, Started or Retry;
- a group whose ``graph.json`` or records cannot be read, or with records but
  no ``graph.json``, is *corrupted* and skipped. The end-of-graph record alone
  is what an interrupted purge of one of our graphs leaves: deleted.

Deleting goes in order so an interrupted purge is finished by the next run:
node records (and standalone results) first, then ``graph.json`` of the groups
whose records are all gone, then the end-of-graph record, which, like 1.4.1's
``graph.json``, carries the ``created_date`` tag that finds the group again.
A blob already gone is not an error.

Exit status: 0 done, 1 something was skipped as in progress, 2 error.
"""

from __future__ import annotations

import posixpath
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import click

from boilermaker.cli.connection import ResultsOptions, results_options
from boilermaker.cli.errors import run
from boilermaker.cli.graph_view import read_only_runtime
from boilermaker.cli.output import echo_json, redact, table
from boilermaker.graph_dispatch import bounded_gather
from boilermaker.graph_recovery import progress_of, read_graph
from boilermaker.results import PREFIX, Records, graph_blob, graph_status_blob, standalone_blob
from boilermaker.task.graph import LEGACY_PROTOCOL, STALLED_STATUSES

if TYPE_CHECKING:
    from boilermaker.storage import BlobClientStorage

EXIT_OK, EXIT_SKIPPED, EXIT_ERROR = 0, 1, 2
OLDEST_DAYS, NEWEST_DAYS = 1, 30

Kind = Literal["graph", "standalone", "remnant", "corrupted"]
State = Literal["complete", "partly purged", "in progress", "corrupted", "gone"]


def group_prefix(group_id: str) -> str:
    """``task-results/{group_id}/``: every blob of a group starts with it."""
    return posixpath.dirname(graph_blob(group_id)) + "/"


def group_of(name: str) -> str | None:
    """The group id of a blob name under ``task-results/``, else None."""
    parts = name.split("/")
    if len(parts) < 3 or parts[0] != PREFIX or not parts[1]:
        return None
    return parts[1]


def uuid7_time(text: str) -> datetime | None:
    """When a UUID7 id was made (its first 48 bits, in milliseconds); None for other ids."""
    try:
        value = uuid.UUID(text)
    except ValueError:
        return None
    if value.version != 7:
        return None
    try:
        return datetime.fromtimestamp((value.int >> 80) / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None


@dataclass(slots=True)
class Group:
    """One group found, what it is, and what purge does with it."""

    group_id: str
    names: list[str]
    kind: Kind = "graph"
    state: State = "complete"
    reason: str = ""
    delete: bool = False
    forced: bool = False
    failed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The group in ``--json`` output."""
        return {
            "group_id": self.group_id,
            "kind": self.kind,
            "state": self.state,
            "reason": self.reason,
            "blobs": len(self.names),
            "delete": self.delete,
            "forced": self.forced,
            "failed": self.failed,
        }


@dataclass(slots=True)
class PurgeReport:
    """What purge found and did."""

    cutoff: datetime
    by_tags: bool
    dry_run: bool
    groups: list[Group] = field(default_factory=list)
    undated: list[str] = field(default_factory=list)

    @property
    def deleted(self) -> list[Group]:
        """Groups deleted (or, in a dry run, to be deleted)."""
        return [g for g in self.groups if g.delete]

    @property
    def in_progress(self) -> list[Group]:
        """Groups skipped because they are in progress."""
        return [g for g in self.groups if not g.delete and g.state == "in progress"]

    @property
    def corrupted(self) -> list[Group]:
        """Groups skipped because they cannot be read."""
        return [g for g in self.groups if not g.delete and g.state == "corrupted"]

    @property
    def failed(self) -> list[str]:
        """Blobs that could not be deleted."""
        return [name for g in self.groups for name in g.failed]

    @property
    def exit_code(self) -> int:
        """2 if a deletion failed, 1 if a group was skipped as in progress, else 0."""
        if self.failed:
            return EXIT_ERROR
        return EXIT_SKIPPED if self.in_progress else EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` document."""
        return {
            "cutoff": self.cutoff.isoformat(),
            "found_by": "created_date tag" if self.by_tags else "listing (UUID7 ids)",
            "dry_run": self.dry_run,
            "groups": [g.to_dict() for g in self.groups],
            "deleted_groups": len(self.deleted),
            "deleted_blobs": sum(len(g.names) - len(g.failed) for g in self.deleted),
            "skipped_in_progress": [g.group_id for g in self.in_progress],
            "skipped_corrupted": [g.group_id for g in self.corrupted],
            "undated": self.undated,
            "failed": self.failed,
        }


# -- finding ----------------------------------------------------------------------------------


async def find_by_tag(store: BlobClientStorage, cutoff: datetime) -> dict[str, list[str]]:
    """Groups with a blob tagged ``created_date`` before the cutoff's day, each listed whole."""
    expression = f"\"created_date\" < '{cutoff.strftime('%Y-%m-%d')}'"
    ids = set()
    async for blob in store.find_blobs_by_tags(expression):
        group_id = group_of(blob.name)
        if group_id is not None:
            ids.add(group_id)
    listed = await bounded_gather([store.list_names(group_prefix(g)) for g in sorted(ids)])
    return {g: names for g, names in zip(sorted(ids), listed, strict=True) if names}


async def find_by_listing(
    store: BlobClientStorage, cutoff: datetime, undated: list[str]
) -> dict[str, list[str]]:
    """Every group whose UUID7 id is older than the cutoff (others go to ``undated``)."""
    groups: dict[str, list[str]] = defaultdict(list)
    for name in await store.list_names(f"{PREFIX}/"):
        group_id = group_of(name)
        if group_id is not None:
            groups[group_id].append(name)
    found = {}
    for group_id, names in sorted(groups.items()):
        made = uuid7_time(group_id)
        if made is None:
            undated.append(group_id)
        elif made < cutoff:
            found[group_id] = names
    return found


# -- deciding ---------------------------------------------------------------------------------


async def classify(store: BlobClientStorage, group: Group) -> Group:
    """Decide what the group is and whether it may be deleted (without ``--force``)."""
    names = set(group.names)
    gid = group.group_id
    if graph_blob(gid) in names:
        return await _classify_graph(store, group, names)
    if names == {standalone_blob(gid)}:
        group.kind = "standalone"
        try:
            got = await Records(store).get(standalone_blob(gid))
        except ValueError as exc:
            return _corrupted(group, str(exc))
        if got is None:
            group.state, group.reason = "gone", "deleted meanwhile"
        elif got[0].status in STALLED_STATUSES:
            group.state, group.reason = "in progress", f"status {got[0].status.value}"
        else:
            group.delete, group.reason = True, f"status {got[0].status.value}"
        return group
    if names == {graph_status_blob(gid)}:
        group.kind, group.state, group.delete = "remnant", "partly purged", True
        group.reason = "only the end-of-graph record is left (an interrupted purge)"
        return group
    return _corrupted(group, f"{len(names)} blob(s) but no graph.json")


def _corrupted(group: Group, reason: str) -> Group:
    if group.kind == "graph":
        group.kind = "corrupted"
    group.state, group.reason = "corrupted", reason
    return group


async def _classify_graph(store: BlobClientStorage, group: Group, names: set[str]) -> Group:
    gid = group.group_id
    runtime = read_only_runtime(store)
    try:
        graph = await read_graph(runtime, gid)
    except ValueError as exc:  # graph.json or a record that is not what it should be
        return _corrupted(group, redact(str(exc)).splitlines()[0])
    if graph is None:
        group.state, group.reason = "gone", "deleted meanwhile"
        return group
    moving = [t for t, r in graph.results.items() if r.status in STALLED_STATUSES]
    if graph.protocol != LEGACY_PROTOCOL:
        # Records are written as things happen, so a missing one says nothing; the
        # end-of-graph record (deleted last) says whether the graph ended.
        progress = await progress_of(runtime, graph)
        if progress.ended and not moving:
            group.delete, group.reason = True, "complete"
        else:
            group.state = "in progress"
            group.reason = (
                f"{len(moving)} node(s) scheduled, started or retrying" if moving else "not ended"
            )
        return group
    missing = [t for t in graph.tasks if t not in graph.results]
    if not missing and graph.is_complete():
        group.delete, group.reason = True, "complete"
    elif missing and not moving:
        group.state, group.delete = "partly purged", True
        group.reason = f"{len(missing)} of {len(graph.tasks)} record(s) already gone"
    else:
        group.state = "in progress"
        group.reason = (
            f"{len(moving)} node(s) scheduled, started or retrying" if moving else ("not complete")
        )
    return group


# -- deleting ---------------------------------------------------------------------------------


async def delete_groups(store: BlobClientStorage, groups: list[Group]) -> None:
    """Delete the groups: records first, then graph.json, then the end-of-graph record;
    a later kind only for groups whose earlier blobs all went."""

    def last_kinds(g: Group) -> tuple[str, str]:
        return graph_blob(g.group_id), graph_status_blob(g.group_id)

    stages: list[list[Group]] = [groups]
    for stage in range(3):
        batch: list[tuple[Group, str]] = []
        for group in stages[-1]:
            graph_json, status_json = last_kinds(group)
            for name in group.names:
                kind = 1 if name == graph_json else 2 if name == status_json else 0
                if kind == stage:
                    batch.append((group, name))
        failed = set(await store.delete_blobs_batch([name for _, name in batch]))
        for group, name in batch:
            if name in failed:
                group.failed.append(name)
        stages.append([g for g in stages[-1] if not g.failed])


async def purge_groups(
    store: BlobClientStorage,
    older_than_days: int,
    *,
    dry_run: bool,
    force: bool,
    all_graphs: bool,
) -> PurgeReport:
    """Find, decide and (unless ``dry_run``) delete old groups."""
    cutoff = datetime.now(UTC) - timedelta(days=older_than_days)
    report = PurgeReport(cutoff=cutoff, by_tags=not all_graphs, dry_run=dry_run)
    if all_graphs:
        found = await find_by_listing(store, cutoff, report.undated)
    else:
        found = await find_by_tag(store, cutoff)
    groups = await bounded_gather(
        [classify(store, Group(gid, names)) for gid, names in found.items()], limit=8
    )
    for group in groups:
        if not group.delete and force and group.state in ("in progress", "corrupted"):
            group.delete = group.forced = True
    report.groups = [g for g in groups if g.state != "gone"]
    if not dry_run:
        await delete_groups(store, report.deleted)
    return report


# -- the command ------------------------------------------------------------------------------


def _print(report: PurgeReport) -> None:
    found_by = "the created_date tag index" if report.by_tags else "listing (dated by UUID7 id)"
    click.echo(
        f"Groups created before {report.cutoff.strftime('%Y-%m-%d %H:%M')} UTC, "
        f"found by {found_by}:"
    )
    if not report.groups:
        click.echo("Nothing to purge.")
    else:
        rows = []
        for g in report.groups:
            if g.delete:
                action = "would delete" if report.dry_run else "deleted"
                if g.failed:
                    action = f"{len(g.failed)} not deleted"
                if g.forced:
                    action += " (--force)"
            else:
                action = "skipped"
            rows.append([g.group_id, g.kind, g.state, str(len(g.names)), action, g.reason])
        click.echo(table(["GROUP", "KIND", "STATE", "BLOBS", "ACTION", "WHY"], rows))
    blobs = sum(len(g.names) for g in report.deleted)
    verb = "Would delete" if report.dry_run else "Deleted"
    click.echo(f"{verb} {blobs} blob(s) in {len(report.deleted)} group(s).")
    if report.in_progress:
        click.echo(
            f"Skipped {len(report.in_progress)} group(s) in progress (--force deletes them)."
        )
    if report.corrupted:
        click.echo(
            f"Skipped {len(report.corrupted)} corrupted group(s) (--force deletes them).",
            err=True,
        )
    if report.undated:
        click.echo(
            f"Left {len(report.undated)} group(s) whose id is not a UUID7 and so has no date.",
            err=True,
        )
    for name in report.failed:
        click.echo(f"Could not delete {name}", err=True)
    if report.dry_run:
        click.echo("Dry run: nothing was deleted.")


@click.command("purge")
@click.option(
    "--older-than",
    "older_than",
    type=click.IntRange(OLDEST_DAYS, NEWEST_DAYS),
    required=True,
    metavar="DAYS",
    help=f"Delete groups created more than DAYS days ago ({OLDEST_DAYS}-{NEWEST_DAYS}).",
)
@click.option("--dry-run", is_flag=True, help="Only show what would be deleted.")
@click.option("--force", is_flag=True, help="Also delete groups in progress and corrupted ones.")
@click.option(
    "--all-graphs",
    is_flag=True,
    help="Find groups by listing and dating their UUID7 ids, not by the created_date tag "
    "(slower; finds untagged groups).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@results_options
def purge(
    older_than: int,
    dry_run: bool,
    force: bool,
    all_graphs: bool,
    as_json: bool,
    results: ResultsOptions,
) -> None:
    """Delete graphs and standalone results older than --older-than days.

    Complete graphs and finished results are deleted; groups in progress or
    corrupted are skipped unless --force. An interrupted purge is finished by
    the next run. Exit status: 0 done, 1 something skipped as in progress,
    2 error.
    """
    results.check()

    async def go() -> PurgeReport:
        store = results.store()
        try:
            return await purge_groups(
                store, older_than, dry_run=dry_run, force=force, all_graphs=all_graphs
            )
        finally:
            await store.close()

    report = run(go(), EXIT_ERROR)
    if as_json:
        echo_json(report.to_dict())
    else:
        _print(report)
    raise click.exceptions.Exit(report.exit_code)

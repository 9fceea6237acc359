"""``boilermaker dlq``: list, show, replay and purge dead-lettered tasks.

A thin layer over :class:`boilermaker.dead_letters.DeadLetterQueue`. ``list``
and ``show`` only peek. ``replay`` and ``purge`` show what matches, ask for
confirmation (unless ``--yes``), then act on exactly the messages they showed.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any, TypeVar

import click

from boilermaker.cli.connection import (
    ResultsOptions,
    ServiceBusOptions,
    results_options,
    service_bus_options,
)
from boilermaker.cli.errors import run
from boilermaker.cli.output import echo_json, one_line, table, when
from boilermaker.cli.times import MOMENT
from boilermaker.dead_letters import (
    DeadLetter,
    DeadLetterFilter,
    DeadLetterQueue,
    MessageOutcome,
    PurgeReport,
    ReplayReport,
)
from boilermaker.reasons import MAX_DELIVERY_COUNT_EXCEEDED, REASONS

F = TypeVar("F", bound=Callable[..., Any])

KNOWN_REASONS = (*REASONS, MAX_DELIVERY_COUNT_EXCEEDED)


@click.group()
def dlq() -> None:
    """Inspect and act on the dead-letter queue.

    Dead-letter reasons: InvalidTaskFormat (undecodable body), ExpectationFailed
    (unknown function or graph), TaskFailed (the task failed), ProcessingError
    (retries exhausted), MaxDeliveryCountExceeded (set by Service Bus).
    """


def filter_options(command: F) -> F:
    """Add the filters; the command receives one ``filters: DeadLetterFilter``."""

    @functools.wraps(command)
    def build(**kwargs: Any) -> Any:
        since: datetime | None = kwargs.pop("since")
        until: datetime | None = kwargs.pop("until")
        seqs: tuple[int, ...] = kwargs.pop("seq")
        try:
            kwargs["filters"] = DeadLetterFilter(
                reason=kwargs.pop("reason"),
                function_name=kwargs.pop("function"),
                task_id=kwargs.pop("task_id"),
                enqueued_since=since,
                enqueued_until=until,
                sequence_numbers=frozenset(seqs) if seqs else None,
            )
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--since' / '--until'") from None
        return command(**kwargs)

    options = [
        click.option(
            "--reason",
            metavar="REASON",
            help=f"Only this dead-letter reason ({', '.join(KNOWN_REASONS)}; any case).",
        ),
        click.option("--function", metavar="NAME", help="Only tasks of this function."),
        click.option("--task-id", metavar="ID", help="Only this task."),
        click.option(
            "--since",
            type=MOMENT,
            help="Only messages enqueued at or after this time: ISO 8601 (UTC unless it has "
            "an offset) or an age like 30m, 2h, 1d.",
        ),
        click.option("--until", type=MOMENT, help="Only messages enqueued at or before this time."),
        click.option(
            "--seq",
            type=int,
            multiple=True,
            metavar="N",
            help="Only this sequence number (repeatable).",
        ),
    ]
    decorated: Callable[..., Any] = build
    for option in reversed(options):
        decorated = option(decorated)
    return decorated  # type: ignore[return-value]


def _limit_option(default: int | None, help_text: str) -> Callable[[F], F]:
    return click.option(
        "--limit",
        type=click.IntRange(min=1),
        default=default,
        show_default=default is not None,
        help=help_text,
    )


_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
_yes_option = click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
_dry_run_option = click.option(
    "--dry-run", is_flag=True, help="Only show what would be done; change nothing."
)


# -- list and show --------------------------------------------------------------------------


@dlq.command("list")
@filter_options
@_limit_option(50, "Most messages to show.")
@_json_option
@service_bus_options
def list_command(
    filters: DeadLetterFilter, limit: int, as_json: bool, bus: ServiceBusOptions
) -> None:
    """List dead-lettered messages (oldest first) without locking them."""
    bus.check()

    async def go() -> list[DeadLetter]:
        broker = bus.broker()
        try:
            return await DeadLetterQueue(broker).list(limit, filters)
        finally:
            await broker.close()

    letters = run(go(), read_only=True)
    if as_json:
        echo_json([letter.to_dict() for letter in letters])
        return
    if not letters:
        click.echo(f"No dead-lettered messages match in queue {bus.queue}.", err=True)
        return
    click.echo(letters_table(letters))
    more = " (the limit; there may be more: raise --limit)" if len(letters) >= limit else ""
    click.echo(f"{len(letters)} dead-lettered message(s) in queue {bus.queue}{more}.", err=True)


def letters_table(letters: list[DeadLetter]) -> str:
    """The readable table of dead letters."""
    rows = [
        [
            str(letter.sequence_number),
            when(letter.enqueued_time),
            letter.reason or "-",
            letter.function_name or "-",
            "-" if letter.attempts_made is None else str(letter.attempts_made),
            letter.description or letter.decode_error or "",
        ]
        for letter in letters
    ]
    return table(["SEQ", "ENQUEUED (UTC)", "REASON", "FUNCTION", "ATTEMPTS", "DESCRIPTION"], rows)


@dlq.command("show")
@click.argument("sequence_number", metavar="SEQ", type=int)
@_json_option
@service_bus_options
def show_command(sequence_number: int, as_json: bool, bus: ServiceBusOptions) -> None:
    """Show everything about one dead-lettered message."""
    bus.check()

    async def go() -> DeadLetter | None:
        broker = bus.broker()
        try:
            return await DeadLetterQueue(broker).show(sequence_number)
        finally:
            await broker.close()

    letter = run(go(), read_only=True)
    if letter is None:
        raise click.ClickException(
            f"no dead-lettered message with sequence number {sequence_number} in queue {bus.queue}"
        )
    if as_json:
        echo_json(letter.to_dict(include_body=True))
        return
    click.echo(describe(letter))


def describe(letter: DeadLetter) -> str:
    """A dead letter's fields, one per line, then its properties and body."""
    task = letter.task
    fields: list[tuple[str, Any]] = [
        ("Sequence number", letter.sequence_number),
        ("Message id", letter.message_id),
        ("Reason", letter.reason or "-"),
        ("Description", letter.description or "-"),
        ("Enqueued (UTC)", when(letter.enqueued_time)),
        ("Delivery count", letter.delivery_count),
        ("Dead-letter source", letter.dead_letter_source or "-"),
    ]
    if task is not None:
        fields += [
            ("Function", task.function_name),
            ("Task id", task.task_id),
            ("Graph id", task.graph_id or "-"),
            ("Attempts made", letter.attempts_made),
            ("Arguments", json.dumps(task.args, default=str)),
            ("Keyword arguments", json.dumps(task.kwargs, default=str)),
        ]
    else:
        fields.append(("Not a task", letter.decode_error or "-"))
    lineage = letter.lineage
    if lineage is not None:
        seq = lineage.original_sequence_number
        fields += [
            ("Replayed", f"{lineage.replay_count} time(s), last at {when(lineage.replayed_at)}"),
            (
                "Original message",
                f"{lineage.original_message_id}" + (f" (sequence {seq})" if seq else ""),
            ),
            ("Reason before replay", lineage.dead_letter_reason or "-"),
        ]
    width = max(len(name) for name, _ in fields) + 2
    lines = [f"{name + ':':<{width}}{value}" for name, value in fields]
    lines.append("Application properties:")
    for key, value in sorted(letter.application_properties.items()):
        lines.append(f"  {key}: {one_line(str(value), 200)}")
    body = letter.body
    lines.append(f"Body ({len(body)} bytes):")
    text = body[:4000].decode("utf-8", "replace")
    lines.append("  " + text + (" ..." if len(body) > 4000 else ""))
    return "\n".join(lines)


# -- replay and purge -------------------------------------------------------------------------


@dlq.command("replay")
@filter_options
@_limit_option(None, "Most messages to replay (default: all that match).")
@_dry_run_option
@click.option(
    "--rate", type=click.FloatRange(min=0, min_open=True), help="Most messages sent per second."
)
@click.option(
    "--keep-attempts",
    is_flag=True,
    help="Keep the tasks' attempt counts (by default they restart at 0).",
)
@_yes_option
@_json_option
@results_options
@service_bus_options
def replay_command(
    filters: DeadLetterFilter,
    limit: int | None,
    dry_run: bool,
    rate: float | None,
    keep_attempts: bool,
    yes: bool,
    as_json: bool,
    results: ResultsOptions,
    bus: ServiceBusOptions,
) -> None:
    """Send dead-lettered tasks back to the queue, then remove them from the dead-letter queue.

    Copies get message id <original id>:replay:<n> and keep their lineage in
    application properties. Graph tasks need the results store (--results-*)
    so their node can be reset; without it they are skipped.
    """
    bus.check()
    if results.given:
        results.check()

    async def go(chosen: DeadLetterFilter, dry: bool) -> ReplayReport:
        broker = bus.broker()
        store = results.store() if results.given else None
        try:
            graphs = None
            if store is not None:
                from boilermaker.app import Boilermaker

                graphs = Boilermaker(None, broker, results_storage=store).graphs
            queue = DeadLetterQueue(broker, graphs=graphs)
            return await queue.replay(
                chosen,
                limit=limit,
                dry_run=dry,
                rate_per_second=rate,
                reset_attempts=not keep_attempts,
            )
        finally:
            await broker.close()
            if store is not None:
                await store.close()

    preview = run(go(filters, True))
    if dry_run or not preview.replayed:
        _print_report(preview, "replay", as_json, bus)
        return
    if not yes:
        if not as_json:
            _print_report(preview, "replay", False, bus)
        click.confirm(
            f"Replay {len(preview.replayed)} message(s) to queue {bus.queue}?",
            abort=True,
            err=True,
        )
    chosen = replace(filters, sequence_numbers=frozenset(preview.replayed_sequence_numbers))
    report = run(go(chosen, False))
    _print_report(report, "replay", as_json, bus)
    if report.failed:
        raise click.exceptions.Exit(1)


@dlq.command("purge")
@filter_options
@_limit_option(None, "Most messages to remove (default: all that match).")
@_dry_run_option
@_yes_option
@_json_option
@service_bus_options
def purge_command(
    filters: DeadLetterFilter,
    limit: int | None,
    dry_run: bool,
    yes: bool,
    as_json: bool,
    bus: ServiceBusOptions,
) -> None:
    """Remove dead-lettered messages for good."""
    bus.check()

    async def go(chosen: DeadLetterFilter, dry: bool) -> PurgeReport:
        broker = bus.broker()
        try:
            return await DeadLetterQueue(broker).purge(chosen, limit=limit, dry_run=dry)
        finally:
            await broker.close()

    preview = run(go(filters, True))
    if dry_run or not preview.purged:
        _print_report(preview, "purge", as_json, bus)
        return
    if not yes:
        if not as_json:
            _print_report(preview, "purge", False, bus)
        click.confirm(
            f"Remove {len(preview.purged)} message(s) from the dead-letter queue of "
            f"{bus.queue} for good?",
            abort=True,
            err=True,
        )
    chosen = replace(filters, sequence_numbers=frozenset(preview.purged_sequence_numbers))
    report = run(go(chosen, False))
    _print_report(report, "purge", as_json, bus)
    if report.failed:
        raise click.exceptions.Exit(1)


def _print_report(
    report: ReplayReport | PurgeReport, verb: str, as_json: bool, bus: ServiceBusOptions
) -> None:
    if as_json:
        echo_json(report.to_dict())
        return
    done = report.replayed if isinstance(report, ReplayReport) else report.purged
    past = "replayed" if verb == "replay" else "removed"
    if report.dry_run:
        click.echo(f"Would {verb} {len(done)} message(s) (queue {bus.queue}):")
    else:
        click.echo(f"{past.capitalize()} {len(done)} message(s) (queue {bus.queue}):")
    _outcome_rows(done, show_new_id=verb == "replay")
    if report.skipped:
        click.echo(f"Skipped {len(report.skipped)} (left in the dead-letter queue):")
        _outcome_rows(report.skipped)
    if report.failed:
        click.echo(f"Failed {len(report.failed)} (left in the dead-letter queue):")
        _outcome_rows(report.failed)


def _outcome_rows(outcomes: list[MessageOutcome], show_new_id: bool = False) -> None:
    if not outcomes:
        return
    headers = ["SEQ", "REASON", "FUNCTION", "MESSAGE ID"]
    if show_new_id:
        headers.append("NEW MESSAGE ID")
    headers.append("NOTE")
    rows = []
    for o in outcomes:
        row = [str(o.sequence_number), o.reason or "-", o.function_name or "-", o.message_id]
        if show_new_id:
            row.append(o.new_message_id or "-")
        row.append(o.detail or "")
        rows.append(row)
    click.echo(table(headers, rows))

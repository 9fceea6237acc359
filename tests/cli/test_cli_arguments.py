"""Arguments and settings at the CLI's edge: clear usage errors, never tracebacks."""

from __future__ import annotations

import importlib.metadata
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from boilermaker.cli.dlq import filter_options
from boilermaker.cli.main import COMMANDS, cli
from boilermaker.cli.times import parse_duration, parse_moment
from boilermaker.dead_letters import DeadLetterFilter
from tests.cli.conftest import invoke

EMULATOR_LIKE = (
    "Endpoint=sb://localhost:1;SharedAccessKeyName=RootManageSharedAccessKey;"
    "SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true"
)


def assert_usage_error(result: Any, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    for needle in needles:
        assert needle in result.output, result.output


# -- Service Bus settings -------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["dlq", "list"],
        ["dlq", "show", "1"],
        ["dlq", "replay", "--yes"],
        ["dlq", "purge", "--yes"],
    ],
)
def test_dlq_commands_without_a_service_bus_name_both_options_and_variables(
    command: list[str],
) -> None:
    result = invoke(*command)

    assert_usage_error(
        result,
        "--connection-string",
        "SERVICE_BUS_CONNECTION_STRING",
        "--namespace-url",
        "SERVICE_BUS_NAMESPACE_URL",
    )


def test_a_missing_queue_names_the_option_and_the_variable() -> None:
    result = invoke("dlq", "list", SERVICE_BUS_CONNECTION_STRING=EMULATOR_LIKE)

    assert_usage_error(result, "--queue", "SERVICE_BUS_QUEUE_NAME")


def test_a_malformed_connection_string_is_a_usage_error() -> None:
    from_option = invoke("dlq", "list", "--connection-string", "nonsense", "--queue", "q")
    from_env = invoke(
        "dlq",
        "list",
        SERVICE_BUS_CONNECTION_STRING="Endpoint=https://x;SharedAccessKeyName=a;SharedAccessKey=b",
        SERVICE_BUS_QUEUE_NAME="q",
    )

    assert_usage_error(from_option, "SERVICE_BUS_CONNECTION_STRING", "Key=Value")
    assert_usage_error(from_env, "'--connection-string' / SERVICE_BUS_CONNECTION_STRING", "sb://")


def test_a_namespace_url_without_a_host_is_a_usage_error() -> None:
    result = invoke("dlq", "list", "--namespace-url", "https://", "--queue", "q")

    assert_usage_error(result, "'--namespace-url' / SERVICE_BUS_NAMESPACE_URL", "no host name")


def test_bad_filter_values_are_usage_errors() -> None:
    settings = {"SERVICE_BUS_CONNECTION_STRING": EMULATOR_LIKE, "SERVICE_BUS_QUEUE_NAME": "q"}

    assert_usage_error(invoke("dlq", "list", "--since", "yesterday", **settings), "'--since'")
    assert_usage_error(invoke("dlq", "list", "--limit", "0", **settings), "'--limit'")
    assert_usage_error(invoke("dlq", "replay", "--rate", "0", **settings), "'--rate'")
    assert_usage_error(
        invoke("dlq", "list", "--since", "1h", "--until", "2h", **settings), "is after"
    )


# -- results store settings ---------------------------------------------------------------------


def test_graph_and_results_commands_without_a_results_store_name_what_is_missing() -> None:
    status = invoke("graph", "status", "g-1")
    result = invoke("results", "get", "t-1")
    no_container = invoke(
        "results",
        "get",
        "t-1",
        BOILERMAKER_RESULTS_CONNECTION_STRING="UseDevelopmentStorage=true",
    )
    recover = invoke(
        "graph",
        "recover",
        "g-1",
        "--results-connection-string",
        "UseDevelopmentStorage=true",
        "--results-container",
        "results",
    )

    for missing in (status, result):
        assert_usage_error(
            missing,
            "--results-connection-string",
            "BOILERMAKER_RESULTS_CONNECTION_STRING",
            "BOILERMAKER_RESULTS_STORAGE_URL",
        )
    assert_usage_error(no_container, "--results-container", "BOILERMAKER_RESULTS_CONTAINER")
    assert_usage_error(recover, "SERVICE_BUS_CONNECTION_STRING")


def test_a_malformed_results_connection_string_is_a_usage_error() -> None:
    result = invoke(
        "results",
        "get",
        "t-1",
        "--results-connection-string",
        "junk",
        "--results-container",
        "results",
    )

    assert_usage_error(result, "'--results-connection-string'", "malformed")


# -- worker APP -----------------------------------------------------------------------------


@pytest.fixture
def app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory with app modules; sys.path and sys.modules are restored afterwards."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "modules", dict(sys.modules))
    (tmp_path / "cli_arg_apps.py").write_text(
        textwrap.dedent(
            """
            from boilermaker import Boilermaker
            from boilermaker.memory import InMemoryBroker

            with_broker = Boilermaker(None, InMemoryBroker())
            without_broker = Boilermaker(None)
            not_an_app = {"app": 1}
            """
        )
    )
    (tmp_path / "cli_arg_broken.py").write_text("raise RuntimeError('boom at import')\n")
    return tmp_path


def test_worker_app_errors_say_what_is_wrong(app_dir: Path) -> None:
    where = ["--app-dir", str(app_dir)]

    assert_usage_error(invoke("worker", "not a module", *where), "is not module:attribute")
    assert_usage_error(invoke("worker", "cli_no_such_module:app", *where), "cannot import module")
    assert_usage_error(invoke("worker", "cli_arg_apps:missing", *where), "has no attribute")
    assert_usage_error(
        invoke("worker", "cli_arg_apps:not_an_app", *where), "is a dict, not a Boilermaker app"
    )
    broken = invoke("worker", "cli_arg_broken:app", *where)
    assert broken.exit_code == 1
    assert "importing 'cli_arg_broken' failed: RuntimeError: boom at import" in broken.output


def test_worker_settings_for_an_app_without_a_broker_are_checked(app_dir: Path) -> None:
    where = ["--app-dir", str(app_dir)]

    assert_usage_error(
        invoke("worker", "cli_arg_apps:without_broker", *where), "SERVICE_BUS_CONNECTION_STRING"
    )
    assert_usage_error(
        invoke("worker", "cli_arg_apps:with_broker", "--queue", "q", *where),
        "already has a broker; --queue only apply",
    )
    assert_usage_error(
        invoke("worker", "cli_arg_apps:with_broker", "--concurrency", "0", *where),
        "'--concurrency'",
    )
    assert_usage_error(
        invoke("worker", "cli_arg_apps:with_broker", "--shutdown-grace", "soon", *where),
        "'--shutdown-grace'",
    )
    assert_usage_error(
        invoke("worker", "cli_arg_apps:with_broker", "--log-level", "loud", *where),
        "'--log-level'",
    )


# -- filters, times, durations --------------------------------------------------------------


def test_filter_options_become_one_dead_letter_filter() -> None:
    seen: list[DeadLetterFilter] = []

    @click.command()
    @filter_options
    def probe(filters: DeadLetterFilter) -> None:
        seen.append(filters)

    result = CliRunner().invoke(
        probe,
        [
            "--reason",
            "TaskFailed",
            "--function",
            "charge",
            "--task-id",
            "t-1",
            "--since",
            "2025-01-31T12:00:00",
            "--until",
            "2025-02-01T00:00:00+01:00",
            "--seq",
            "3",
            "--seq",
            "9",
        ],
    )

    assert result.exit_code == 0, result.output
    assert seen == [
        DeadLetterFilter(
            reason="TaskFailed",
            function_name="charge",
            task_id="t-1",
            enqueued_since=datetime(2025, 1, 31, 12, tzinfo=UTC),
            enqueued_until=datetime(2025, 1, 31, 23, tzinfo=UTC),
            sequence_numbers=frozenset({3, 9}),
        )
    ]


def test_durations_and_moments() -> None:
    now = datetime(2025, 6, 1, 12, tzinfo=UTC)

    assert parse_duration("90") == timedelta(seconds=90)
    assert parse_duration("1h30m") == timedelta(minutes=90)
    assert parse_duration("2d") == timedelta(days=2)
    assert parse_duration("1w") == timedelta(weeks=1)
    assert parse_duration("0.5s") == timedelta(milliseconds=500)
    assert parse_moment("2h", now) == datetime(2025, 6, 1, 10, tzinfo=UTC)
    assert parse_moment("2025-01-31T12:00:00Z") == datetime(2025, 1, 31, 12, tzinfo=UTC)
    assert parse_moment("2025-01-31") == datetime(2025, 1, 31, tzinfo=UTC)
    for bad in ("", "h", "1x", "-5", "nan", "2h ago"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_moment("last tuesday")


# -- the command group ------------------------------------------------------------------------


def test_every_command_module_is_registered_and_the_script_is_declared() -> None:
    names = set(cli.commands)

    assert {attribute for _module, attribute in COMMANDS} <= names
    assert {"worker", "dlq", "graph", "results", "emulator"} <= names
    (script,) = importlib.metadata.entry_points(group="console_scripts", name="boilermaker")
    assert script.value == "boilermaker.cli.main:entry"
    assert invoke("--help").exit_code == 0


def test_emulator_forwards_to_the_emulators_own_command_line() -> None:
    result = invoke("emulator", "--help")

    assert result.exit_code == 0
    assert "usage: boilermaker-emulator" in result.output
    assert "--accept-any-token" in result.output
    assert invoke("emulator", "--port", "70000").exit_code == 2


def test_emulator_says_how_to_install_it_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boilermaker.emulator.__main__", None)

    result = invoke("emulator", "--port", "0")

    assert result.exit_code == 1
    assert "pip install 'boilermaker-cli[emulator]'" in result.output
    assert "Traceback" not in result.output

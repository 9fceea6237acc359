"""The configuration guide's table and the code agree, both ways.

Every environment variable the code reads (``boilermaker.config.ENVIRONMENT``,
every ``envvar`` of the ``boilermaker`` command's click options, and the few
variables read elsewhere) has a row in docs/guides/configuration.md, and
every variable in the table is one the code reads. Rows also name the right
Config field, CLI option and default, so a renamed field or a changed default
shows up here too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from boilermaker import config
from boilermaker.cli.connection import NO_COLOR_ENV
from boilermaker.cli.main import cli
from boilermaker.storage import client_options

PAGE = Path(__file__).resolve().parents[2] / "docs" / "guides" / "configuration.md"
HEADING = "## Every variable"
VARIABLE = re.compile(r"`([A-Z][A-Z0-9_]*)`")
CODE = re.compile(r"`([^`]+)`")


@dataclass(frozen=True)
class Row:
    variables: tuple[str, ...]
    source: str  # the "Config field or CLI option" cell
    default: str  # the "type, default" cell
    line: int


def table_rows(text: str) -> list[Row]:
    """The rows of the table under HEADING (header and separator left out)."""
    lines = text.splitlines()
    start = lines.index(HEADING)
    rows: list[Row] = []
    in_table = False
    for number, line in enumerate(lines[start + 1 :], start=start + 2):
        if line.startswith("|"):
            in_table = True
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cells[0] in ("variable", "") or set(cells[0]) <= {"-", ":"}:
                continue
            assert len(cells) == 4, f"configuration.md:{number}: a row needs 4 cells"
            rows.append(Row(tuple(VARIABLE.findall(cells[0])), cells[1], cells[2], number))
        elif in_table:
            break
    return rows


def click_envvars() -> dict[str, set[str]]:
    """Every click option envvar of ``boilermaker``, with the option names that read it."""
    found: dict[str, set[str]] = {}

    def walk(command: click.Command) -> None:
        for param in command.params:
            if isinstance(param, click.Option) and param.envvar:
                envvars = [param.envvar] if isinstance(param.envvar, str) else param.envvar
                for name in envvars:
                    found.setdefault(name, set()).update(param.opts)
        if isinstance(command, click.Group):
            for sub in command.commands.values():
                walk(sub)

    walk(cli)
    return found


def environment_names() -> set[str]:
    return {name for setting in config.ENVIRONMENT.values() for name in setting.names}


def other_names() -> set[str]:
    """Variables read (or, for the worker index, set) outside Config and click."""
    return {
        config.WORKER_INDEX_ENV,
        config.AZURITE_ENV,
        NO_COLOR_ENV,
        *client_options._PROXY_VARIABLES,  # read by the blob store's HTTP session
    }


@pytest.fixture(scope="module")
def rows() -> list[Row]:
    found = table_rows(PAGE.read_text())
    assert found, f"no table under {HEADING!r} in {PAGE}"
    return found


@pytest.fixture(scope="module")
def documented(rows: list[Row]) -> dict[str, Row]:
    by_name: dict[str, Row] = {}
    for row in rows:
        assert row.variables, f"configuration.md:{row.line}: a row without a variable"
        for name in row.variables:
            assert name not in by_name, f"configuration.md:{row.line}: {name} is in two rows"
            by_name[name] = row
    return by_name


def test_click_tree_was_walked() -> None:
    """The walk finds the commands' options (guards against an empty, vacuous check)."""
    envvars = click_envvars()
    assert "--queue" in envvars[config.env_var("service_bus_queue_name")]
    assert "--storage-url" in envvars["BOILERMAKER_STORAGE_URL"]


def test_every_variable_the_code_reads_is_in_the_table(documented: dict[str, Row]) -> None:
    read = environment_names() | set(click_envvars()) | other_names()
    missing = sorted(read - set(documented))
    assert not missing, f"variables missing from the table in {PAGE.name}: {missing}"


def test_every_variable_in_the_table_is_read_by_the_code(documented: dict[str, Row]) -> None:
    read = environment_names() | set(click_envvars()) | other_names()
    unknown = sorted(set(documented) - read)
    assert not unknown, f"variables in {PAGE.name} that no code reads: {unknown}"


def _default_text(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    return f"`{value}`"


@pytest.mark.parametrize("field", sorted(config.ENVIRONMENT))
def test_config_rows_name_their_field_and_default(field: str, documented: dict[str, Row]) -> None:
    setting = config.ENVIRONMENT[field]
    row = documented[setting.env]
    assert set(setting.names) <= set(row.variables), (
        f"configuration.md:{row.line}: {setting.env} and its aliases {setting.aliases} "
        "belong in one row"
    )
    assert field in CODE.findall(row.source), (
        f"configuration.md:{row.line}: {setting.env} is Config.{field}"
    )
    expected = _default_text(setting.default)
    assert expected in row.default, (
        f"configuration.md:{row.line}: the default of {field} is {expected}, "
        f"the table says {row.default!r}"
    )


def test_cli_rows_name_their_options(documented: dict[str, Row]) -> None:
    for envvar, options in click_envvars().items():
        row = documented[envvar]
        named = {code.split()[-1] for code in CODE.findall(row.source)}
        longest = {o for o in options if o.startswith("--")}
        assert named & longest, (
            f"configuration.md:{row.line}: {envvar} is read by {sorted(longest)}"
        )

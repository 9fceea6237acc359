"""Unexpected errors: one line, a hint to use -v, their own exit status; never a secret."""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest

from boilermaker.cli.errors import UNEXPECTED_EXIT, run
from boilermaker.cli.main import cli, main

KEY = "c2VjcmV0LWtleS1ub3QtdG8tYmUtc2hvd24="


@pytest.fixture
def failing_commands() -> Iterator[None]:
    @cli.command("fail-in-run")
    def fail_in_run() -> None:
        async def go() -> None:
            raise RuntimeError(f"boom with AccountKey={KEY}")

        run(go())

    @cli.command("fail-outside")
    def fail_outside() -> None:
        raise LookupError("nothing explains this")

    yield
    cli.commands.pop("fail-in-run")
    cli.commands.pop("fail-outside")


@pytest.mark.parametrize("command", ["fail-in-run", "fail-outside"])
def test_unexpected_errors_are_one_line_with_their_own_status(
    failing_commands: None, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main([command])
    err = capsys.readouterr().err
    assert code == UNEXPECTED_EXIT == 70
    lines = [line for line in err.splitlines() if line]
    assert len(lines) == 1, err
    assert lines[0].startswith("Error: unexpected ")
    assert "run again with -v for the traceback" in lines[0]
    assert "Traceback" not in err
    assert KEY not in err


def test_verbose_shows_the_traceback_without_secrets(
    failing_commands: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["-v", "fail-in-run"])
    err = capsys.readouterr().err
    assert code == UNEXPECTED_EXIT
    assert "Traceback" in err
    assert "RuntimeError" in err
    assert KEY not in err


def test_usage_errors_keep_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["no-such-command"]) == 2
    assert "No such command" in capsys.readouterr().err
    assert main(["--help"]) == 0
    assert isinstance(cli, click.Group)


def test_a_commands_own_exit_status_is_what_main_returns(failing_commands: None) -> None:
    @cli.command("exit-with")
    @click.argument("status", type=int)
    def exit_with(status: int) -> None:
        raise click.exceptions.Exit(status)

    try:
        assert main(["exit-with", "1"]) == 1
        assert main(["exit-with", "0"]) == 0
        assert main(["exit-with", "3"]) == 3
    finally:
        cli.commands.pop("exit-with")

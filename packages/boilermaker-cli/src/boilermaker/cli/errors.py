"""How a command's failures reach the person or script that ran it.

:func:`run` runs a command's coroutine and turns what the services raise
into one-line ``Error: ...`` messages (redacted: no key, signature or
connection string is ever shown) with the command's exit status, never a
traceback.
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Coroutine
from typing import Any, TypeVar

import click

from boilermaker.broker import BrokerAuthenticationError, BrokerError
from boilermaker.cli.connection import GlobalOptions
from boilermaker.cli.output import redact
from boilermaker.exceptions import BoilermakerError
from boilermaker.results_store import ResultsStoreError

T = TypeVar("T")

#: Exit status of an unexpected error (a bug, or a failure nothing explains): distinct
#: from 1 (a service said no, or "found" for the 1.4.1 commands) and 2 (bad usage or
#: configuration). The 1.4.1 commands keep their documented 2.
UNEXPECTED_EXIT = 70


def unexpected(exc: BaseException, exit_code: int = UNEXPECTED_EXIT) -> CommandError:
    """One line for an unexpected error, with the traceback only under ``-v``."""
    if GlobalOptions.current().verbose:
        click.echo(redact(traceback.format_exc()), err=True)
        hint = ""
    else:
        hint = " (run again with -v for the traceback)"
    return CommandError(f"unexpected {type(exc).__name__}: {exc}{hint}", exit_code)


class CommandError(click.ClickException):
    """A command's error: printed (redacted) as ``Error: ...``, with its exit status."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(redact(message))
        self.exit_code = exit_code  # type: ignore[misc]  # click reads it per instance


#: Set once a read-only command's coroutine has returned: see :func:`quick_exit_allowed`.
_read_only_done = False


def quick_exit_allowed() -> bool:
    """Whether the command that ran only read, and its coroutine has returned.

    Such a command settles nothing and writes nothing but its output, and has
    closed what it opened, so the ``boilermaker`` process may end without
    Python's interpreter shutdown (:func:`boilermaker.cli.main.entry`).
    """
    return _read_only_done


def run(coro: Coroutine[Any, Any, T], exit_code: int = 1, *, read_only: bool = False) -> T:
    """Run a command's coroutine, turning service errors into one-line CLI errors.

    Errors exit with ``exit_code`` (the 1.4.1 commands use 2). With
    ``exit_code`` other than 1, anything unexpected is an error too (its
    traceback only with ``-v``), so scripts can rely on the status.
    ``read_only`` says the coroutine only reads (peeks, blob reads) and closes
    what it opens: once it returned, :func:`quick_exit_allowed` is true.
    """
    global _read_only_done
    try:
        result = asyncio.run(coro)
        _read_only_done = read_only
        return result
    except click.exceptions.Exit:
        raise
    except click.ClickException as exc:
        if exit_code != 1 and exc.exit_code == 1:
            raise CommandError(exc.message, exit_code) from None
        raise
    except BrokerAuthenticationError as exc:
        raise CommandError(f"Service Bus refused the credentials: {exc}", exit_code) from None
    except BrokerError as exc:
        raise CommandError(f"Service Bus: {exc}", exit_code) from None
    except ResultsStoreError as exc:
        raise CommandError(f"results store: {exc}", exit_code) from None
    except BoilermakerError as exc:
        raise CommandError(str(exc), exit_code) from None
    except Exception as exc:
        raise unexpected(exc, UNEXPECTED_EXIT if exit_code == 1 else exit_code) from None

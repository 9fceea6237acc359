"""The ``boilermaker`` command group and the list of command modules it is made of.

To add a command, write a module with a click command (or group) and add its
``(module, attribute)`` to :data:`COMMANDS`.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

import click

from boilermaker.cli.connection import global_options
from boilermaker.cli.errors import quick_exit_allowed, unexpected

#: Every command of ``boilermaker``, as (module, attribute of the click command).
COMMANDS: list[tuple[str, str]] = [
    ("boilermaker.cli.worker", "worker"),
    ("boilermaker.cli.dlq", "dlq"),
    ("boilermaker.cli.graph", "graph"),
    ("boilermaker.cli.graph", "inspect"),
    ("boilermaker.cli.graph", "recover"),
    ("boilermaker.cli.graph", "invoke"),
    ("boilermaker.cli.purge", "purge"),
    ("boilermaker.cli.results", "results"),
    ("boilermaker.cli.emulator", "emulator"),
    ("boilermaker.cli.demo", "demo"),
]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="boilermaker-cli", prog_name="boilermaker")
@global_options
def cli() -> None:
    """Boilermaker: async background tasks on Azure Service Bus.

    Connection settings come from options or the environment. Service Bus:
    SERVICE_BUS_NAMESPACE_URL (signing in with DefaultAzureCredential) or
    SERVICE_BUS_CONNECTION_STRING, and SERVICE_BUS_QUEUE_NAME. The results
    store: --storage-url / BOILERMAKER_STORAGE_URL (DefaultAzureCredential) or
    a connection string in BOILERMAKER_RESULTS_CONNECTION_STRING (alias
    BOILERMAKER_STORAGE_CONNECTION_STRING), and --container /
    BOILERMAKER_CONTAINER; each command's --results-* options take precedence.

    inspect, recover, invoke and purge are the 1.4.1 command line's commands,
    with its options and exit statuses (0 fine, 1 stalled / skipped / failed,
    2 error).
    """


for _module, _attribute in COMMANDS:
    cli.add_command(getattr(importlib.import_module(_module), _attribute))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line (``argv`` defaults to ``sys.argv[1:]``); returns the exit status."""
    try:
        # Without standalone mode click returns a command's ``ctx.exit(code)`` status
        # instead of raising it; any other return value is a command's own (status 0).
        returned = cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="boilermaker",
            standalone_mode=False,
        )
    except click.exceptions.Abort:
        click.echo("Aborted!", err=True)
        return 1
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        return code if isinstance(code, int) else 1
    except Exception as exc:  # an error raised outside a command's own handling
        error = unexpected(exc)
        error.show()
        return error.exit_code
    return returned if isinstance(returned, int) else 0


def entry() -> NoReturn:
    """The ``boilermaker`` command: :func:`main` on the process's arguments, then exit.

    After a read-only command (``dlq list``, ``dlq show``, ``inspect``, ``graph
    status``, ``results get``) the process ends at once, without Python's
    interpreter shutdown, which with the Azure SDK loaded takes longer than
    the command's own work on a local emulator. That is safe because such a
    command peeks or reads blobs only: it holds no message lock, has nothing
    to settle, has closed its links and connections, and its output is
    flushed here first. Every other command exits the usual way.
    """
    code = main()
    if quick_exit_allowed():
        try:
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):
            pass  # a closed pipe: exit as Python would, below
        else:
            os._exit(code)
    sys.exit(code)

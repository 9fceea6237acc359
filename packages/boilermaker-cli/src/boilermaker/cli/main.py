"""The ``boilermaker`` command group and the list of command modules it is made of.

To add a command, write a module with a click command (or group) and add its
``(module, attribute)`` to :data:`COMMANDS`.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import click

#: Every command of ``boilermaker``, as (module, attribute of the click command).
COMMANDS: list[tuple[str, str]] = [
    ("boilermaker.cli.worker", "worker"),
    ("boilermaker.cli.dlq", "dlq"),
    ("boilermaker.cli.graph", "graph"),
    ("boilermaker.cli.results", "results"),
    ("boilermaker.cli.emulator", "emulator"),
    ("boilermaker.cli.demo", "demo"),
]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="boilermaker-cli", prog_name="boilermaker")
def cli() -> None:
    """Boilermaker: async background tasks on Azure Service Bus.

    Connection settings come from options or the environment:
    SERVICE_BUS_CONNECTION_STRING (or SERVICE_BUS_NAMESPACE_URL with an Azure
    credential) and SERVICE_BUS_QUEUE_NAME; results commands use
    BOILERMAKER_RESULTS_CONNECTION_STRING (or BOILERMAKER_RESULTS_STORAGE_URL)
    and BOILERMAKER_RESULTS_CONTAINER.
    """


for _module, _attribute in COMMANDS:
    cli.add_command(getattr(importlib.import_module(_module), _attribute))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line (``argv`` defaults to ``sys.argv[1:]``); returns the exit status."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="boilermaker")
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        return code if isinstance(code, int) else 1
    return 0

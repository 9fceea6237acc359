"""``boilermaker emulator ...``: the local Service Bus emulator's own command line.

Everything after ``emulator`` goes to ``boilermaker-emulator`` unchanged (try
``boilermaker emulator --help``). It needs the emulator distribution:
``pip install 'boilermaker-cli[emulator]'``.
"""

from __future__ import annotations

import importlib

import click

INSTALL_HINT = (
    "the Service Bus emulator is not installed: pip install 'boilermaker-cli[emulator]' "
    "(or pip install boilermaker-emulator)"
)


@click.command(
    context_settings={
        "ignore_unknown_options": True,
        "allow_extra_args": True,
        "help_option_names": [],
    },
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def emulator(ctx: click.Context, args: tuple[str, ...]) -> None:
    """Run the local Service Bus emulator (its options: boilermaker emulator --help)."""
    try:
        module = importlib.import_module("boilermaker.emulator.__main__")
    except ImportError as exc:
        missing = getattr(exc, "name", None) or ""
        if missing and not missing.startswith("boilermaker"):
            # Installed, but one of its own dependencies is missing.
            raise click.ClickException(f"the emulator cannot start: {exc}") from None
        raise click.ClickException(INSTALL_HINT) from None
    ctx.exit(module.main(list(args)))

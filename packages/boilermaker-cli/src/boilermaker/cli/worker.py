"""``boilermaker worker APP``: run a worker for a Boilermaker app until SIGINT/SIGTERM.

``APP`` names the app as ``module:attribute`` (like arq and celery), imported
with the current directory (or ``--app-dir``) first on ``sys.path``. An app
built without a broker gets one from the connection options.
"""

from __future__ import annotations

import importlib
import logging
import sys
import traceback
from pathlib import Path
from typing import Any

import click

from boilermaker.app import Boilermaker
from boilermaker.cli.connection import (
    CONNECTION_STRING_ENV,
    NAMESPACE_URL_ENV,
    QUEUE_ENV,
    ServiceBusOptions,
    service_bus_options,
)
from boilermaker.cli.errors import run
from boilermaker.cli.processes import child_environment, run_worker_processes
from boilermaker.cli.times import DURATION
from boilermaker.log_format import JsonFormatter, configure_json_logging

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def load_app(spec: str, app_dir: str | None = None) -> Boilermaker:
    """Import ``module:attribute`` (``module`` alone means ``module:app``) and check it.

    Raises click errors that say what is wrong with ``spec``.
    """
    module_name, _, attribute = spec.partition(":")
    attribute = attribute or "app"
    if not module_name or not all(part.isidentifier() for part in module_name.split(".")):
        raise click.BadParameter(
            f"{spec!r} is not module:attribute (for example myproject.tasks:app)",
            param_hint="'APP'",
        )
    directory = str(Path(app_dir or ".").resolve())
    if directory not in sys.path:
        sys.path.insert(0, directory)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise click.BadParameter(
                f"cannot import module {module_name!r} ({exc}); looked in {directory} "
                "and the installed packages",
                param_hint="'APP'",
            ) from None
        traceback.print_exc()
        raise click.ClickException(f"importing {module_name!r} failed: {exc}") from None
    except Exception as exc:
        traceback.print_exc()
        raise click.ClickException(
            f"importing {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from None
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise click.BadParameter(
                f"module {module_name!r} has no attribute {attribute!r}", param_hint="'APP'"
            ) from None
    if not isinstance(target, Boilermaker):
        raise click.BadParameter(
            f"{spec!r} is a {type(target).__name__}, not a Boilermaker app", param_hint="'APP'"
        )
    return target


def configure_logging(level_name: str, json_logs: bool) -> None:
    """Boilermaker's loggers at ``level_name``; others at WARNING; JSON lines if asked."""
    level = getattr(logging, level_name.upper())
    if json_logs:
        configure_json_logging(level)
        logging.getLogger("boilermaker").propagate = False
        root = logging.getLogger()
        if not root.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(JsonFormatter())
            root.addHandler(handler)
        root.setLevel(logging.WARNING)
        return
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT, stream=sys.stderr)
    logging.getLogger("boilermaker").setLevel(level)


@click.command()
@click.argument("app_spec", metavar="APP")
@click.option(
    "--app-dir",
    type=click.Path(file_okay=False, exists=True),
    help="Directory to import APP from (default: the current directory).",
)
@click.option("--concurrency", type=click.IntRange(min=1), help="Tasks in flight at once.")
@click.option(
    "--prefetch",
    type=click.IntRange(min=0),
    help="Messages buffered ahead (default: twice the concurrency).",
)
@click.option(
    "--shutdown-grace",
    type=DURATION,
    help="Time in-flight tasks get to finish on shutdown (seconds, or 30s, 2m).",
)
@click.option(
    "--max-lock-renewal",
    type=DURATION,
    help="How long a running task's message lock is kept alive (seconds, or 10m, 1h).",
)
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes to run (for CPU-bound tasks); each has the concurrency given.",
)
@click.option("--json-logs", is_flag=True, help="Log JSON lines (one object per line).")
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="info",
    show_default=True,
    help="Level of Boilermaker's log lines.",
)
@service_bus_options
def worker(
    app_spec: str,
    app_dir: str | None,
    concurrency: int | None,
    prefetch: int | None,
    shutdown_grace: float | None,
    max_lock_renewal: float | None,
    processes: int,
    json_logs: bool,
    log_level: str,
    bus: ServiceBusOptions,
) -> None:
    """Run a worker for APP (module:attribute) until SIGINT or SIGTERM.

    On the first signal the worker stops receiving and gives in-flight tasks
    the shutdown grace; a second signal stops at once. Unfinished messages
    are abandoned back to the queue.
    """
    if processes > 1:
        args = [app_spec, "--log-level", log_level]
        for flag, value in (
            ("--app-dir", app_dir),
            ("--concurrency", concurrency),
            ("--prefetch", prefetch),
            ("--shutdown-grace", shutdown_grace),
            ("--max-lock-renewal", max_lock_renewal),
        ):
            if value is not None:
                args += [flag, str(value)]
        if json_logs:
            args.append("--json-logs")
        configure_logging(log_level, json_logs)
        env = child_environment(
            {
                CONNECTION_STRING_ENV: bus.connection_string,
                NAMESPACE_URL_ENV: bus.namespace_url,
                QUEUE_ENV: bus.queue,
            }
        )
        raise SystemExit(run_worker_processes(processes, args, env))
    app = load_app(app_spec, app_dir)
    if app.service_bus_client is None:
        app.set_broker(bus.broker())
    elif bus.on_command_line:
        given = ", ".join("--" + name.replace("_", "-") for name in bus.on_command_line)
        raise click.UsageError(
            f"{app_spec} already has a broker; {given} only apply to apps built without one"
        )
    if max_lock_renewal is not None and max_lock_renewal <= 0:
        raise click.BadParameter("must be more than 0", param_hint="'--max-lock-renewal'")
    overrides: dict[str, Any] = {}
    for name, value in (
        ("concurrency", concurrency),
        ("prefetch", prefetch),
        ("shutdown_grace", shutdown_grace),
        ("max_lock_renewal", max_lock_renewal),
    ):
        if value is not None:
            overrides[name] = value
    try:
        runner = app.worker(**overrides)  # refuses what cannot work, before anything starts
    except (TypeError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    settings = runner.settings
    configure_logging(log_level, json_logs)
    logging.getLogger("boilermaker.cli").info(
        "Starting worker for %s on queue %s (concurrency %d, prefetch %d)",
        app_spec,
        runner.broker.queue_name or "?",
        settings.concurrency,
        settings.effective_prefetch,
    )

    async def serve() -> None:
        try:
            await runner.run()
        finally:
            await app.close()

    run(serve())

"""Where commands connect: Service Bus and results store settings, checked at the edge.

This module is the one place that reads connection settings: the global
options given before the command (``--storage-url``, ``--container``, as the
1.4.1 command line has them), each command's own options, and their
environment variables. A missing or malformed setting is a usage error naming
the option and the variable; errors from the services while a command runs
become one-line error messages (:func:`boilermaker.cli.errors.run`), never
tracebacks, and never show a secret.

Which results store setting wins, first match:

1. on the command line: ``--results-connection-string``, then
   ``--results-storage-url``, then the global ``--storage-url``;
2. in the environment: ``BOILERMAKER_RESULTS_CONNECTION_STRING``, then its
   alias ``BOILERMAKER_STORAGE_CONNECTION_STRING``, then
   ``BOILERMAKER_RESULTS_STORAGE_URL``, then ``BOILERMAKER_STORAGE_URL``.

The container likewise: ``--results-container``, ``--container``,
``BOILERMAKER_RESULTS_CONTAINER``, ``BOILERMAKER_CONTAINER``. A storage URL
signs in with ``DefaultAzureCredential``; a connection string (account key or
SAS) serves Azurite and local use.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlparse

import click
from click.core import ParameterSource

from boilermaker.cli.output import configure_verbose_logging, redact
from boilermaker.config import ENVIRONMENT, ConfigError, env_var

if TYPE_CHECKING:
    from boilermaker.service_bus import AzureServiceBus
    from boilermaker.storage import BlobClientStorage
    from boilermaker.storage.reader import BlobReader

logger = logging.getLogger("boilermaker.cli")

F = TypeVar("F", bound=Callable[..., Any])

# Every variable is defined once, in boilermaker.config; the CLI reads those names.
CONNECTION_STRING_ENV = env_var("service_bus_connection_string")
NAMESPACE_URL_ENV = env_var("service_bus_namespace_url")
QUEUE_ENV = env_var("service_bus_queue_name")
RESULTS_CONNECTION_STRING_ENV = env_var("results_connection_string")
RESULTS_STORAGE_URL_ENV = env_var("results_storage_url")
RESULTS_CONTAINER_ENV = env_var("results_container")
#: The 1.4.1 command line's variables (global options), and a connection-string alias:
#: the settings' older names.
(STORAGE_URL_ENV,) = ENVIRONMENT["results_storage_url"].aliases
(CONTAINER_ENV,) = ENVIRONMENT["results_container"].aliases
(STORAGE_CONNECTION_STRING_ENV,) = ENVIRONMENT["results_connection_string"].aliases
NO_COLOR_ENV = "NO_COLOR"

_SERVICE_BUS_PARAMS = ("connection_string", "namespace_url", "queue")
_RESULTS_PARAMS = ("results_connection_string", "results_storage_url", "results_container")

#: Azure's container names: 3-63 of lowercase letters, digits and single hyphens.
_CONTAINER_NAME = re.compile(r"^(?=.{3,63}$)[a-z0-9]+(-[a-z0-9]+)*$|^\$(root|web|logs)$")


def _hint(option: str, env: str) -> str:
    return f"'{option}' / {env}"


# -- global options -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting's value and where it came from (for precedence and error hints)."""

    value: str
    option: str
    env: str
    from_command_line: bool

    @property
    def hint(self) -> str:
        """``'--option' / VARIABLE``, as usage errors name it."""
        return _hint(self.option, self.env)


@dataclass(frozen=True, slots=True)
class GlobalOptions:
    """The options given before the command (``boilermaker --container c inspect ...``)."""

    storage_url: Setting | None = None
    container: Setting | None = None
    verbose: bool = False
    no_color: bool = False

    @classmethod
    def current(cls) -> GlobalOptions:
        """The global options of the running command line (defaults outside one)."""
        ctx = click.get_current_context(silent=True)
        found = ctx.find_root().obj if ctx is not None else None
        return found if isinstance(found, GlobalOptions) else cls()


def _setting(
    ctx: click.Context, name: str, value: str | None, option: str, *envs: str
) -> Setting | None:
    """The setting of parameter ``name``, naming the variable it was read from."""
    if not value:
        return None
    source = ctx.get_parameter_source(name)
    env = next((e for e in envs if os.environ.get(e)), envs[0])
    return Setting(value, option, env, source is ParameterSource.COMMANDLINE)


def global_options(group: F) -> F:
    """Add ``--storage-url``, ``--container``, ``-v/--verbose`` and ``--no-color`` to the
    command group; they are kept as a :class:`GlobalOptions` in the root context."""

    @functools.wraps(group)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        verbose: bool = kwargs.pop("verbose")
        no_color = bool(kwargs.pop("no_color")) or bool(os.environ.get(NO_COLOR_ENV))
        ctx.obj = GlobalOptions(
            storage_url=_setting(
                ctx, "storage_url", kwargs.pop("storage_url"), "--storage-url", STORAGE_URL_ENV
            ),
            container=_setting(
                ctx, "container", kwargs.pop("container"), "--container", CONTAINER_ENV
            ),
            verbose=verbose,
            no_color=no_color,
        )
        if no_color:
            ctx.color = False
        if verbose:
            handler = configure_verbose_logging()
            ctx.call_on_close(lambda: logging.getLogger("boilermaker").removeHandler(handler))
        return group(*args, **kwargs)

    options = [
        click.option(
            "--storage-url",
            envvar=STORAGE_URL_ENV,
            show_envvar=True,
            metavar="URL",
            help="Blob storage account URL of the results store, signing in with "
            "DefaultAzureCredential (a command's --results-* options take precedence).",
        ),
        click.option(
            "--container",
            envvar=CONTAINER_ENV,
            show_envvar=True,
            metavar="NAME",
            help="The results container.",
        ),
        click.option("-v", "--verbose", is_flag=True, help="Debug logging on stderr."),
        click.option(
            "--no-color",
            is_flag=True,
            help=f"No colours in the output (also when {NO_COLOR_ENV} is set and not empty).",
        ),
    ]
    decorated: Callable[..., Any] = wrapper
    for option in reversed(options):
        decorated = option(decorated)
    return decorated  # type: ignore[return-value]


# -- Service Bus ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServiceBusOptions:
    """The Service Bus settings a command was given (not yet checked)."""

    connection_string: str | None
    namespace_url: str | None
    queue: str | None
    on_command_line: tuple[str, ...] = ()

    @property
    def given(self) -> bool:
        """Whether any setting was given (option or environment)."""
        return bool(self.connection_string or self.namespace_url or self.queue)

    def check(self) -> None:
        """Raise a usage error naming what is missing or malformed."""
        if not self.connection_string and not self.namespace_url:
            raise click.UsageError(
                "no Service Bus to connect to: pass --namespace-url / --sb-namespace-url (or "
                f"set {NAMESPACE_URL_ENV}) to sign in with DefaultAzureCredential, or "
                f"--connection-string (or set {CONNECTION_STRING_ENV}), e.g. for the emulator",
                ctx=click.get_current_context(silent=True),
            )
        if not self.queue:
            raise click.UsageError(
                f"no queue: pass --queue / --sb-queue-name or set {QUEUE_ENV}",
                ctx=click.get_current_context(silent=True),
            )
        self._build()

    def broker(self) -> AzureServiceBus:
        """A new broker on the queue (call :meth:`check` first for usage errors)."""
        self.check()
        return self._build()

    def _build(self) -> AzureServiceBus:
        try:
            from boilermaker.service_bus import AzureServiceBus
        except ImportError as exc:  # pragma: no cover - the CLI depends on it
            raise click.ClickException(
                f"the Service Bus transport is not installed ({exc}): "
                "pip install boilermaker-servicebus"
            ) from None
        try:
            return AzureServiceBus(
                None if self.connection_string else self.namespace_url,
                self.queue,
                connection_string=self.connection_string or None,
            )
        except ConfigError as exc:
            env = CONNECTION_STRING_ENV if self.connection_string else NAMESPACE_URL_ENV
            option = "--connection-string" if self.connection_string else "--namespace-url"
            message = str(exc).removeprefix(f"{env}: ")
            raise click.BadParameter(
                message, ctx=click.get_current_context(silent=True), param_hint=_hint(option, env)
            ) from None


def service_bus_options(command: F) -> F:
    """Add ``--connection-string``, ``--namespace-url`` and ``--queue`` (also spelled
    ``--sb-namespace-url`` and ``--sb-queue-name``, as 1.4.1's commands have them).

    The command receives them as one ``bus: ServiceBusOptions`` argument.
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        values = {name: kwargs.pop(name) for name in _SERVICE_BUS_PARAMS}
        kwargs["bus"] = ServiceBusOptions(
            **values, on_command_line=_from_command_line(_SERVICE_BUS_PARAMS)
        )
        return command(*args, **kwargs)

    options = [
        click.option(
            "--connection-string",
            envvar=CONNECTION_STRING_ENV,
            show_envvar=True,
            metavar="TEXT",
            help="Service Bus connection string (also serves the local emulator).",
        ),
        click.option(
            "--namespace-url",
            "--sb-namespace-url",
            "namespace_url",
            envvar=NAMESPACE_URL_ENV,
            show_envvar=True,
            metavar="URL",
            help="Namespace URL, signing in with DefaultAzureCredential "
            "(used when no connection string is given).",
        ),
        click.option(
            "--queue",
            "--sb-queue-name",
            "queue",
            envvar=QUEUE_ENV,
            show_envvar=True,
            metavar="NAME",
            help="The work queue.",
        ),
    ]
    decorated: Callable[..., Any] = wrapper
    for option in reversed(options):
        decorated = option(decorated)
    return decorated  # type: ignore[return-value]


def _from_command_line(names: tuple[str, ...]) -> tuple[str, ...]:
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return ()
    return tuple(n for n in names if ctx.get_parameter_source(n) is ParameterSource.COMMANDLINE)


# -- results store --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResultsOptions:
    """The results store settings a command was given (not yet checked).

    At most one of ``connection_string`` and ``storage_url`` is set: the one
    that won (see the module docstring). ``account`` and ``container_setting``
    say where they came from, so errors name the right option and variable.
    """

    connection_string: str | None
    storage_url: str | None
    container: str | None
    account: Setting | None = None
    container_setting: Setting | None = None

    @classmethod
    def resolve(
        cls,
        connection_string: Setting | None,
        storage_url: Setting | None,
        container: Setting | None,
        global_options: GlobalOptions | None = None,
    ) -> ResultsOptions:
        """Pick the account and container settings by precedence (command line first, a
        command's own option before the global one, a connection string first)."""
        glob = global_options or GlobalOptions()
        account = _first([connection_string, storage_url, glob.storage_url])
        chosen_container = _first([container, glob.container])
        is_connection_string = account is not None and account is connection_string
        return cls(
            connection_string=account.value if account and is_connection_string else None,
            storage_url=account.value if account and not is_connection_string else None,
            container=chosen_container.value if chosen_container else None,
            account=account,
            container_setting=chosen_container,
        )

    @property
    def given(self) -> bool:
        """Whether any results setting was given."""
        return bool(self.connection_string or self.storage_url or self.container)

    def check(self) -> None:
        """Raise a usage error naming what is missing or malformed."""
        ctx = click.get_current_context(silent=True)
        if not self.connection_string and not self.storage_url:
            raise click.UsageError(
                "this needs a results store: pass --storage-url URL before the command (or "
                f"set {STORAGE_URL_ENV}) to sign in with DefaultAzureCredential, or a "
                f"connection string (Azurite, local use) with --results-connection-string or "
                f"{RESULTS_CONNECTION_STRING_ENV} (alias {STORAGE_CONNECTION_STRING_ENV}); "
                f"--results-storage-url / {RESULTS_STORAGE_URL_ENV} also work",
                ctx=ctx,
            )
        if not self.container:
            raise click.UsageError(
                "no results container: pass --container NAME before the command or "
                f"--results-container, or set {CONTAINER_ENV} or {RESULTS_CONTAINER_ENV}",
                ctx=ctx,
            )
        if self.storage_url:
            parsed = urlparse(self.storage_url)
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                raise click.BadParameter(
                    f"{redact(self.storage_url)!r} is not a storage account URL (like "
                    "https://ACCOUNT.blob.core.windows.net)",
                    ctx=ctx,
                    param_hint=self._account_hint(),
                )
        if not _CONTAINER_NAME.match(self.container):
            hint = (
                self.container_setting.hint
                if self.container_setting
                else _hint("--results-container", RESULTS_CONTAINER_ENV)
            )
            raise click.BadParameter(
                f"{self.container!r} is not a container name: 3-63 lowercase letters, digits "
                "and single hyphens, starting and ending with a letter or digit",
                ctx=ctx,
                param_hint=hint,
            )

    def _account_hint(self) -> str:
        if self.account is not None:
            return self.account.hint
        if self.connection_string:
            return _hint("--results-connection-string", RESULTS_CONNECTION_STRING_ENV)
        return _hint("--results-storage-url", RESULTS_STORAGE_URL_ENV)

    def store(self) -> BlobClientStorage:
        """A new results store (``boilermaker.storage.BlobClientStorage``)."""
        self.check()
        assert self.container is not None
        try:
            from boilermaker.storage import BlobClientStorage
        except ImportError as exc:
            raise _not_installed(exc) from None
        self._log_choice("BlobClientStorage")
        with self._bad_account():
            if self.connection_string:
                return BlobClientStorage.from_connection_string(
                    self.connection_string, self.container
                )
            assert self.storage_url is not None
            return BlobClientStorage(self.storage_url, self.container)

    def reader(self) -> BlobReader | BlobClientStorage:
        """A results store for commands that only read.

        Given a connection string, the SDK-free
        :class:`boilermaker.storage.reader.BlobReader`: it reads the blobs
        over HTTP(S) itself, so the command does not import the Azure SDK
        (most of a read command's start-up). Given a storage URL (signing in
        with ``DefaultAzureCredential``), or with an HTTP proxy configured
        (``HTTPS_PROXY`` and friends, which the reader does not use), the
        SDK's store from :meth:`store`.
        """
        self.check()
        if not self.connection_string:
            return self.store()
        assert self.container is not None
        try:
            from boilermaker.storage.http_connection import proxy_configured
            from boilermaker.storage.reader import BlobReader
        except ImportError as exc:
            raise _not_installed(exc) from None
        if proxy_configured():
            return self.store()
        self._log_choice("BlobReader (read-only, without the Azure SDK)")
        with self._bad_account():
            return BlobReader.from_connection_string(self.connection_string, self.container)

    def _log_choice(self, kind: str) -> None:
        container_from = self.container_setting.hint if self.container_setting else "?"
        logger.debug(
            "results store: %s (from %s), container %r (from %s), read with %s",
            "a connection string" if self.connection_string else redact(self.storage_url or ""),
            self._account_hint(),
            self.container,
            container_from,
            kind,
        )

    @contextlib.contextmanager
    def _bad_account(self) -> Iterator[None]:
        """A ValueError about the account setting becomes a usage error naming it."""
        try:
            yield
        except ValueError as exc:
            raise click.BadParameter(
                redact(str(exc)),
                ctx=click.get_current_context(silent=True),
                param_hint=self._account_hint(),
            ) from None


def _not_installed(exc: ImportError) -> click.ClickException:
    return click.ClickException(
        f"the blob results store is not installed ({exc}): pip install boilermaker-results"
    )


def _first(settings: list[Setting | None]) -> Setting | None:
    """The first setting given on the command line, else the first from the environment."""
    given = [s for s in settings if s is not None]
    on_command_line = [s for s in given if s.from_command_line]
    chosen = on_command_line or given
    return chosen[0] if chosen else None


def results_options(command: F) -> F:
    """Add ``--results-connection-string``, ``--results-storage-url``, ``--results-container``.

    The command receives them, resolved together with the global ``--storage-url``
    and ``--container``, as one ``results: ResultsOptions`` argument.
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        kwargs["results"] = ResultsOptions.resolve(
            connection_string=_setting(
                ctx,
                "results_connection_string",
                kwargs.pop("results_connection_string"),
                "--results-connection-string",
                RESULTS_CONNECTION_STRING_ENV,
                STORAGE_CONNECTION_STRING_ENV,
            ),
            storage_url=_setting(
                ctx,
                "results_storage_url",
                kwargs.pop("results_storage_url"),
                "--results-storage-url",
                RESULTS_STORAGE_URL_ENV,
            ),
            container=_setting(
                ctx,
                "results_container",
                kwargs.pop("results_container"),
                "--results-container",
                RESULTS_CONTAINER_ENV,
            ),
            global_options=GlobalOptions.current(),
        )
        return command(*args, **kwargs)

    options = [
        click.option(
            "--results-connection-string",
            envvar=[RESULTS_CONNECTION_STRING_ENV, STORAGE_CONNECTION_STRING_ENV],
            show_envvar=True,
            metavar="TEXT",
            help="Blob storage connection string of the results store (Azurite, local use).",
        ),
        click.option(
            "--results-storage-url",
            envvar=RESULTS_STORAGE_URL_ENV,
            show_envvar=True,
            metavar="URL",
            help="Blob storage account URL, signing in with DefaultAzureCredential "
            "(the global --storage-url does the same).",
        ),
        click.option(
            "--results-container",
            envvar=RESULTS_CONTAINER_ENV,
            show_envvar=True,
            metavar="NAME",
            help="The results container (the global --container does the same).",
        ),
    ]
    decorated: Callable[..., Any] = wrapper
    for option in reversed(options):
        decorated = option(decorated)
    return decorated  # type: ignore[return-value]

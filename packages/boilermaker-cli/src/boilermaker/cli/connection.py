"""Where commands connect: Service Bus and results store options, checked at the edge.

Settings come from options or their environment variables. A missing or
malformed setting is a usage error naming the option and the variable; errors
from the services while a command runs become one-line error messages
(:func:`run`), never tracebacks.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import click
from click.core import ParameterSource

from boilermaker.broker import BrokerAuthenticationError, BrokerError
from boilermaker.config import ConfigError
from boilermaker.exceptions import BoilermakerError
from boilermaker.results_store import ResultsStore, ResultsStoreError

if TYPE_CHECKING:
    from boilermaker.service_bus import AzureServiceBus

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

CONNECTION_STRING_ENV = "SERVICE_BUS_CONNECTION_STRING"
NAMESPACE_URL_ENV = "SERVICE_BUS_NAMESPACE_URL"
QUEUE_ENV = "SERVICE_BUS_QUEUE_NAME"
RESULTS_CONNECTION_STRING_ENV = "BOILERMAKER_RESULTS_CONNECTION_STRING"
RESULTS_STORAGE_URL_ENV = "BOILERMAKER_RESULTS_STORAGE_URL"
RESULTS_CONTAINER_ENV = "BOILERMAKER_RESULTS_CONTAINER"

_SERVICE_BUS_PARAMS = ("connection_string", "namespace_url", "queue")
_RESULTS_PARAMS = ("results_connection_string", "results_storage_url", "results_container")


def _hint(option: str, env: str) -> str:
    return f"'{option}' / {env}"


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
                "no Service Bus to connect to: pass --connection-string (or set "
                f"{CONNECTION_STRING_ENV}), or --namespace-url (or set {NAMESPACE_URL_ENV}) "
                "to sign in with an Azure credential",
                ctx=click.get_current_context(silent=True),
            )
        if not self.queue:
            raise click.UsageError(
                f"no queue: pass --queue or set {QUEUE_ENV}",
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
    """Add ``--connection-string``, ``--namespace-url`` and ``--queue``.

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
            envvar=NAMESPACE_URL_ENV,
            show_envvar=True,
            metavar="URL",
            help="Namespace URL, signing in with DefaultAzureCredential "
            "(used when no connection string is given).",
        ),
        click.option(
            "--queue",
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
    """The results store settings a command was given (not yet checked)."""

    connection_string: str | None
    storage_url: str | None
    container: str | None

    @property
    def given(self) -> bool:
        """Whether any results setting was given."""
        return bool(self.connection_string or self.storage_url or self.container)

    def check(self) -> None:
        """Raise a usage error naming what is missing."""
        if not self.connection_string and not self.storage_url:
            raise click.UsageError(
                "this needs a results store: pass --results-connection-string (or set "
                f"{RESULTS_CONNECTION_STRING_ENV}), or --results-storage-url (or set "
                f"{RESULTS_STORAGE_URL_ENV}) to sign in with an Azure credential",
                ctx=click.get_current_context(silent=True),
            )
        if not self.container:
            raise click.UsageError(
                f"no results container: pass --results-container or set {RESULTS_CONTAINER_ENV}",
                ctx=click.get_current_context(silent=True),
            )

    def store(self) -> ResultsStore:
        """A new results store (``boilermaker.storage.BlobClientStorage``)."""
        self.check()
        assert self.container is not None
        try:
            from boilermaker.storage import BlobClientStorage
        except ImportError as exc:
            raise click.ClickException(
                f"the blob results store is not installed ({exc}): pip install boilermaker-results"
            ) from None
        try:
            if self.connection_string:
                return BlobClientStorage.from_connection_string(
                    self.connection_string, self.container
                )
            assert self.storage_url is not None
            return BlobClientStorage(self.storage_url, self.container)
        except ValueError as exc:
            hint = (
                _hint("--results-connection-string", RESULTS_CONNECTION_STRING_ENV)
                if self.connection_string
                else _hint("--results-storage-url", RESULTS_STORAGE_URL_ENV)
            )
            raise click.BadParameter(
                str(exc), ctx=click.get_current_context(silent=True), param_hint=hint
            ) from None


def results_options(command: F) -> F:
    """Add ``--results-connection-string``, ``--results-storage-url``, ``--results-container``.

    The command receives them as one ``results: ResultsOptions`` argument.
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        kwargs["results"] = ResultsOptions(
            connection_string=kwargs.pop("results_connection_string"),
            storage_url=kwargs.pop("results_storage_url"),
            container=kwargs.pop("results_container"),
        )
        return command(*args, **kwargs)

    options = [
        click.option(
            "--results-connection-string",
            envvar=RESULTS_CONNECTION_STRING_ENV,
            show_envvar=True,
            metavar="TEXT",
            help="Blob storage connection string of the results store (also Azurite).",
        ),
        click.option(
            "--results-storage-url",
            envvar=RESULTS_STORAGE_URL_ENV,
            show_envvar=True,
            metavar="URL",
            help="Blob storage account URL, signing in with DefaultAzureCredential.",
        ),
        click.option(
            "--results-container",
            envvar=RESULTS_CONTAINER_ENV,
            show_envvar=True,
            metavar="NAME",
            help="The results container.",
        ),
    ]
    decorated: Callable[..., Any] = wrapper
    for option in reversed(options):
        decorated = option(decorated)
    return decorated  # type: ignore[return-value]


# -- running ----------------------------------------------------------------------------------


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine, turning service errors into one-line CLI errors."""
    try:
        return asyncio.run(coro)
    except click.ClickException:
        raise
    except BrokerAuthenticationError as exc:
        raise click.ClickException(f"Service Bus refused the credentials: {exc}") from None
    except BrokerError as exc:
        raise click.ClickException(f"Service Bus: {exc}") from None
    except ResultsStoreError as exc:
        raise click.ClickException(f"results store: {exc}") from None
    except BoilermakerError as exc:
        raise click.ClickException(str(exc)) from None

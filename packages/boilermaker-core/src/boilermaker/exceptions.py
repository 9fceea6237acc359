"""Errors raised by Boilermaker, each naming the problem at the edge where it enters."""

from __future__ import annotations


class BoilermakerError(Exception):
    """Base class of every error Boilermaker raises on purpose.

    Its text never carries a secret: keys, signatures and URL query strings
    are masked (:func:`boilermaker.redact.redact`) when it is made.
    """

    def __init__(self, *args: object) -> None:
        from boilermaker.redact import redact

        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


class BoilermakerAppException(BoilermakerError):
    """A misuse of the `Boilermaker` application (registration, publishing).

    ``errors`` (as in 1.x, ``BoilermakerAppException(message, errors)``) lists
    underlying errors, when there are any.
    """

    def __init__(self, message: str = "", errors: list[object] | None = None) -> None:
        super().__init__(message if not errors else f"{message}: {errors}")
        self.errors: list[object] = list(errors or [])


class RegistrationError(BoilermakerAppException, TypeError, ValueError):
    """A function could not be registered (not async, already registered, unknown option).

    Both a TypeError and, as 1.x raised, a ValueError.
    """


class UnknownTaskError(BoilermakerAppException, LookupError, ValueError):
    """A task names a function that is not registered with this application."""


class ArgumentNotSerializable(BoilermakerAppException, TypeError):
    """A task argument cannot be encoded as JSON; nothing was sent."""

    def __init__(self, function_name: str, argument: str, value: object, reason: str) -> None:
        self.function_name = function_name
        self.argument = argument
        self.value_type = type(value).__name__
        super().__init__(
            f"argument {argument} of task {function_name!r} is not JSON-serializable "
            f"({self.value_type}: {reason}); task arguments must be JSON values"
        )


class MessageTooLarge(BoilermakerAppException, ValueError):
    """An encoded task is larger than the broker accepts; nothing was sent."""

    def __init__(self, size: int, limit: int, what: str = "task message") -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"{what} is {size} bytes, over the broker's maximum message size of {limit} bytes"
        )


class InvalidTaskFormat(BoilermakerError, ValueError):
    """A message body is not a Boilermaker task envelope this version can read.

    Workers dead-letter such messages with reason ``InvalidTaskFormat``.
    """


class GraphBuildError(BoilermakerError, ValueError):
    """A task graph is malformed (cycle, duplicate id, unknown dependency, bad wiring)."""


class PublishError(BoilermakerAppException):
    """Publishing to the broker failed after the allowed attempts."""


class ResultNotReady(BoilermakerError, TimeoutError):
    """A task's result did not arrive within the requested time."""


class ResultsStoreRequired(BoilermakerAppException):
    """The operation needs a results store (graphs, stored results) and none is configured."""

"""Registered task functions and the options they run with."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from boilermaker.exceptions import RegistrationError, UnknownTaskError
from boilermaker.retries import RetryPolicy
from boilermaker.task.task import FunctionOptions, remember_registration

logger = logging.getLogger("boilermaker.app")

TaskFunction = Callable[..., Awaitable[Any]]

#: Options ``register_async`` and ``task()`` accept.
REGISTRATION_OPTIONS = frozenset({"policy", "should_dead_letter", "acks_late", "name", "timeout"})


@dataclass(frozen=True, slots=True)
class RegisteredFunction:
    """A task function with the defaults its tasks are created with."""

    fn: TaskFunction
    name: str
    policy: RetryPolicy
    should_dead_letter: bool
    acks_late: bool
    signature: inspect.Signature | None
    timeout: float | None = None
    #: How many positional arguments (state included) bind, when that alone decides:
    #: (fewest, most); None when keyword-only parameters need a full check.
    positional: tuple[int, float] | None = field(default=None, init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "positional", _positional_range(self.signature))

    def check_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Raise TypeError if ``fn(state, *args, **kwargs)`` would not bind."""
        if self.signature is None:
            return
        if not kwargs and self.positional is not None:
            fewest, most = self.positional
            if fewest <= len(args) + 1 <= most:
                return  # binds: the usual call, checked without building a binding
        try:
            self.signature.bind(None, *args, **kwargs)
        except TypeError as exc:
            raise TypeError(
                f"task {self.name!r} cannot be called with these arguments: {exc}"
            ) from None


def _positional_range(signature: inspect.Signature | None) -> tuple[int, float] | None:
    """(fewest, most) positional arguments ``signature`` binds, or None if a call
    without keywords could still fail on a required keyword-only parameter."""
    if signature is None:
        return None
    fewest, most = 0, 0.0
    for parameter in signature.parameters.values():
        kind = parameter.kind
        if kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            most += 1
            if parameter.default is parameter.empty:
                fewest = int(most)
        elif kind is parameter.VAR_POSITIONAL:
            most = float("inf")
        elif kind is parameter.KEYWORD_ONLY and parameter.default is parameter.empty:
            return None
    return fewest, most


class Registry:
    """Functions by registered name. A name maps to exactly one function."""

    def __init__(self) -> None:
        self._by_name: dict[str, RegisteredFunction] = {}
        self._by_fn: dict[object, RegisteredFunction] = {}

    def register(self, fn: TaskFunction, **options: Any) -> RegisteredFunction:
        """Register ``fn``; unknown options and non-async functions are errors."""
        unknown = set(options) - REGISTRATION_OPTIONS
        if unknown:
            raise RegistrationError(
                f"unknown registration option(s) {sorted(unknown)} for "
                f"{getattr(fn, '__name__', fn)!r}; accepted: {sorted(REGISTRATION_OPTIONS)}"
            )
        if not callable(fn):
            raise RegistrationError(f"{fn!r} is not callable")
        target = inspect.unwrap(fn)
        if not inspect.iscoroutinefunction(target) and not inspect.iscoroutinefunction(fn):
            raise RegistrationError(
                f"{getattr(fn, '__name__', fn)!r} is not an async function; tasks must be "
                "defined with 'async def'"
            )
        name = options.get("name") or getattr(fn, "__name__", None)
        if not isinstance(name, str) or not name:
            raise RegistrationError(f"cannot tell the name of {fn!r}; pass name='...'")
        policy = options.get("policy")
        if policy is None:
            policy = RetryPolicy.default()
        if not isinstance(policy, RetryPolicy):
            raise RegistrationError(f"policy for {name!r} must be a RetryPolicy, not {policy!r}")
        timeout = options.get("timeout")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
        ):
            raise RegistrationError(
                f"timeout for {name!r} must be a positive number of seconds (or None), "
                f"not {timeout!r}"
            )
        for flag in ("should_dead_letter", "acks_late"):
            if flag in options and not isinstance(options[flag], bool):
                raise RegistrationError(f"{flag} for {name!r} must be True or False")
        try:
            signature: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):
            signature = None
        if signature is not None:
            positional = [
                p
                for p in signature.parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
            ]
            if not positional:
                raise RegistrationError(
                    f"{name!r} must take the application state as its first parameter"
                )
        existing = self._by_name.get(name)
        if existing is not None:
            # Even the same function: registering again is how a policy would
            # silently change.
            what = "this function" if existing.fn is fn else "a different function"
            raise RegistrationError(
                f"{what} is already registered as {name!r} "
                f"({existing.fn.__module__}.{existing.fn.__qualname__}); a name is "
                "registered once (pass name='...' for another)"
            )
        entry = RegisteredFunction(
            fn=fn,
            name=name,
            policy=policy,
            should_dead_letter=options.get("should_dead_letter", True),
            acks_late=options.get("acks_late", True),
            signature=signature,
            timeout=float(timeout) if timeout is not None else None,
        )
        self._by_name[name] = entry
        self._by_fn[fn] = entry
        remember_registration(
            fn,
            FunctionOptions(
                policy=entry.policy,
                should_dead_letter=entry.should_dead_letter,
                acks_late=entry.acks_late,
            ),
        )
        logger.info("Registered background function fn=%s", name)
        return entry

    def get(self, name: str) -> RegisteredFunction | None:
        """The registration under ``name``, or None."""
        return self._by_name.get(name)

    def lookup(self, fn: TaskFunction | str) -> RegisteredFunction:
        """The registration of ``fn`` (a function or its name); UnknownTaskError if absent."""
        entry = self._by_name.get(fn) if isinstance(fn, str) else self._by_fn.get(fn)
        if entry is None:
            shown = fn if isinstance(fn, str) else getattr(fn, "__name__", repr(fn))
            raise UnknownTaskError(
                f"{shown!r} is not registered; call app.register_async({shown}) first"
            )
        return entry

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __len__(self) -> int:
        return len(self._by_name)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._by_name)

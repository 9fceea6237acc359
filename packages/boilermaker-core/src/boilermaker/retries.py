"""Retry policies: how many times a task may run and how long to wait between runs.

A retry is never an in-memory timer: the worker publishes a new scheduled
message whose delay comes from :meth:`RetryPolicy.get_delay_interval`, so a
worker may die between attempts without losing the task.
"""

from __future__ import annotations

import enum
import random
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MAX_TRIES_LIMIT = 100

#: The published library's names for the defaults and bounds.
DEFAULT_MAX_TRIES = 5
MAX_REASONABLE_RETRIES = MAX_TRIES_LIMIT
MAX_BACKOFF_SECONDS = 3600

#: The longest delay a policy (or a publish) may ask for: 30 days, in seconds. Retries
#: are Service Bus scheduled messages; a bound keeps every schedule computable (an
#: unbounded delay overflows the clock) and well inside a queue's message lifetime.
MAX_DELAY_SECONDS = 30 * 24 * 3600


class RetryMode(enum.IntEnum):
    """How the delay grows between attempts."""

    Fixed = 0
    Exponential = 1
    Linear = 2


class RetryPolicy(BaseModel):
    """How many times a task may run and how long to wait between runs.

    Delays are in seconds. For retry number ``n`` (0 for the first retry):

    - ``Fixed``: ``min(delay, delay_max)``
    - ``Linear``: ``min(delay * (n + 1), delay_max)``
    - ``Exponential``: ``e = min(2**n * delay, delay_max)``, then a jittered
      ``e // 2 + randint(0, e // 2)``, so the wait is in ``[e/2, e]``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_tries: int = Field(default=5, ge=0, le=MAX_TRIES_LIMIT)
    delay: int = Field(default=0, ge=0, le=MAX_DELAY_SECONDS)
    delay_max: int = Field(default=3600, ge=0, le=MAX_DELAY_SECONDS)
    retry_mode: RetryMode = RetryMode.Fixed

    @classmethod
    def default(cls) -> RetryPolicy:
        """Five tries, two minutes apart."""
        return cls(max_tries=5, delay=120, delay_max=120, retry_mode=RetryMode.Fixed)

    @classmethod
    def no_retry(cls) -> RetryPolicy:
        """A single try: any failure is final."""
        return cls(max_tries=1, delay=0, delay_max=0, retry_mode=RetryMode.Fixed)

    def get_delay_interval(self, retry_number: int) -> int:
        """Seconds to wait before retry number ``retry_number`` (0-based)."""
        n = max(0, retry_number)
        if self.retry_mode == RetryMode.Fixed:
            return min(self.delay, self.delay_max)
        if self.retry_mode == RetryMode.Linear:
            return min(self.delay * (n + 1), self.delay_max)
        # Cap the exponent first so huge attempt numbers cannot overflow.
        exp = min(n, 62)
        ceiling = min((2**exp) * self.delay, self.delay_max)
        half = ceiling // 2
        return half + random.randint(0, half)

    def can_retry(self, attempts_made: int) -> bool:
        """Whether a task that has run ``attempts_made`` times may run again."""
        return attempts_made < self.max_tries

    def __eq__(self, other: object) -> bool:
        """Policies are equal when their settings are (``NoRetry()`` included)."""
        if not isinstance(other, RetryPolicy):
            return NotImplemented
        return (self.max_tries, self.delay, self.delay_max, self.retry_mode) == (
            other.max_tries,
            other.delay,
            other.delay_max,
            other.retry_mode,
        )

    def __hash__(self) -> int:
        return hash((self.max_tries, self.delay, self.delay_max, int(self.retry_mode)))


class NoRetry(RetryPolicy):
    """A policy of a single try: any failure is final (equal to ``RetryPolicy.no_retry()``)."""

    def __init__(self) -> None:
        super().__init__(max_tries=1, delay=0, delay_max=0, retry_mode=RetryMode.Fixed)


class RetryAttempts(BaseModel):
    """How many times a task has been started, and when it last was."""

    model_config = ConfigDict(extra="forbid")

    attempts: int = Field(default=0, ge=0)
    last_retry: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @classmethod
    def default(cls) -> RetryAttempts:
        """No attempts yet."""
        return cls()

    def inc(self, when: datetime | None = None) -> RetryAttempts:
        """Count one more start at ``when`` (now by default); mutates and returns self."""
        self.attempts += 1
        self.last_retry = when if when is not None else datetime.now(UTC)
        return self


class RetryException(Exception):
    """Raise from a task to ask for another attempt.

    ``policy`` (optional) replaces the task's own policy for this and later
    attempts, e.g. to back off harder on a rate limit.
    """

    def __init__(self, msg: str = "", policy: RetryPolicy | None = None) -> None:
        super().__init__(msg)
        self.msg = msg
        self.policy = policy


class RetryExceptionDefault(RetryException):
    """Retry with :meth:`RetryPolicy.default` (5 tries, 120 s apart)."""

    def __init__(self, msg: str = "") -> None:
        super().__init__(msg, policy=RetryPolicy.default())


class RetryExceptionDefaultExponential(RetryException):
    """Retry with exponential backoff: 5 tries, from 30 s up to 10 minutes, jittered.

    Keyword arguments (any :class:`RetryPolicy` field) override those defaults.
    """

    def __init__(self, msg: str = "", **overrides: Any) -> None:
        settings: dict[str, Any] = {
            "max_tries": 5,
            "delay": 30,
            "delay_max": 600,
            "retry_mode": RetryMode.Exponential,
        }
        settings.update(overrides)
        super().__init__(msg, policy=RetryPolicy(**settings))


class RetryExceptionDefaultLinear(RetryException):
    """Retry with linear backoff: 5 tries, 30 s more each time, up to 10 minutes.

    Keyword arguments (any :class:`RetryPolicy` field) override those defaults.
    """

    def __init__(self, msg: str = "", **overrides: Any) -> None:
        settings: dict[str, Any] = {
            "max_tries": 5,
            "delay": 30,
            "delay_max": 600,
            "retry_mode": RetryMode.Linear,
        }
        settings.update(overrides)
        super().__init__(msg, policy=RetryPolicy(**settings))


__all__ = [
    "NoRetry",
    "RetryAttempts",
    "RetryException",
    "RetryExceptionDefault",
    "RetryExceptionDefaultExponential",
    "RetryExceptionDefaultLinear",
    "RetryMode",
    "RetryPolicy",
]

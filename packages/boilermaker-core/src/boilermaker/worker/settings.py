"""Worker settings and counters."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from boilermaker.config import Config


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """How a worker runs.

    - ``concurrency``: tasks in flight at once.
    - ``prefetch``: messages the receiver buffers ahead (default ``2 * concurrency``).
    - ``receive_wait``: longest single wait for new messages, in seconds.
    - ``max_lock_renewal``: how long a running task's lock is kept alive; a
      warning is logged at ``lock_renewal_warning`` of it.
    - ``shutdown_grace``: seconds in-flight tasks get to finish on shutdown
      before they are cancelled and their messages abandoned.
    - ``task_timeout``: the time limit of tasks whose registration sets none
      (None: no limit, but a task still running at ``max_lock_renewal`` is
      cancelled before its lock can lapse, so it never runs twice at once).
    - ``time_limit_margin``: how long past a task's time limit its lock is
      still renewed, so the cancelled task's message is settled under its lock.
    - ``bookkeeping_patience``: how long the worker keeps retrying its own
      bookkeeping (claims, results, follow-ups) while the store or broker is
      unreachable, before it gives the message back.
    - ``precise_timers``: while the worker runs, the event loop wakes for its
      timers to the microsecond rather than rounding each wait up to the next
      millisecond (stock Linux epoll loops only; see
      :mod:`boilermaker.worker.timers`).
    """

    concurrency: int = 16
    prefetch: int | None = None
    receive_wait: float = 5.0
    max_lock_renewal: float = 3600.0
    lock_renewal_warning: float = 0.8
    shutdown_grace: float = 30.0
    install_signal_handlers: bool = True
    description_limit: int = 1024
    task_timeout: float | None = None
    time_limit_margin: float = 5.0
    bookkeeping_patience: float = 60.0
    precise_timers: bool = True

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.prefetch is not None and self.prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {self.prefetch}")
        if self.receive_wait <= 0:
            raise ValueError(f"receive_wait must be positive, got {self.receive_wait}")
        if self.max_lock_renewal <= 0:
            raise ValueError(f"max_lock_renewal must be positive, got {self.max_lock_renewal}")
        if not 0 < self.lock_renewal_warning <= 1:
            raise ValueError("lock_renewal_warning is a fraction in (0, 1]")
        if self.shutdown_grace < 0:
            raise ValueError(f"shutdown_grace must be >= 0, got {self.shutdown_grace}")
        if self.bookkeeping_patience < 0:
            raise ValueError(f"bookkeeping_patience must be >= 0, got {self.bookkeeping_patience}")
        if self.task_timeout is not None and self.task_timeout <= 0:
            raise ValueError(f"task_timeout must be positive or None, got {self.task_timeout}")

    @property
    def effective_prefetch(self) -> int:
        """The prefetch to ask the broker for."""
        return self.prefetch if self.prefetch is not None else 2 * self.concurrency

    @classmethod
    def from_config(cls, config: Config | None = None) -> WorkerSettings:
        """Settings from a :class:`Config` (environment variables when None)."""
        config = config if config is not None else Config()
        return cls(
            concurrency=config.concurrency,
            prefetch=config.prefetch,
            max_lock_renewal=config.max_lock_renewal_seconds,
            shutdown_grace=config.shutdown_grace_seconds,
            task_timeout=config.task_timeout_seconds,
        )

    def replace(self, **changes: Any) -> WorkerSettings:
        """A copy with some settings changed; unknown names are errors."""
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise TypeError(f"unknown worker setting(s) {sorted(unknown)}; known: {sorted(known)}")
        return replace(self, **changes)


@dataclass(slots=True)
class WorkerStats:
    """What a worker has done since it started."""

    received: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    retries_exhausted: int = 0
    dead_lettered: int = 0
    abandoned: int = 0
    duplicates_skipped: int = 0
    control_messages: int = 0
    lock_renewals: int = 0
    locks_lost: int = 0
    settlement_errors: int = 0
    max_in_flight: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """A plain dict, for logs and JSON."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

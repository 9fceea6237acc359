"""Pausing the listener when ``accept()`` fails, and saying so without flooding the log.

When the process runs out of file descriptors (``EMFILE``/``ENFILE``) or
kernel memory (``ENOBUFS``/``ENOMEM``), the pending connection stays in the
kernel's backlog and the listening socket stays readable: a loop that keeps
selecting it spins at full CPU and logs one line per attempt. Instead the
event loop stops selecting the listener for a pause that doubles on every
failure in a row (10 ms up to 1 s by default) and resets after an accept
succeeds; the warning is written at most once per reporting interval, with
the number of failures it stands for.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable
from typing import Any

__all__ = ["PER_CONNECTION_ERRORS", "AcceptBackoff", "ThrottledLog"]

logger = logging.getLogger("boilermaker.emulator")

#: ``accept()`` errors that concern one connection only (it vanished before it
#: was accepted, or Linux passes on its network error): skip it, keep accepting.
PER_CONNECTION_ERRORS = frozenset(
    code
    for code in (
        getattr(errno, name, None)
        for name in (
            "ECONNABORTED",
            "EPROTO",
            "ENETDOWN",
            "ENOPROTOOPT",
            "EHOSTDOWN",
            "ENONET",
            "EHOSTUNREACH",
            "EOPNOTSUPP",
            "ENETUNREACH",
        )
    )
    if code is not None
)


class ThrottledLog:
    """Writes a warning at most once per ``interval`` seconds.

    Lines asked for within the interval are counted, not written; the next
    line that is written says how many it stands for, so a burst of
    thousands of identical failures costs one line per interval.
    """

    def __init__(
        self,
        log: logging.Logger,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.interval = interval
        self.clock = clock
        self.suppressed = 0
        self._last: float | None = None

    def warning(self, message: str, *args: Any) -> bool:
        """Log ``message % args`` unless a line was written within the interval.

        Returns True when the line was written.
        """
        now = self.clock()
        if self._last is not None and now - self._last < self.interval:
            self.suppressed += 1
            return False
        if self.suppressed:
            message += " (%d more like this in the last %.1f s)"
            args = (*args, self.suppressed, now - (self._last or now))
        self.log.warning(message, *args)
        self._last = now
        self.suppressed = 0
        return True


class AcceptBackoff:
    """How long to stop accepting after ``accept()`` fails.

    Args:
        first: Pause after the first failure, in seconds.
        longest: Upper bound of the doubling pause, in seconds.
        report_every: Seconds between two warnings about failed accepts.
    """

    def __init__(
        self,
        first: float = 0.01,
        longest: float = 1.0,
        report_every: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < first <= longest:
            raise ValueError("accept back-off needs 0 < first <= longest")
        self.first = first
        self.longest = longest
        #: The current pause; 0 while accepts succeed.
        self.delay = 0.0
        #: Failed accepts since the last one that succeeded.
        self.failures = 0
        self._report = ThrottledLog(logger, report_every, clock)

    def failed(self, exc: OSError) -> float:
        """Record a failed accept; return how long to leave the listener alone."""
        self.delay = self.first if self.delay == 0 else min(self.longest, self.delay * 2)
        self.failures += 1
        self._report.warning("accept failed: %s; not accepting for %.3f s", exc, self.delay)
        return self.delay

    def succeeded(self) -> None:
        """Record an accept that worked: the next failure starts the pauses over."""
        if self.failures:
            logger.info("accepting connections again after %d failed accept(s)", self.failures)
            self._report.suppressed = 0
        self.failures = 0
        self.delay = 0.0

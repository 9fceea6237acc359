"""Timers that end on time while a worker runs.

asyncio's Linux event loop waits for I/O with ``epoll``, whose timeout is a whole
number of milliseconds: when the next timer is due in 0.3 ms, the loop sleeps
1 ms. Every ``asyncio.sleep``, ``asyncio.timeout`` and ``call_later`` in the
process therefore ends 0.5 ms late on average, and up to 1 ms. For a worker
running 10 ms tasks that is 5 to 10% of its throughput.

:func:`precise_timers` makes the running loop wait with the microsecond timeout
of ``select()`` on the epoll descriptor itself, then collect the ready events
from epoll without waiting. I/O still wakes the loop at once (the epoll
descriptor is readable as soon as any descriptor it watches is), and the loop's
other behaviour is unchanged: one extra system call per blocking wait.

It applies only to a stock :class:`selectors.EpollSelector`, the one
``asyncio.run`` uses on Linux. Other loops are left as they are: kqueue (macOS)
already waits to the nanosecond, uvloop and Windows loops have no selector.
The change is undone when the last worker using the loop stops.
"""

from __future__ import annotations

import contextlib
import select
import selectors
import weakref
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["precise_timers"]

_Select = Callable[[float | None], list[tuple[selectors.SelectorKey, int]]]

#: Selectors currently waiting precisely, with how many workers asked for it.
_users: weakref.WeakKeyDictionary[selectors.BaseSelector, int] = weakref.WeakKeyDictionary()


def _precise(selector: selectors.EpollSelector) -> _Select | None:
    """A ``select`` for ``selector`` that waits to the microsecond, or None when
    its descriptor cannot be waited on with ``select()`` (beyond FD_SETSIZE)."""
    fd = selector.fileno()
    wait = select.select
    try:
        wait((fd,), (), (), 0)
    except (ValueError, OSError):
        return None
    collect = selector.select
    readable = (fd,)

    def select_precisely(timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and timeout > 0:
            wait(readable, (), (), timeout)
            return collect(0)
        return collect(timeout)

    return select_precisely


@contextlib.contextmanager
def precise_timers(loop: Any, enabled: bool = True) -> Iterator[bool]:
    """While the block runs, ``loop`` wakes for its timers to the microsecond.

    Yields whether the loop was changed (False when ``enabled`` is false or the
    loop is not a stock epoll selector loop). Nested and concurrent uses on one
    loop are counted: the loop is restored when the last one ends.
    """
    selector = getattr(loop, "_selector", None) if enabled else None
    if selector is None or type(selector) is not selectors.EpollSelector:
        yield False
        return
    if selector in _users:
        _users[selector] += 1
    else:
        replacement = _precise(selector)
        if replacement is None:
            yield False
            return
        selector.select = replacement  # type: ignore[method-assign,assignment]
        _users[selector] = 1
    try:
        yield True
    finally:
        _users[selector] -= 1
        if not _users[selector]:
            del _users[selector]
            with contextlib.suppress(AttributeError):
                del selector.select

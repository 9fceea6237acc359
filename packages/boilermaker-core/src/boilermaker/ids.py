"""Time-ordered identifiers (UUID version 7) for tasks and graphs.

UUID7 ids sort by creation time, which keeps blob listings and logs in the
order work was created, and they carry enough randomness to be unique
across processes without coordination.
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from typing import NewType

TaskId = NewType("TaskId", str)
GraphId = NewType("GraphId", str)

#: The id of a task that was never given one (the published library's registration
#: prototypes); publishing a task with it is refused.
NullTaskId = TaskId("00000000-0000-0000-0000-000000000000")

_lock = threading.Lock()
_last_ms = 0
_counter = 0


#: Task and graph ids become blob names (``task-results/{graph_id}/{task_id}.json``),
#: so they are limited to one safe alphabet: 1-128 characters of ASCII letters,
#: digits, ``-``, ``_`` and ``.``, starting with a letter or digit. No ``/``, no
#: ``..``: an id can never name a blob outside its own folder, or another container.
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
ID_RULE = "1-128 characters of letters, digits, '-', '_' and '.', starting with a letter or digit"


class InvalidId(ValueError):
    """An id that could name a blob outside its folder (or is empty, or too long)."""


def check_id(value: object, what: str = "id") -> str:
    """``value`` if it is a valid task or graph id, else :class:`InvalidId` naming ``what``."""
    if not isinstance(value, str):
        raise InvalidId(f"{what} must be a string, not {type(value).__name__}")
    if not ID_PATTERN.fullmatch(value) or ".." in value:
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise InvalidId(f"{what} {shown!r} is not a valid id ({ID_RULE})")
    return value


def uuid7() -> uuid.UUID:
    """Return a new RFC 9562 version-7 UUID.

    Within one millisecond a 12-bit counter (seeded randomly) keeps ids from
    the same process strictly increasing.
    """
    global _last_ms, _counter
    random = os.urandom(10)  # one system call: 2 bytes to seed the counter, 8 for rand_b
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms > _last_ms:
            _last_ms = ms
            _counter = int.from_bytes(random[8:], "big") & 0x7FF
        else:
            _counter += 1
            if _counter > 0xFFF:
                _last_ms += 1
                _counter = 0
            ms = _last_ms
    rand_b = int.from_bytes(random[:8], "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= (_counter & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand_b
    return uuid.UUID(int=value)


def new_task_id() -> TaskId:
    """A fresh task id (UUID7 as a string)."""
    return TaskId(str(uuid7()))


def new_graph_id() -> GraphId:
    """A fresh graph id (UUID7 as a string)."""
    return GraphId(str(uuid7()))

"""Time-ordered identifiers (UUID version 7) for tasks and graphs.

UUID7 ids sort by creation time, which keeps blob listings and logs in the
order work was created, and they carry enough randomness to be unique
across processes without coordination.
"""

from __future__ import annotations

import os
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


def uuid7() -> uuid.UUID:
    """Return a new RFC 9562 version-7 UUID.

    Within one millisecond a 12-bit counter (seeded randomly) keeps ids from
    the same process strictly increasing.
    """
    global _last_ms, _counter
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms > _last_ms:
            _last_ms = ms
            _counter = int.from_bytes(os.urandom(2), "big") & 0x7FF
        else:
            _counter += 1
            if _counter > 0xFFF:
                _last_ms += 1
                _counter = 0
            ms = _last_ms
    rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
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

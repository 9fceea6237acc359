"""Describe what a task's retry numbering, delays and shift operators do, as one JSON line.

    python task_semantics.py

Runs unchanged under either library (1.4.1's interpreter or ours), so the
two outputs compare key by key: the retry message id and the next delay after
each run, for every retry mode (exponential as 20 draws from a seeded
random), and which task ``>>`` / ``<<`` return and which callbacks they set.

Output: ``{"library": VERSION, "retries": {...}, "operators": {...}}``.
"""

from __future__ import annotations

import importlib.metadata
import json
import random

from boilermaker.retries import RetryMode, RetryPolicy
from boilermaker.task import Task


async def a(state): ...
async def b(state): ...
async def c(state): ...


def name(task):
    """The function name of a task, or None."""
    return None if task is None else task.function_name


def retries():
    """Retry id suffix and next delay after runs 0..4, per mode."""
    out = {}
    for mode in (RetryMode.Fixed, RetryMode.Linear, RetryMode.Exponential):
        task = Task.si(a, policy=RetryPolicy(max_tries=5, delay=30, delay_max=600, retry_mode=mode))
        rows = []
        for _ in range(5):
            random.seed(7)  # the same draws under both: exponential jitter compares exactly
            delays = [task.get_next_delay() for _ in range(20)]
            rows.append(
                {
                    "runs": task.attempts.attempts,
                    "retry_id": task.retry_task_id.split(":", 1)[1],
                    "delay": delays if mode == RetryMode.Exponential else delays[0],
                    "can_retry": task.can_retry,
                }
            )
            task.record_attempt()
        out[str(mode.name if hasattr(mode, "name") else mode)] = rows
    return out


def operators():
    """What the shift operators return and link."""
    x, y = Task.si(a), Task.si(b)
    right = x >> y
    p, q = Task.si(a), Task.si(b)
    left = p << q
    s, t, u = Task.si(a), Task.si(b), Task.si(c)
    s << t << u
    m, n, o = Task.si(a), Task.si(b), Task.si(c)
    m >> n >> o
    return {
        "a >> b returns": name(right),
        "a >> b: a.on_success": name(x.on_success),
        "a << b returns": name(left),
        "a << b: b.on_success": name(q.on_success),
        "a << b: a.on_success": name(p.on_success),
        "a << b << c": {"a": name(s.on_success), "b": name(t.on_success), "c": name(u.on_success)},
        "a >> b >> c": {"a": name(m.on_success), "b": name(n.on_success), "c": name(o.on_success)},
    }


print(
    json.dumps(
        {
            "library": importlib.metadata.version("boilermaker-servicebus"),
            "retries": retries(),
            "operators": operators(),
        }
    )
)

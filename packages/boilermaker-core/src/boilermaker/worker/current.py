"""The message whose task is running in the current asyncio task.

The worker sets it around each run, so code inside a task (``await
app.renew_message_lock()``) reaches its own message whatever the
concurrency: each running task has its own context.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

from boilermaker.broker import ReceivedMessage, Receiver


@dataclass(frozen=True, slots=True)
class CurrentMessage:
    """A running task's message and the receiver that holds its lock."""

    message: ReceivedMessage
    receiver: Receiver


current_message: ContextVar[CurrentMessage | None] = ContextVar(
    "boilermaker_current_message", default=None
)

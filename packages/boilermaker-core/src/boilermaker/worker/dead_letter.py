"""The dead-letter taxonomy written into the broker's reason and description fields.

Tools filter on the reason; the description says what happened in a bounded
number of characters.
"""

from __future__ import annotations

#: The body could not be read as a task envelope.
INVALID_TASK_FORMAT = "InvalidTaskFormat"
#: The task names a function this worker does not have.
EXPECTATION_FAILED = "ExpectationFailed"
#: The task raised (or returned TaskFailureResult) and does not retry.
TASK_FAILED = "TaskFailed"
#: The task asked for a retry but had used all its tries.
PROCESSING_ERROR = "ProcessingError"
#: The broker gave up after too many deliveries (set by the broker, not the worker).
MAX_DELIVERY_COUNT_EXCEEDED = "MaxDeliveryCountExceeded"

REASONS = (INVALID_TASK_FORMAT, EXPECTATION_FAILED, TASK_FAILED, PROCESSING_ERROR)


def bounded(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, marking the cut."""
    if len(text) <= limit:
        return text
    marker = "... [truncated]"
    return text[: max(0, limit - len(marker))] + marker


def describe_exception(exc: BaseException, limit: int) -> str:
    """``Type: message`` of an exception, bounded."""
    return bounded(f"{type(exc).__name__}: {exc}", limit)

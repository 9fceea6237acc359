"""The worker engine: concurrent, lock-aware task execution over the Broker protocol."""

from boilermaker.worker.engine import Worker
from boilermaker.worker.middleware import MessageContext, Middleware
from boilermaker.worker.settings import WorkerSettings, WorkerStats
from boilermaker.worker.verdict import (
    EXPECTATION_FAILED,
    FOLLOW_UP_FAILED,
    INVALID_TASK_FORMAT,
    MAX_DELIVERY_COUNT_EXCEEDED,
    PROCESSING_ERROR,
    TASK_FAILED,
    Action,
    Kind,
    Outcome,
    Verdict,
    decide,
)

__all__ = [
    "EXPECTATION_FAILED",
    "FOLLOW_UP_FAILED",
    "INVALID_TASK_FORMAT",
    "MAX_DELIVERY_COUNT_EXCEEDED",
    "PROCESSING_ERROR",
    "TASK_FAILED",
    "Action",
    "Kind",
    "MessageContext",
    "Middleware",
    "Outcome",
    "Verdict",
    "Worker",
    "WorkerSettings",
    "WorkerStats",
    "decide",
]
